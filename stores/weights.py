"""Per-scope files of a memory directory, named by the scope's SQL id and written atomically:
weight-memory snapshots (``<memory>/weights/scope-<id>.safetensors``) and fitted router
policies (``<memory>/router/scope-<id>.json``).

The files are opaque bytes here (the engine and the router write and read their content); a
crash leaves the previous file or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from memsdk.files import atomic_write_bytes

__all__ = ["RouterPolicies", "ScopeFiles", "WeightSnapshots"]


class ScopeFiles:
    """One file per scope in ``<memory>/<folder>/``."""

    folder = ""
    suffix = ""

    def __init__(self, memory_directory: str | os.PathLike[str]) -> None:
        self.directory = Path(memory_directory) / self.folder

    def path(self, scope_id: int) -> Path:
        return self.directory / f"scope-{int(scope_id)}{self.suffix}"

    def write(self, scope_id: int, data: bytes) -> None:
        self.directory.mkdir(exist_ok=True)
        atomic_write_bytes(self.path(scope_id), data)

    def read(self, scope_id: int) -> bytes | None:
        """The file's bytes, or None when the scope has none yet."""
        try:
            return self.path(scope_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, scope_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(scope_id).unlink()

    def size(self, scope_id: int) -> int:
        try:
            return self.path(scope_id).stat().st_size
        except FileNotFoundError:
            return 0


class WeightSnapshots(ScopeFiles):
    folder = "weights"
    suffix = ".safetensors"


class RouterPolicies(ScopeFiles):
    folder = "router"
    suffix = ".json"
