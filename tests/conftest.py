"""Shared fixtures: real memories on disk (SQLite + FAISS + the MiniLM embedder)."""

from __future__ import annotations

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
