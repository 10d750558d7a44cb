"""Weight-memory snapshots: one safetensors file per scope in ``<memory>/weights/``.

The files are opaque bytes here (the engine writes and reads their content); this module only
names them by the scope's SQL id and writes them atomically, so a crash leaves the previous
snapshot or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from memsdk.files import atomic_write_bytes

__all__ = ["WeightSnapshots"]


class WeightSnapshots:
    def __init__(self, memory_directory: str | os.PathLike[str]) -> None:
        self.directory = Path(memory_directory) / "weights"

    def path(self, scope_id: int) -> Path:
        return self.directory / f"scope-{int(scope_id)}.safetensors"

    def write(self, scope_id: int, data: bytes) -> None:
        self.directory.mkdir(exist_ok=True)
        atomic_write_bytes(self.path(scope_id), data)

    def read(self, scope_id: int) -> bytes | None:
        """The snapshot's bytes, or None when the scope has none yet."""
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
