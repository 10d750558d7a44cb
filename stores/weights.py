"""Per-scope files of a memory directory, named by the scope's SQL id and written atomically:
the weight memory's deltas (``<memory>/weights/scope-<id>/delta-<version>.safetensors``), the
snapshots of memsdk before deltas (``<memory>/weights/scope-<id>.safetensors``, read once and
replaced) and fitted router policies (``<memory>/router/scope-<id>.json``).

The files are opaque bytes here (the engine and the router write and read their content); a
crash leaves the previous file or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from memsdk.files import atomic_write_bytes

__all__ = ["RouterPolicies", "ScopeFiles", "WeightDeltas", "WeightSnapshots"]

MAX_HEADER_BYTES = 100 << 20  # the limit safetensors itself applies


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


class WeightDeltas:
    """Numbered delta files per scope: ``<memory>/weights/scope-<id>/delta-<version>.safetensors``.

    Which versions form a scope's chain is written inside the files (each names its parent);
    this class only stores, lists and removes them.
    """

    _name = re.compile(r"delta-(\d{6,})\.safetensors")

    def __init__(self, memory_directory: str | os.PathLike[str]) -> None:
        self.directory = Path(memory_directory) / "weights"

    def folder(self, scope_id: int) -> Path:
        return self.directory / f"scope-{int(scope_id)}"

    def path(self, scope_id: int, version: int) -> Path:
        return self.folder(scope_id) / f"delta-{int(version):06d}.safetensors"

    def versions(self, scope_id: int) -> list[int]:
        """The scope's stored versions, oldest first."""
        try:
            names = os.listdir(self.folder(scope_id))
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := self._name.fullmatch(n)))

    def scope_ids(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"scope-(\d+)", n)))

    def header(self, scope_id: int, version: int) -> dict[str, Any]:
        """The safetensors header of a delta file (each tensor's dtype and shape, and the
        ``__metadata__`` strings), read without the tensors: a few KB instead of the file.

        Raises:
            OSError: the file cannot be read.
            ValueError: the file does not start with a safetensors header.
        """
        with open(self.path(scope_id, version), "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= MAX_HEADER_BYTES:
                raise ValueError(f"a safetensors header of {size} bytes")
            raw = f.read(size)
        if len(raw) != size:
            raise ValueError("the file ends inside its safetensors header")
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the safetensors header is not a JSON object")
        return header

    def write(self, scope_id: int, version: int, data: bytes) -> None:
        self.folder(scope_id).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(scope_id, version), data)

    def read(self, scope_id: int, version: int) -> bytes:
        return self.path(scope_id, version).read_bytes()

    def delete(self, scope_id: int, version: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(scope_id, version).unlink()

    def size(self, scope_id: int, versions: list[int] | None = None) -> int:
        total = 0
        for version in self.versions(scope_id) if versions is None else versions:
            with contextlib.suppress(FileNotFoundError):
                total += self.path(scope_id, version).stat().st_size
        return total

    def signature(self, scope_id: int) -> tuple[int, ...]:
        """What the scope's deltas look like on disk: its versions (every save writes a new
        one), and the size and change time of the newest (should a chain start again under
        numbers seen before, as after its folder was removed by hand)."""
        versions = self.versions(scope_id)
        if not versions:
            return ()
        try:
            stat = self.path(scope_id, versions[-1]).stat()
        except FileNotFoundError:
            return (*versions, -1, -1)
        return (*versions, stat.st_size, stat.st_mtime_ns)

    def modified(self, scope_id: int) -> float | None:
        """When the scope's newest delta was written (seconds since the epoch), or None."""
        versions = self.versions(scope_id)
        if not versions:
            return None
        with contextlib.suppress(FileNotFoundError):
            return self.path(scope_id, versions[-1]).stat().st_mtime
        return None
