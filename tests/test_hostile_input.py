"""Hostile input, property-based: arbitrary text and bytes, malformed filters and metadata,
scope names made of path separators and SQL, forged or truncated files. Each gets a clear
memsdk error or correct behaviour; nothing stored is changed by a refused call; no file is
ever executed (no pickle is read anywhere)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import (
    DatabaseCorruptedError,
    DuplicateError,
    FilterError,
    FormatError,
    HybridMemory,
    IndexCorruptedError,
    InputError,
    MemoryConfig,
    MemsdkError,
    Scope,
)
from memsdk.engine import TTTState, load_model, make_delta, read_delta, stream
from memsdk.stores.manifest import read_manifest
from memsdk.stores.vector_index import VectorIndex
from memsdk.stores.weights import WeightDeltas

SCOPE = Scope(tenant="hostile")
# Lone surrogates: U+DC80..U+DCFF stand for raw bytes in text (surrogateescape), the rest are
# not text at all. Hypothesis draws str without them unless asked, so every strategy mixes
# these in.
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udc7f", "\udc80", "\udcff", "\udd00", "\udfff"]
_with_surrogates = st.lists(
    st.sampled_from(SURROGATES) | st.text(max_size=6), min_size=1, max_size=8
).map("".join)


def _unencodable(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate that stands for no byte."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return True
    return False


EXAMPLES = {"text": 80, "filters": 150, "metadata": 80, "scopes": 40, "files": 60}
TRIED: dict[str, int] = {}  # examples hypothesis ran, per test, for RELIABILITY.md


def _tried(figures, name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1
    figures.record("hostile", **TRIED)


SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@pytest.fixture(scope="module")
def memory(tmp_path_factory, database):
    path = tmp_path_factory.mktemp("hostile") / "memory"
    with HybridMemory.open(path) as mem:
        mem.ingest(
            [f'node-{i} said "NEAR" AND (OR) * ^ {{x}} \' -- ; ok {i}\n' for i in range(40)],
            scope=SCOPE,
            name="odd",
            metadata={"ticket": 7, "team": "net"},
        )
        yield mem


def _count(mem: HybridMemory, scope: Scope = SCOPE) -> int:
    return len(mem.get_all(scope=scope, limit=100_000))


@settings(max_examples=EXAMPLES["text"], **SETTINGS)
@given(data=st.one_of(st.text(max_size=2000), st.binary(max_size=2000), _with_surrogates))
def test_any_text_or_bytes_is_stored_exactly_or_refused(memory, data, figures) -> None:
    _tried(figures, "text_and_bytes")
    before = _count(memory)
    try:
        result = memory.add(data, scope=SCOPE)
    except InputError as exc:
        if isinstance(data, str) and _unencodable(data):
            assert "lone surrogate" in str(exc)
            assert _count(memory) == before
            return
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        assert not raw.strip(), exc
        assert _count(memory) == before
        return
    assert _count(memory) == before + len(result.ids)
    if result.duplicates_skipped == 0:
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        stored = b"".join(memory.get(i, scope=SCOPE).data for i in result.ids)
        assert stored == raw


@settings(max_examples=EXAMPLES["text"] // 2, **SETTINGS)
@given(pieces=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8))
def test_any_stream_of_pieces_ingests(memory, pieces, figures) -> None:
    _tried(figures, "streams")
    report = memory.ingest(pieces, scope=SCOPE, name="pieces")
    raw = b"".join(
        p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p for p in pieces
    )
    assert report.bytes == len(raw)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | _with_surrogates,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["ticket", "team", "AND", "OR", "NOT", "eq", "gte", "in", "contains", "", "$where", "a.b"]
)
_filters = st.recursive(
    st.dictionaries(_keys | st.text(max_size=6) | _with_surrogates, _json, max_size=3),
    lambda inner: st.dictionaries(_keys, inner | st.lists(inner, max_size=3) | _json, max_size=3),
    max_leaves=10,
)


@settings(max_examples=EXAMPLES["filters"], **SETTINGS)
@given(filters=st.one_of(_filters, _json))
def test_any_filter_selects_or_is_a_filter_error(memory, filters, figures) -> None:
    _tried(figures, "filters")
    before = _count(memory)
    for call in (
        lambda: memory.search("node-3 said", scope=SCOPE, k=3, filters=filters),
        lambda: memory.get_all(scope=SCOPE, filters=filters, limit=5),
    ):
        try:
            results = call()
        except FilterError as exc:
            assert "filter" in str(exc).lower()
            continue
        assert all(r.scope == SCOPE for r in results)
    assert _count(memory) == before


@settings(max_examples=EXAMPLES["metadata"], **SETTINGS)
@given(
    metadata=st.one_of(
        _json, st.dictionaries(st.text(max_size=10) | _with_surrogates, _json, max_size=4)
    )
)
def test_any_metadata_round_trips_or_is_refused(memory, metadata, figures) -> None:
    _tried(figures, "metadata")
    text = f"metadata probe {uuid.uuid4()}"  # hypothesis seeds `random`: uuid4 is unique
    before = _count(memory)
    try:
        (memory_id,) = memory.add(text, scope=SCOPE, metadata=metadata).ids
    except InputError as exc:
        assert "metadata" in str(exc)
        assert _count(memory) == before
        return
    stored = memory.get(memory_id, scope=SCOPE).metadata
    assert json.loads(json.dumps(stored)) == stored


_names = (
    st.text(min_size=1, max_size=40).filter(str.strip)
    | st.sampled_from(
        [
            "../../etc/passwd",
            "a/b\\c",
            "'; DROP TABLE chunks; --",
            "%",
            "_",
            "\u202e",
            "x" * 256,
            "..",
        ]
    )
    | _with_surrogates.filter(str.strip)
)


@settings(max_examples=EXAMPLES["scopes"], **SETTINGS)
@given(tenant=_names, user=_names)
def test_any_scope_name_is_plain_data(memory, tenant, user, figures) -> None:
    _tried(figures, "scope_names")
    try:
        scope = Scope(tenant=tenant, user=user)
    except (InputError, ValueError) as exc:
        assert "tenant" in str(exc) or "user" in str(exc) or "scope" in str(exc).lower()
        return
    text = f"owned by {tenant!r}/{user!r}"
    with contextlib.suppress(DuplicateError):
        memory.add(text, scope=scope)
    assert [i.text for i in memory.get_all(scope=scope)][-1] == text
    assert all(i.scope == scope for i in memory.search("owned by", scope=scope, k=5))
    assert _count(memory) >= 40  # the other scope's chunks are all there
    files = {p.relative_to(memory.path).parts[0] for p in memory.path.rglob("*")}
    assert files <= {
        "manifest.json",
        "memory.db",
        "memory.db-wal",
        "memory.db-shm",
        "notepad.faiss",
        "weights",
        "router",
    }


def test_lone_surrogates_in_every_field_are_clear_errors(memory, tmp_path) -> None:
    """U+D800 is not text: each field that takes a str refuses it by name (text fields keep
    U+DC80..U+DCFF, which stand for raw bytes); document names store it as U+FFFD."""
    bad = "x\ud800y"
    before = _count(memory)
    lone = "holds the lone surrogate U+D800 at index 1, which is not text and has no UTF-8 encoding"
    text_fix = "pass bytes, or a str decoded with errors='surrogateescape' or 'replace'"
    cases = [
        (lambda: memory.add(bad, scope=SCOPE), f"text {lone}: {text_fix}"),
        (lambda: memory.ingest(["ok\n", bad], scope=SCOPE, name="s"), f"s: item 1 {lone}"),
        (lambda: memory.update(1, scope=SCOPE, text=bad), f"text {lone}"),
        (lambda: memory.search(bad, scope=SCOPE), f"query {lone}"),
        (lambda: memory.query(bad, scope=SCOPE), f"query {lone}"),
        (lambda: memory.surprise(bad, scope=SCOPE), f"text {lone}"),
        (lambda: memory.bits_per_byte(bad, scope=SCOPE), f"text {lone}"),
        (lambda: memory.complete(bad, scope=SCOPE), f"prompt {lone}"),
        (lambda: memory.complete("node", scope=SCOPE, stop=bad), f"stop {lone}"),
        (
            lambda: memory.add("m", scope=SCOPE, metadata={"k": bad}),
            f"metadata value at k {lone}: remove it, or replace it with U+FFFD",
        ),
        (
            lambda: memory.add("m", scope=SCOPE, metadata={"k": [{"j": "\udcff"}]}),
            "metadata value at k[0].j holds the lone surrogate U+DCFF",
        ),
        (
            lambda: memory.add("m", scope=SCOPE, metadata={bad: 1}),
            f"metadata key 'x\\ud800y' {lone}",
        ),
        (
            lambda: memory.search("node", scope=SCOPE, filters={"team": bad}),
            f"filter 'team' eq: the value {lone}",
        ),
        (
            lambda: memory.search("node", scope=SCOPE, filters={"team": {"contains": bad}}),
            f"filter 'team' contains: the value {lone}",
        ),
        (
            lambda: memory.get_all(scope=SCOPE, filters={"OR": [{bad: 1}]}),
            f"filter key 'x\\ud800y' {lone}",
        ),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            call()
    with pytest.raises(FilterError):
        memory.search("node", scope=SCOPE, filters={"team": {"in": ["net", bad]}})
    for part in ("tenant", "user", "agent", "run"):
        with pytest.raises(ValueError, match=rf"{part}\n.*holds the lone surrogate U\+D800"):
            Scope(**{"tenant": "t", part: bad})
    assert _count(memory) == before
    # Text keeps U+DC80..U+DCFF: they are the bytes a surrogateescape decode could not read.
    (escaped,) = memory.add("raw \udcff byte", scope=SCOPE).ids
    assert memory.get(escaped, scope=SCOPE).data == b"raw \xff byte"
    assert memory.complete("node", scope=SCOPE, stop="\udcff", max_bytes=8) is not None
    # Document names are labels: a lone surrogate is stored as U+FFFD.
    report = memory.ingest(["named oddly\n"], scope=SCOPE, name=bad)
    (doc_chunk,) = [
        i for i in memory.get_all(scope=SCOPE, limit=100_000) if i.text == "named oddly\n"
    ]
    assert doc_chunk.source == "x\ufffdy" and report.documents == 1
    odd = tmp_path / "docs"
    odd.mkdir()
    (odd / os.fsdecode(b"caf\xe9.log")).write_text("a file whose name is not UTF-8\n")
    report = memory.ingest(odd, scope=SCOPE)
    assert report.documents == 1
    (item,) = [
        i for i in memory.get_all(scope=SCOPE, limit=100_000) if i.text.startswith("a file whose")
    ]
    assert item.source.endswith("caf\ufffd.log")


def test_complete_refuses_bad_sampling_arguments(memory) -> None:
    for kwargs, message in (
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0.*got nan"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0.*got inf"),
        ({"temperature": "hot"}, "temperature must be a finite number >= 0.*got 'hot'"),
        ({"temperature": True}, "temperature must be a finite number"),
        ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
        (
            {"seed": 2**70},
            r"seed must be None or an int in 0\.\.2\*\*64-1, got 1180591620717411303424",
        ),
        ({"seed": -1}, r"seed must be None or an int in 0\.\.2\*\*64-1"),
        ({"seed": "7"}, "seed must be None or an int"),
        ({"stop": 5}, "stop must be a str, bytes or None, got int"),
        ({"max_bytes": True}, r"max_bytes must be an int in 1\.\.4096, got True"),
    ):
        with pytest.raises(InputError, match=message):
            memory.complete("node-3 said", scope=SCOPE, **kwargs)
    # bytes stop: the same stop as its str, matched on the continuation's bytes
    memory.flush()  # the weights stop changing under the comparisons
    greedy = memory.complete("node-3 said", scope=SCOPE, max_bytes=60)
    assert memory.complete("node-3 said", scope=SCOPE, max_bytes=60, stop=b"\n") == greedy
    sampled = memory.complete("node-3", scope=SCOPE, temperature=0.8, seed=2**64 - 1)
    assert sampled == memory.complete("node-3", scope=SCOPE, temperature=0.8, seed=2**64 - 1)


def test_filters_have_a_depth_and_width_limit(memory) -> None:
    nested: dict = {"team": "net"}
    for _ in range(1000):
        nested = {"NOT": nested}
    with pytest.raises(FilterError, match="filters nest deeper than 16 levels"):
        memory.search("node-3 said", scope=SCOPE, filters=nested)
    wide = {"OR": [{"ticket": i} for i in range(3000)]}
    for filters in (wide, {"OR": [{}] * 600}):
        with pytest.raises(FilterError, match="filters hold more than 512 conditions"):
            memory.get_all(scope=SCOPE, filters=filters)
    # The largest filters allowed compile to SQL the database runs.
    deep: dict = {"OR": [{"ticket": i} for i in range(200)]}  # 16 levels of dicts
    for _ in range(14):
        deep = {"AND": [deep]}
    for filters in (
        {"OR": [{"ticket": i} for i in range(256)]},
        {"ticket": {"in": list(range(511))}},
        {"ticket": {"nin": list(range(8, 519))}},
        deep,
    ):
        found = memory.get_all(scope=SCOPE, filters=filters, limit=100_000)
        assert found and all(i.metadata.get("ticket", 7) == 7 for i in found)  # nin: or absent
        assert memory.search("node-3 said", scope=SCOPE, k=2, filters=filters)


def test_long_in_lists_match_like_equality(memory) -> None:
    """An in / nin list of any length up to MAX_IN_VALUES is one condition, bound as one
    parameter: 5,000 values used to escape as SQLite's "Expression tree is too large" with the
    SQL in its message. Each value still matches only stored values of its own JSON type."""
    scope = Scope(tenant="hostile-in-lists")
    stored = [1, 1.5, "1", True, False, None, 4999, 5000, "x" * 300, -(2**63), 2**63 - 1]
    for i, value in enumerate(stored):
        memory.add(f"item {i}", scope=scope, metadata={"k": value})
    memory.add("no key", scope=scope, metadata={"other": 1})

    def same(a, b) -> bool:  # equality of JSON values: 1 == 1.0, but "1" != 1 != True
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        return (type(a) is type(b) or numbers) and a == b

    lists = [
        list(range(5000)),
        [*list(range(-2500, 2500)), "1", None, 1.5],
        [str(i) for i in range(10_000)] + [False],
        [float(i) + 0.5 for i in range(5000)] + [True, "x" * 300, 2**63 - 1, -(2**63)],
        [2.0, "2", "3"],
    ]
    for values in lists:
        for op in ("in", "nin"):
            found = memory.get_all(scope=scope, filters={"k": {op: values}}, limit=100)
            got = sorted(i.text for i in found)
            want = sorted(
                f"item {i}"
                for i, value in enumerate(stored)
                if any(same(value, v) for v in values) == (op == "in")
            ) + (["no key"] if op == "nin" else [])
            assert got == sorted(want), (op, values[:4])
            assert memory.search("item", scope=scope, k=3, filters={"k": {op: values}}) or not got
    # Inside OR / NOT, several lists, and the largest filter allowed.
    filters = {"OR": [{"k": {"in": list(range(3, 50_000))}}, {"NOT": {"k": {"nin": ["1"]}}}]}
    assert sorted(i.text for i in memory.get_all(scope=scope, filters=filters)) == [
        "item 2",
        "item 6",
        "item 7",
    ]
    with pytest.raises(FilterError) as refused:
        memory.get_all(scope=scope, filters={"OR": [{"k": {"in": list(range(60_000))}}] * 2})
    assert "more than 100000 values in their in / nin lists" in str(refused.value)
    assert "split the call" in str(refused.value) and "SELECT" not in str(refused.value)


# ---- forged and truncated files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    model = load_model()[0]
    state = TTTState(model)
    stream(state, "2026-11-22 vpn-gw-1 kernel: tun0 down\n" * 40, final=True)
    index = VectorIndex(4)
    path = tmp_path_factory.mktemp("files") / "index.faiss"
    index.add(np.arange(3, dtype=np.int64), np.eye(3, 4, dtype=np.float32))
    index.save(path)
    return {
        "model": model,
        "delta": make_delta(state, state.initial_weights()),
        "state": state.to_bytes(),
        "index": path.read_bytes(),
    }


def _mutate(data: bytes, how: str, rng: random.Random) -> bytes:
    if how == "truncate":
        return data[: rng.randrange(len(data))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if how == "header":  # a forged header length or JSON
        size = int.from_bytes(data[:8], "little")
        header = data[8 : 8 + size].replace(b'"', b"'", rng.randint(1, 3))
        return rng.choice([(2**63).to_bytes(8, "little"), data[:8]]) + header + data[8 + size :]
    return b"\x80\x04" + data  # a pickle opcode prefix


@settings(max_examples=EXAMPLES["files"], **SETTINGS)
@given(
    kind=st.sampled_from(["delta", "state", "index"]),
    how=st.sampled_from(["truncate", "flip", "header", "prefix"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_forged_or_truncated_files_are_format_errors(
    valid_files, tmp_path, kind, how, seed, figures
):
    _tried(figures, "forged_files")
    data = _mutate(valid_files[kind], how, random.Random(seed))
    try:
        if kind == "delta":
            read_delta(data)
        elif kind == "state":
            TTTState.from_bytes(data, valid_files["model"])
        else:
            path = tmp_path / f"forged-{seed}.faiss"
            path.write_bytes(data)
            VectorIndex.load(path, dim=4)
    except (FormatError, IndexCorruptedError):
        pass  # a flipped bit in a value (not the header) can leave a valid file: also fine


def _pickle_that_creates(path: Path) -> bytes:
    """A pickle (protocol 0, written out by hand) whose loading calls ``open(path, "w")``,
    creating the file: proof, if the file never appears, that nothing unpickled it."""
    return f"cbuiltins\nopen\n(V{path}\nVw\ntR.".encode()


def test_a_pickle_planted_in_a_memory_is_never_executed(tmp_path, caplog) -> None:
    memory = tmp_path / "memory"
    with HybridMemory.open(memory) as mem:
        mem.ingest(["vpn-gw-1 kernel: tun0 down\n"] * 3 + ["vpn-gw-2 up\n"], scope=SCOPE, name="a")
        mem.flush()
    deltas = WeightDeltas(memory)
    (scope_id,) = deltas.scope_ids()
    trap = tmp_path / "executed"
    payload = _pickle_that_creates(trap)
    for version in deltas.versions(scope_id):
        deltas.write(scope_id, version, payload)
    with HybridMemory.open(memory) as mem:  # the weight memory is rebuilt from SQL
        assert mem.search("tun0", scope=SCOPE, k=1)[0].text.startswith("vpn-gw-1")
        mem.flush()
        assert mem.stats().scopes[0].weights.bytes_absorbed == mem.stats().scopes[0].bytes
    assert "rebuilding the weight memory" in caplog.text
    (memory / "notepad.faiss").write_bytes(payload)
    with pytest.raises(IndexCorruptedError, match="rebuild-index"):
        HybridMemory.open(memory)
    (memory / "manifest.json").write_bytes(payload)
    with pytest.raises(FormatError, match="manifest"):
        read_manifest(memory)
    with pytest.raises(MemsdkError):
        HybridMemory.open(memory, config=MemoryConfig())
    assert not trap.exists()


@pytest.fixture(scope="module")
def memory_to_damage(tmp_path_factory, database) -> Path:
    if database != "sqlite":
        pytest.skip("damages a SQLite file (PostgreSQL keeps its own files)")
    path = tmp_path_factory.mktemp("damage") / "memory"
    with HybridMemory.open(path, config=MemoryConfig(weight_memory=False)) as mem:
        lines = [f"line {i}: node-{i % 7} said {i * 7919} after {i % 13} s\n" for i in range(3000)]
        mem.ingest(lines, scope=SCOPE, name="log", metadata={"team": "net"})
        # Every vector stored and the index saved in step: a close drops the embedding batch
        # in flight, and which pages the next open reads would depend on when it came.
        mem.flush()
    return path


@pytest.mark.parametrize("damage", ["truncate half", "overwrite header", "zero the middle"])
def test_a_damaged_database_names_the_repair(memory_to_damage, tmp_path, damage) -> None:
    path = tmp_path / "memory"
    shutil.copytree(memory_to_damage, path)
    db = path / "memory.db"
    size = db.stat().st_size
    with open(db, "r+b") as f:
        if damage == "truncate half":
            f.truncate(size // 2)
        elif damage == "overwrite header":
            f.write(b"\xde\xad\xbe\xef" * 25)  # the 100-byte header
        else:
            f.seek(size // 3)
            f.write(b"\x00" * (size // 3))
    repair = r"restore it from a backup, or salvage .*README.*memsdk rebuild-index --memory DIR"
    config = MemoryConfig(weight_memory=False)
    try:
        mem = HybridMemory.open(path, config=config)
    except DatabaseCorruptedError as exc:
        assert re.search(
            rf"{db} is damaged \((database disk image is malformed|file is not a "
            rf"database)\): {repair}",
            str(exc),
        ), exc
        assert damage != "zero the middle"  # the schema pages are intact there
        return
    with mem:
        # Reading every chunk meets the damage. A search or an add reads a few pages, which
        # may all be intact; when one is not, the error names the repair all the same (any
        # other exception fails the test).
        for call in (lambda: mem.get_all(scope=SCOPE, limit=100_000), mem.stats):
            with pytest.raises(DatabaseCorruptedError, match=repair):
                call()
        for call in (
            lambda: mem.search("node-3 said", scope=SCOPE),
            lambda: mem.add("a new fact", scope=SCOPE),
        ):
            try:
                call()
            except DatabaseCorruptedError as exc:
                assert re.search(repair, str(exc)), exc


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 shell")
def test_the_readme_salvage_of_a_damaged_database_works(memory_to_damage, tmp_path) -> None:
    """The commands the README gives under "Repairing a damaged database", run as written."""
    path = tmp_path / "memory"
    shutil.copytree(memory_to_damage, path)
    db = path / "memory.db"
    os.truncate(db, db.stat().st_size // 2)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Repairing a damaged database", 1)[1].split("###", 1)[0]
    script = section.split("```sh\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(
        ["sh", "-e", "-c", script.replace("DIR", str(path))],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    with HybridMemory.open(path, config=MemoryConfig(weight_memory=False)) as mem:
        items = mem.get_all(scope=SCOPE, limit=100_000)
        assert 0 < len(items) < 3000  # what survived the damage
        assert all(i.metadata == {"team": "net"} for i in items)
        assert mem.search(items[0].text.split(":")[0], scope=SCOPE, k=1)[0].id == items[0].id
        assert mem.add("written after the repair", scope=SCOPE).ids
        # The memory was closed while its stage still embedded (a close drops the batch in
        # flight), so salvaged chunks may wait for their vectors: the reopened stage embeds them.
        mem.flush()
        assert set(mem.notepad.sql.all_chunk_ids().tolist()) == set(
            mem.notepad.index.ids().tolist()
        )
