"""The memory directory manifest: which format, embedder and index a memory was written with.

The manifest is a small JSON file written atomically. Opening a memory checks it first, so a
directory written by a newer memsdk, or with another embedder, fails with a clear error before
anything else is read or written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memsdk.errors import FormatError
from memsdk.files import atomic_write_bytes

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "read_manifest"]

FORMAT_NAME = "memsdk-memory"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class Manifest:
    """What a memory directory holds and how it was written."""

    embedder_name: str
    embedder_dim: int
    metric: str = "inner_product"
    index_type: str = "IndexIDMap2(IndexFlatIP)"
    database: str = "sqlite:///memory.db"
    memsdk_version: str = "0.1.0"
    format_version: int = FORMAT_VERSION
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # The memory's identity (a UUID, hex), also stored in its database, index file and weight
    # deltas: files of another history are refused. Empty in memories made before identities;
    # they adopt one on their next open.
    memory_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, **asdict(self)}

    def write(self, directory: str | os.PathLike[str]) -> None:
        """Write ``manifest.json`` into ``directory`` atomically."""
        data = json.dumps(self.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        atomic_write_bytes(Path(directory) / MANIFEST_NAME, data)

    def check_embedder(self, name: str, dim: int, *, directory: Path) -> None:
        """Raise unless this memory was written with the embedder ``name`` of width ``dim``.

        Raises:
            FormatError: the stored embedder differs; vectors of two models are not comparable.
        """
        if (self.embedder_name, self.embedder_dim) != (name, dim):
            raise FormatError(
                f"memory at {directory} was written with embedder {self.embedder_name!r} "
                f"(dim {self.embedder_dim}), this memory is configured with {name!r} (dim {dim}): "
                "open it with the embedder it was written with, or ingest into a new directory"
            )


def read_manifest(directory: str | os.PathLike[str]) -> Manifest | None:
    """Read the manifest of ``directory``; None when the directory has none (a new memory).

    Raises:
        FormatError: the manifest is unreadable, forged, or written by a newer memsdk.
    """
    path = Path(directory) / MANIFEST_NAME
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise FormatError(
            f"{path} is a directory, not a memsdk manifest (a small JSON file): restore the "
            "file from a backup of the memory"
        ) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FormatError(
            f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: not a memsdk manifest"
        )
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(
            f"{path} is not valid JSON ({e}): the manifest is corrupted; restore it from a backup "
            "or move the directory aside and ingest again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise FormatError(f'{path} is not a memsdk manifest (expected "format": "{FORMAT_NAME}")')
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise FormatError(f"{path} has no integer format_version")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"memory at {path.parent} has format version {version}, this memsdk reads up to "
            f"version {FORMAT_VERSION}: upgrade memsdk (pip install -U memsdk) to open it"
        )
    known = {f for f in Manifest.__dataclass_fields__}
    fields = {k: v for k, v in data.items() if k in known}
    try:
        manifest = Manifest(**fields)
    except TypeError as e:
        raise FormatError(f"{path} is missing fields: {e}") from None
    for name, expected in _FIELD_TYPES.items():
        value = getattr(manifest, name)
        if not isinstance(value, expected) or isinstance(value, bool):
            raise FormatError(
                f'{path} has "{name}": {json.dumps(value)[:80]}, expected a '
                f"{'string' if expected is str else 'whole number'}: restore the manifest from "
                "a backup of the memory, or correct that field"
            )
    return manifest


# The JSON type of each manifest field (the dataclass annotations are strings at run time).
_FIELD_TYPES = {
    "embedder_name": str,
    "embedder_dim": int,
    "metric": str,
    "index_type": str,
    "database": str,
    "memsdk_version": str,
    "format_version": int,
    "created_at": str,
    "memory_id": str,
}
