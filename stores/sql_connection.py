"""How the notepad's SQL store connects to its database and names what goes wrong there.

SQLite (the default) runs in WAL mode with a busy timeout, and each engine starts its
transactions with its own BEGIN, so writers can ask for ``BEGIN IMMEDIATE``; PostgreSQL write
transactions take the advisory lock :data:`WRITE_LOCK_KEY`. A damaged SQLite file and a database
that cannot grow are told apart from other database errors, so the store can name the repair.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, OperationalError

from memsdk.errors import DatabaseCorruptedError

__all__ = [
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "WRITE_LOCK_KEY",
    "corruption_named",
    "out_of_storage",
    "sqlite_engine",
]

WRITE_LOCK_KEY = 0x6D656D73  # the PostgreSQL advisory lock every write transaction takes
# SQLite's primary result codes for a damaged file (extended codes keep them in the low byte).
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26


def sqlite_engine(url: str, args: dict[str, Any], *, begin: str, busy: float) -> Engine:
    """A SQLite engine whose connections run in WAL mode with a ``busy`` s timeout and whose
    transactions start with ``begin`` (``BEGIN`` or ``BEGIN IMMEDIATE``)."""
    engine = create_engine(url, connect_args=args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event (below) issue BEGIN, so writers can ask for IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


@contextlib.contextmanager
def corruption_named(url: str) -> Iterator[None]:
    """Turn SQLite's "database disk image is malformed" and "file is not a database"
    into a DatabaseCorruptedError that names the repair."""
    try:
        yield
    except DatabaseError as exc:
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code is None or code & 0xFF not in (SQLITE_CORRUPT, SQLITE_NOTADB):
            raise
        path = make_url(url).database
        raise DatabaseCorruptedError(
            f"the SQLite database {path} is damaged ({exc.orig}): restore it from a backup, "
            "or salvage the rows SQLite can still read with the sqlite3 shell (README, "
            '"Repairing a damaged database"), then run memsdk rebuild-index --memory DIR'
        ) from exc


def out_of_storage(exc: OperationalError) -> bool:
    """Whether a database error means it cannot store more: SQLite's SQLITE_FULL and
    SQLITE_READONLY, PostgreSQL's class 53 (insufficient resources: disk full, out of memory)."""
    if str(getattr(exc.orig, "sqlstate", "") or "").startswith("53"):
        return True
    message = str(exc.orig).lower()
    return "database or disk is full" in message or "readonly database" in message
