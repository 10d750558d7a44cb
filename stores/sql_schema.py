"""The notepad's SQL schema: one ORM row class per table, and the statements ``create_all``
does not make (the full-text indexes, the metadata index, the pending-vector index); the
exact-token query that reads the full-text index is in ``stores/sql_keywords.py``.

Tables: ``scopes``, ``documents``, ``chunks`` (text, byte offsets, content hash, metadata and the
embedding, so the vector index can always be rebuilt without re-embedding), ``history``
(append-only), ``ingest_ledger`` (one row per ingested source and its outcome),
``weight_leases`` (which process may train a scope's weight memory now), ``memory_identity``
and ``owed_resets`` (scopes emptied by a delete-all whose weights and router policy are not
reset yet).

Exact-token search uses SQLite FTS5 (BM25) kept in step by triggers, and PostgreSQL full-text
search (``simple`` configuration) there. Also kept by triggers on SQLite: ``chunk_meta``, the
index metadata filters read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ADD_CONTEXT_COLUMN",
    "CHUNK_META",
    "FTS_COLUMNS",
    "FTS_TOKENIZER",
    "PENDING_VECTOR_INDEX",
    "POSTGRES_FTS",
    "POSTGRES_TSVECTOR",
    "SQLITE_FTS",
    "SQLITE_FTS_DROP",
    "SQLITE_FTS_REBUILD",
    "SQLITE_METADATA_BACKFILL",
    "SQLITE_METADATA_INDEX",
    "Base",
    "ChunkRow",
    "DocumentRow",
    "HistoryRow",
    "IdentityRow",
    "LeaseRow",
    "LedgerRow",
    "OwedResetRow",
    "ScopeRow",
    "as_utc",
    "fts_is_current",
    "utc_now",
]


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    # SQLite drops the zone on the way back; every timestamp memsdk writes is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class ScopeRow(Base):
    __tablename__ = "scopes"
    __table_args__ = (UniqueConstraint("tenant", "user", "agent", "run", name="uq_scope"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(256))
    user: Mapped[str] = mapped_column(String(256), default="")
    agent: Mapped[str] = mapped_column(String(256), default="")
    run: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class DocumentRow(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope_id: Mapped[int] = mapped_column(ForeignKey("scopes.id"), index=True)
    source: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class ChunkRow(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("scope_id", "content_hash", name="uq_chunk_content"),
        # AUTOINCREMENT: ids are never reused after a delete, because they are also FAISS ids.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope_id: Mapped[int] = mapped_column(ForeignKey("scopes.id"), index=True)
    document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    start_byte: Mapped[int] = mapped_column(BigInteger)
    end_byte: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    # Text the chunk is found by without being part of it (``add(context=...)``, such as the
    # previous turn of a chat): full-text indexed beside ``text`` at a lower weight.
    context: Mapped[str | None] = mapped_column(Text, default=None)
    content_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class HistoryRow(Base):
    __tablename__ = "history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_id: Mapped[int] = mapped_column(Integer, index=True)
    scope_id: Mapped[int] = mapped_column(Integer, index=True)
    event: Mapped[str] = mapped_column(String(16))
    old_text: Mapped[str | None] = mapped_column(Text, default=None)
    new_text: Mapped[str | None] = mapped_column(Text, default=None)
    old_meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    new_meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class LedgerRow(Base):
    __tablename__ = "ingest_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope_id: Mapped[int] = mapped_column(Integer, index=True)
    document_id: Mapped[int | None] = mapped_column(Integer, default=None)
    source: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="started")
    chunks_added: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class LeaseRow(Base):
    """A scope's weight-memory lease: only ``holder`` may train and save the scope's weights
    until ``expires_at`` (seconds since the epoch). The row of ``scope_id`` -1, which no scope
    has, is the embedding stage's lease of the whole memory (``memsdk.lease.EMBEDDING_LEASE``)."""

    __tablename__ = "weight_leases"

    scope_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[float] = mapped_column(Float)


class IdentityRow(Base):
    """The memory's identity (one row): the manifest, the index file and the weight deltas
    carry the same UUID, so files of another history are recognised."""

    __tablename__ = "memory_identity"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(64))


class OwedResetRow(Base):
    """A scope whose chunks were all deleted while its weight memory and router policy, which
    learned from them, are not reset yet. Written in the transaction that deletes the chunks,
    removed once both are reset, so a crash between the two leaves the reset owed, not lost."""

    __tablename__ = "owed_resets"

    scope_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


