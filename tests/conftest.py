"""Shared fixtures: real memories on disk (SQLite + FAISS + the MiniLM embedder).

With ``MEMSDK_TEST_POSTGRES_URL`` naming a PostgreSQL server the tests may create databases on
(``.ci/run`` starts one with ``scripts/postgres.sh``), the store and API suites in
``BOTH_DATABASES`` run twice: on SQLite, and on PostgreSQL, where every memory a test opens
without a ``database_url`` gets a fresh database of its own.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU (small shapes), so CI checks
# their logic. The variable is read when a kernel is decorated, so it is set before any test
# module imports memsdk (and with it memsdk.kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from memsdk import HybridMemory, Scope
from memsdk.stores.notepad import Notepad

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Figures of the reliability tests (kills survived, operations run, examples tried), written
# at the end of the run; RELIABILITY.md is made from them by scripts/reliability_table.py.
FIGURES = REPO / "benchmarks" / "out" / "reliability.json"


POSTGRES_ADMIN_URL = os.environ.get("MEMSDK_TEST_POSTGRES_URL")
BOTH_DATABASES = {
    "test_memory_api",
    "test_needles",
    "test_weight_memory",
    "test_sessions",
    "test_router",
    "test_isolation",
    "test_hostile_queries",
    "test_hostile_input",
    "test_limits",
    "test_concurrency",
    "test_text_index",
    "test_scope_vectors",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database" in metafunc.fixturenames and metafunc.module.__name__ in BOTH_DATABASES:
        params = ["sqlite", "postgres"] if POSTGRES_ADMIN_URL else ["sqlite"]
        metafunc.parametrize("database", params, indirect=True, scope="module")


class PostgresDatabases:
    """Fresh PostgreSQL databases on the test server, dropped when the tests are done."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.base = make_url(admin_url)
        self.names: list[str] = []

    def create(self) -> str:
        from sqlalchemy import text

        name = f"memsdk_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.base.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            for name in self.names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """Make fresh databases with ``postgres.create()``; skips without a server."""
    if not POSTGRES_ADMIN_URL:
        pytest.skip("set MEMSDK_TEST_POSTGRES_URL to run against a PostgreSQL server")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'psycopg[binary]'")
    databases = PostgresDatabases(POSTGRES_ADMIN_URL)
    yield databases
    databases.drop_all()


@pytest.fixture(scope="module", autouse=True)
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """``"sqlite"``, or ``"postgres"``: then every memory opened without a ``database_url``
    keeps its records in a fresh PostgreSQL database (one per memory directory). A module's
    own module-scoped memory fixtures name this fixture, so each backend gets its own."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield backend
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    urls: dict[Path, str] = {}
    original = Notepad.__init__

    def on_postgres(self, directory, *, database_url, **kwargs) -> None:
        if database_url is None:
            key = Path(directory).expanduser().resolve()
            if key not in urls:
                urls[key] = databases.create()
            database_url = urls[key]
        original(self, directory, database_url=database_url, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Notepad, "__init__", on_postgres)
        yield backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run compiled Triton kernels on CUDA; without a GPU they skip."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the interpreter tests cover the logic)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SHARED_ABSENT = "../shared is absent"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test: that folder exists for developers and CI,
    not on a user's machine."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{SHARED_ABSENT} ({path} is missing)")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line per reason tests skipped, with its count: a clone without ../shared (what a
    user has) says once how many tests that data would have run."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else "skipped"
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith(SHARED_ABSENT):
            reason = (
                f"{SHARED_ABSENT} (the real logs, tickets and conversations kept beside the "
                f"checkout for developers and CI, at {SHARED})"
            )
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skipped tests, by reason")
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{count:5d}  {reason}")


class Figures:
    """Named figures a test measured, merged into ``FIGURES`` when the run ends."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, object]] = {}

    def record(self, test: str, **values: object) -> None:
        when = datetime.now(UTC).isoformat(timespec="seconds")
        self.values.setdefault(test, {}).update(values, recorded_at=when)

    def write(self) -> None:
        if not self.values:
            return
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        try:
            merged = json.loads(FIGURES.read_text())
        except (OSError, ValueError):
            merged = {}
        merged.update(self.values)
        tmp = FIGURES.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, FIGURES)


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    """``figures.record("crash", kills=50, lost=0)``: figures for RELIABILITY.md."""
    collected = Figures()
    yield collected
    collected.write()


@pytest.fixture(scope="session")
def shared() -> Callable[..., Path]:
    """``shared("data", "loghub", ...)``: a path under ../shared, or skip the test."""
    return shared_path


@pytest.fixture
def scope() -> Scope:
    return Scope(tenant="acme", user="u1")


@pytest.fixture
def memory_dir(tmp_path: Path) -> Path:
    return tmp_path / "memory"


@pytest.fixture
def mem(memory_dir: Path) -> Iterator[HybridMemory]:
    with HybridMemory.open(memory_dir) as memory:
        yield memory


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch ``memsdk.engine.stream_many`` ran (a test of batching knows the
    batched path ran); the real function runs."""
    import memsdk.engine.ttt as ttt

    sizes: list[int] = []
    real = ttt._stream_batch

    def recording(states, chunks, slots):
        sizes.append(len(states))
        return real(states, chunks, slots)

    monkeypatch.setattr(ttt, "_stream_batch", recording)
    return sizes
