"""Where a memory's API keys are kept, and the scope a key grants."""

from __future__ import annotations

import os
from pathlib import Path

from memsdk.errors import ConfigError
from memsdk.scope import Scope
from memsdk.stores.keys import KeyRecord, KeyStore
from memsdk.stores.notepad import DATABASE_NAME

__all__ = ["key_scope", "open_key_store"]


def open_key_store(directory: str | os.PathLike[str], database_url: str | None = None) -> KeyStore:
    """The key table of the memory at ``directory`` (in its own SQLite file, or in
    ``database_url`` for a memory kept in another database).

    Raises:
        ConfigError: ``directory`` holds no memory.
    """
    if database_url:
        return KeyStore(database_url)
    path = Path(directory) / DATABASE_NAME
    if not path.is_file():
        raise ConfigError(
            f"{directory} holds no memory ({DATABASE_NAME} is missing): make it first with "
            "`memsdk ingest`, or give --database-url for a memory kept in another database"
        )
    return KeyStore(f"sqlite:///{path}")


def key_scope(record: KeyRecord) -> Scope:
    tenant, user, agent, run = record.scope
    return Scope(tenant=tenant, user=user or None, agent=agent or None, run=run or None)