# Words are stemmed (FTS5's porter wrapping unicode61): "paintings" in a question matches
# "painted" in a memory. On the LoCoMo development conversations (benchmarks/README.md) it
# raised evidence recall@10 from 0.660 to 0.684 and recall@5 from 0.572 to 0.596, with no
# parameter to fit. Identifiers are unchanged: porter rewrites only runs of letters, and a
# query is tokenized the same way. PostgreSQL keeps its "simple" configuration (no stemming).
# Two columns: the chunk's text and its context (``ChunkRow.context``), ranked at
# ``CONTEXT_RANK_WEIGHT`` (stores/sql_keywords.py).
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"
FTS_COLUMNS = "text, context"
_FTS_TRIGGERS = ("chunks_fts_insert", "chunks_fts_delete", "chunks_fts_update")
_FTS_ADD = "INSERT INTO chunks_fts(rowid, text, context) VALUES (new.id, new.text, new.context)"
_FTS_REMOVE = (
    "INSERT INTO chunks_fts(chunks_fts, rowid, text, context) "
    "VALUES ('delete', old.id, old.text, old.context)"
)
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5("
    f"{FTS_COLUMNS}, content='chunks', content_rowid='id', tokenize='{FTS_TOKENIZER}')",
    f"CREATE TRIGGER IF NOT EXISTS {_FTS_TRIGGERS[0]} AFTER INSERT ON chunks BEGIN {_FTS_ADD}; END",
    f"CREATE TRIGGER IF NOT EXISTS {_FTS_TRIGGERS[1]} AFTER DELETE ON chunks BEGIN "
    f"{_FTS_REMOVE}; END",
    f"CREATE TRIGGER IF NOT EXISTS {_FTS_TRIGGERS[2]} AFTER UPDATE OF text, context ON chunks "
    f"BEGIN {_FTS_REMOVE}; {_FTS_ADD}; END",
]
# A memory written before stemming or before the context column has its full-text index made
# again, once, from the chunks it indexes (an external-content table: 'rebuild' reads them).
# The old triggers go with the old table, since they name its columns.
SQLITE_FTS_DROP = [
    "DROP TABLE chunks_fts",
    *(f"DROP TRIGGER IF EXISTS {name}" for name in _FTS_TRIGGERS),
]
SQLITE_FTS_REBUILD = "INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')"


def fts_is_current(definition: str) -> bool:
    """Whether a stored ``chunks_fts`` definition (``sqlite_master.sql``) is today's."""
    return FTS_TOKENIZER in definition and f"fts5({FTS_COLUMNS}," in definition


# Adds the context column to a chunks table made before it (both dialects; nullable, so old
# rows need no rewrite).
ADD_CONTEXT_COLUMN = "ALTER TABLE chunks ADD COLUMN context TEXT"
# Metadata filters on SQLite (memsdk/filters.py): a comparison or in-list on one top-level key
# reads this index instead of running json_extract over every chunk of the scope, which reads
# every row of the table (about 50 ms per 100k chunks, whatever the filter keeps). One row per
# scalar top-level value (json_each's type names; null, arrays and objects are not indexed),
# kept by triggers. The primary key serves the filters (key, then value) and the deletes, which
# find a chunk's rows from its old metadata, so no second index costs the writes.
CHUNK_META = "chunk_meta"
_INDEXED = "FROM json_each({}.metadata) WHERE type IN ('text', 'integer', 'real', 'true', 'false')"
_META_INSERT = (
    "INSERT INTO chunk_meta (key, value, type, chunk_id) SELECT key, value, type, new.id "
    + _INDEXED.format("new")
)
_META_DELETE = (
    "DELETE FROM chunk_meta WHERE (key, value, chunk_id) IN (SELECT key, value, old.id "
    + _INDEXED.format("old")
    + ")"
)
SQLITE_METADATA_INDEX = [
    "CREATE TABLE IF NOT EXISTS chunk_meta (key TEXT NOT NULL, value NOT NULL, "
    "type TEXT NOT NULL, chunk_id INTEGER NOT NULL, PRIMARY KEY (key, value, chunk_id)) "
    "WITHOUT ROWID",
    f"CREATE TRIGGER IF NOT EXISTS chunk_meta_insert AFTER INSERT ON chunks BEGIN {_META_INSERT}; "
    "END",
    f"CREATE TRIGGER IF NOT EXISTS chunk_meta_delete AFTER DELETE ON chunks BEGIN {_META_DELETE}; "
    "END",
    "CREATE TRIGGER IF NOT EXISTS chunk_meta_update AFTER UPDATE OF metadata ON chunks BEGIN "
    f"{_META_DELETE}; {_META_INSERT}; END",
]
# Fills the index from the chunks written before it existed: run once, in the transaction that
# creates the table (stores/sql.py).
SQLITE_METADATA_BACKFILL = (
    "INSERT INTO chunk_meta (key, value, type, chunk_id) SELECT j.key, j.value, j.type, c.id "
    "FROM chunks AS c, json_each(c.metadata) AS j "
    "WHERE j.type IN ('text', 'integer', 'real', 'true', 'false')"
)
# PostgreSQL: one GIN index over the text (weight A) and the context (weight B); the keyword
# query (stores/sql_keywords.py) repeats this expression so the planner uses the index (a
# bitmap index scan, checked with EXPLAIN). A memory made before the context column has its old
# text-only index dropped and this one built on its first open, which reads every chunk once.
# ``{t}`` is the table prefix: empty in the index, "chunks." in a query.
POSTGRES_TSVECTOR = (
    "setweight(to_tsvector('simple', {t}text), 'A') || "
    "setweight(to_tsvector('simple', coalesce({t}context, '')), 'B')"
)
POSTGRES_FTS = [
    "DROP INDEX IF EXISTS ix_chunks_tsv",
    "CREATE INDEX IF NOT EXISTS ix_chunks_tsv_context ON chunks USING gin "
    f"(({POSTGRES_TSVECTOR.format(t='')}))",
]
# Chunks whose vector is still pending (stores/vector_backlog.py): a partial index holding only
# them, made on every open, so databases written before the embedding stage get it too.
PENDING_VECTOR_INDEX = (
    "CREATE INDEX IF NOT EXISTS ix_chunks_vector_pending ON chunks (scope_id, id) "
    "WHERE length(embedding) = 0"
)
