"""API keys of the HTTP and MCP front ends, stored as hashes in the memory's database.

A key is ``msk_<key id>_<secret>``: the key id (12 hex digits) is public and names the key in
``memsdk keys list`` and ``revoke``; the secret (32 random bytes) is shown once, when the key is
made, and only its SHA-256 is stored. A slow password hash is not needed: the secret is random
and long, so the hash cannot be reversed by guessing, and a fast hash keeps every request cheap.

Each key is bound to one scope (``tenant``, ``user``, ``agent``, ``run``; "" for an unset part)
and may be read-only. The table lives next to the memory's own tables (``api_keys``) but has
its own metadata, so the notepad's schema is untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Integer, String, create_engine, event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from memsdk.errors import InputError, NotFoundError

__all__ = ["KEY_PREFIX", "KeyRecord", "KeyStore"]

KEY_PREFIX = "msk_"
_KEY_RE = re.compile(r"^msk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")


class _Base(DeclarativeBase):
    pass


class _KeyRow(_Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(12), unique=True, index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(256))
    user: Mapped[str] = mapped_column(String(256), default="")
    agent: Mapped[str] = mapped_column(String(256), default="")
    run: Mapped[str] = mapped_column(String(256), default="")
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


@dataclass(frozen=True)
class KeyRecord:
    """What is known of a key, never its secret. ``scope`` is ``(tenant, user, agent, run)``
    with "" for unset parts."""

    key_id: str
    scope: tuple[str, str, str, str]
    read_only: bool
    label: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def _record(row: _KeyRow) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        scope=(row.tenant, row.user, row.agent, row.run),
        read_only=row.read_only,
        label=row.label,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class KeyStore:
    """The ``api_keys`` table of one database.

    Args:
        url: the memory's SQLAlchemy URL (``sqlite:///DIR/memory.db`` for a memory kept in its
            directory).
    """

    def __init__(self, url: str) -> None:
        self.engine = self._engine(url)
        _Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @staticmethod
    def _engine(url: str) -> Engine:
        if not url.startswith("sqlite"):
            return create_engine(url, pool_pre_ping=True)
        engine = create_engine(url, connect_args={"timeout": 30.0, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine

    def close(self) -> None:
        self.engine.dispose()

    def create(
        self, scope: tuple[str, str, str, str], *, read_only: bool = False, label: str = ""
    ) -> tuple[str, KeyRecord]:
        """Make a key for ``scope``; returns the key (shown once, never stored) and its record."""
        if not scope[0]:
            raise InputError("a key needs a tenant: give --tenant")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = _KeyRow(
            key_id=key_id,
            secret_sha256=_digest(secret),
            tenant=scope[0],
            user=scope[1],
            agent=scope[2],
            run=scope[3],
            read_only=read_only,
            label=label,
            created_at=datetime.now(UTC),
        )
        with self._session.begin() as session:
            session.add(row)
        return f"{KEY_PREFIX}{key_id}_{secret}", _record(row)

    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._session() as session:
            rows = session.scalars(select(_KeyRow).order_by(_KeyRow.id)).all()
            return [_record(r) for r in rows]

    def revoke(self, key_id: str) -> KeyRecord:
        """Refuse ``key_id`` from now on (revoking twice keeps the first time).

        Raises:
            NotFoundError: no key has this id.
        """
        if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
            raise InputError(
                f"a key id is 12 hex digits (the part after msk_ that `memsdk keys list` "
                f"shows), got {key_id!r}"
            )
        with self._session.begin() as session:
            session.execute(
                update(_KeyRow)
                .where(_KeyRow.key_id == key_id, _KeyRow.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = session.scalars(select(_KeyRow).where(_KeyRow.key_id == key_id)).first()
            if row is None:
                raise NotFoundError(f"no key {key_id}: `memsdk keys list` shows the key ids")
            return _record(row)

    def authenticate(self, key: str) -> KeyRecord | None:
        """The record of a valid, unrevoked ``key``; None for anything else (malformed,
        unknown, wrong secret or revoked alike, so a caller learns nothing more)."""
        match = _KEY_RE.match(key) if isinstance(key, str) else None
        if match is None:
            return None
        key_id, secret = match.groups()
        with self._session() as session:
            row = session.scalars(select(_KeyRow).where(_KeyRow.key_id == key_id)).first()
        if row is None:
            _digest(secret)  # the same work as a known id
            return None
        if not hmac.compare_digest(row.secret_sha256, _digest(secret)):
            return None
        if row.revoked_at is not None:
            return None
        return _record(row)
