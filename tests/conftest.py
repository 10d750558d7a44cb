"""Shared fixtures: real memories on disk (SQLite + FAISS + the MiniLM embedder)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU (small shapes), so CI checks
# their logic. The variable is read when a kernel is decorated, so it is set before any test
# module imports memsdk (and with it memsdk.kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from memsdk import HybridMemory, Scope

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Figures of the reliability tests (kills survived, operations run, examples tried), written
# at the end of the run; RELIABILITY.md is made from them by scripts/reliability_table.py.
FIGURES = REPO / "benchmarks" / "out" / "reliability.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run compiled Triton kernels on CUDA; without a GPU they skip."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the interpreter tests cover the logic)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test: that folder exists for developers and CI,
    not on a user's machine."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"{path} is absent (../shared is beside the checkout on developer machines and CI)"
        )
    return path


class Figures:
    """Named figures a test measured, merged into ``FIGURES`` when the run ends."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, object]] = {}

    def record(self, test: str, **values: object) -> None:
        self.values.setdefault(test, {}).update(values)

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
