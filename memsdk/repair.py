"""Repairing a memory whose files belong to another history than its database.

A memory's manifest, database, vector index and weight deltas carry one identity (a UUID).
When the database was removed, emptied or replaced by another memory's, opening the memory
raises :class:`~memsdk.errors.StaleFilesError`: the index and weight deltas describe chunks the
database does not hold, under ids it will give to new chunks. :func:`repair` keeps the database
(the source of truth) and moves every file it does not vouch for (the vector index, the weight
deltas, the router policies, the saved text index's record) into ``<memory>/stale-<time>/``,
where nothing reads them; the index is then rebuilt from the database and each scope's weights
absorb its chunks again.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from memsdk.config import MemoryConfig
from memsdk.errors import NotFoundError
from memsdk.memory import HybridMemory
from memsdk.stores.manifest import read_manifest
from memsdk.stores.notepad import DATABASE_NAME
from memsdk.stores.sql import SQLStore
from memsdk.stores.text_index import SAVED_NAME
from memsdk.stores.vector_index import INDEX_NAME

__all__ = ["RepairReport", "repair"]

# What a database of another history disowns.
UNVOUCHED = (INDEX_NAME, "weights", "router", SAVED_NAME)


@dataclasses.dataclass(frozen=True)
class RepairReport:
    """What :func:`repair` did: the files moved aside (empty when the database and the
    files agreed), where to, and the size of the rebuilt index."""

    moved: list[str]
    stale_directory: str | None
    index_vectors: int


def repair(
    path: str | os.PathLike[str], *, config: MemoryConfig | None = None, progress: bool = False
) -> RepairReport:
    """Make the memory at ``path`` open again on its database: move the files of another
    history aside (see the module) and rebuild the vector index from the database.

    Raises:
        NotFoundError: there is no memory at ``path``.
        FormatError: the manifest is unreadable; DatabaseCorruptedError: the database is
            damaged (restore it from a backup first).
    """
    config = config or MemoryConfig()
    directory = Path(path).expanduser().resolve()
    manifest = read_manifest(directory) if directory.is_dir() else None
    if manifest is None:
        raise NotFoundError(f"no memory at {directory}: check the path")
    sql = SQLStore(
        config.database_url or f"sqlite:///{directory / DATABASE_NAME}",
        busy_timeout_s=config.busy_timeout_s,
    )
    try:
        sql.create_schema()
        held = sql.identity()
        moved: list[str] = []
        stale = None
        if manifest.memory_id and held != manifest.memory_id:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            stale = directory / f"stale-{stamp}"
            stale.mkdir()
            for name in UNVOUCHED:
                if (directory / name).exists():
                    os.replace(directory / name, stale / name)
                    moved.append(str(stale / name))
            identity = sql.adopt_identity(held or uuid.uuid4().hex)
            dataclasses.replace(manifest, memory_id=identity).write(directory)
    finally:
        sql.close()
    with HybridMemory.open(
        directory, config=config, rebuild_index=True, progress=progress, create=False
    ) as mem:
        vectors = len(mem.notepad.index)
    return RepairReport(
        moved=moved, stale_directory=None if stale is None else str(stale), index_vectors=vectors
    )
