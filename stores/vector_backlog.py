"""Chunks stored before their vector: the SQL side of the background embedding stage.

A chunk written by a bulk ingest is committed with its text, its full-text entry and an *empty*
embedding (zero bytes), so exact search finds it at once; the embedding stage
(:mod:`memsdk.embedding_stage`) later fills the vector in. The empty value is the per-chunk
"vector pending" flag. It needs no new column, so databases written before the stage open
unchanged (all of their chunks hold vectors), and a partial index over the pending chunks
keeps finding them cheap however large the scope.

A vector is stored only while its chunk still exists, still holds the text the vector was
computed from (same content hash) and is still pending, checked in the transaction that
stores it, with the rows locked: a chunk deleted or re-written meanwhile never gets a late
vector. Each stored vector writes an ``EMBED`` history event in the same transaction, so every
process's FAISS index picks the vector up the way it follows any other change
(:meth:`Notepad.sync`); ``EMBED`` events are bookkeeping and not part of a memory's public
history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, literal_column, select, update

from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_schema import ChunkRow, HistoryRow

__all__ = [
    "EMBED_EVENT",
    "PENDING_VECTOR",
    "Backlog",
    "PendingChunk",
    "backlog",
    "chunks_after",
    "pending_among",
    "pending_chunks",
    "store_vectors",
]

PENDING_VECTOR = b""  # the embedding of a chunk whose vector is not computed yet
EMBED_EVENT = "EMBED"
# stores/sql_schema.py makes a partial index over ``length(embedding) = 0`` (only pending chunks are
# in it), so the stage's scans and the lag figures read nothing else; length() of a BLOB or a
# bytea works in SQLite and PostgreSQL alike.
# A literal 0, not a bound parameter: SQLite uses a partial index only for the same term.
_pending = func.length(ChunkRow.embedding) == literal_column("0")
_size = ChunkRow.end_byte - ChunkRow.start_byte


@dataclass(frozen=True)
class PendingChunk:
    id: int
    text: str
    content_hash: str


@dataclass(frozen=True)
class Backlog:
    """What a stage has still to do for one scope: chunks and their text bytes."""

    chunks: int = 0
    bytes: int = 0


def pending_chunks(sql: SQLStore, scope_id: int, *, limit: int) -> list[PendingChunk]:
    """The scope's oldest chunks without a vector, in id order, at most ``limit``."""
    with sql.reading() as s:
        rows = s.execute(
            select(ChunkRow.id, ChunkRow.text, ChunkRow.content_hash)
            .where(ChunkRow.scope_id == scope_id, _pending)
            .order_by(ChunkRow.id)
            .limit(limit)
        ).all()
    return [PendingChunk(int(r[0]), r[1], r[2]) for r in rows]


def backlog(sql: SQLStore, scope_id: int | None = None) -> dict[int, Backlog]:
    """Per scope id (only ``scope_id`` when given): its chunks without a vector. Scopes
    without any are absent."""
    stmt = select(ChunkRow.scope_id, func.count(), func.sum(_size)).where(_pending)
    if scope_id is not None:
        stmt = stmt.where(ChunkRow.scope_id == scope_id)
    with sql.reading() as s:
        rows = s.execute(stmt.group_by(ChunkRow.scope_id)).all()
    return {int(r[0]): Backlog(int(r[1]), int(r[2] or 0)) for r in rows}


def pending_count(sql: SQLStore, scope_id: int, *, limit: int) -> int:
    """How many of the scope's chunks have no vector yet, counting at most ``limit`` (the
    partial index's entries only: a search asks this, and counting 970k pending chunks with
    their sizes took 0.46 s)."""
    stmt = select(ChunkRow.id).where(ChunkRow.scope_id == scope_id, _pending).limit(limit)
    with sql.reading() as s:
        return int(s.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())


def pending_among(sql: SQLStore, scope_id: int, ids: Sequence[int]) -> set[int]:
    """Which of the scope's chunks ``ids`` have no vector yet."""
    if not ids:
        return set()
    with sql.reading() as s:
        return set(
            s.scalars(
                select(ChunkRow.id).where(
                    ChunkRow.scope_id == scope_id, ChunkRow.id.in_(list(ids)), _pending
                )
            )
        )


def chunks_after(sql: SQLStore, scope_id: int, after_id: int) -> Backlog:
    """The scope's chunks with id > ``after_id`` (what the weight memory has not absorbed)."""
    with sql.reading() as s:
        count, size = s.execute(
            select(func.count(), func.sum(_size)).where(
                ChunkRow.scope_id == scope_id, ChunkRow.id > after_id
            )
        ).one()
    return Backlog(int(count or 0), int(size or 0))


def store_vectors(
    sql: SQLStore, scope_id: int, chunks: Sequence[PendingChunk], vectors: np.ndarray
) -> int:
    """Store ``vectors`` (n, dim) for ``chunks`` in one transaction, each only if its chunk
    still exists in the scope, still holds the same content and is still pending; writes an
    EMBED history event per vector stored. Returns how many were stored.

    The chunks that qualify are read (and locked, on PostgreSQL) first, and their vectors then
    written in one bulk UPDATE by primary key: a conditional UPDATE per chunk took 15 ms a
    batch of 64, 6% of the embedding stage's time on logs."""
    with sql.writing() as s:
        current = dict(
            s.execute(
                select(ChunkRow.id, ChunkRow.content_hash)
                .where(
                    ChunkRow.id.in_([c.id for c in chunks]),
                    ChunkRow.scope_id == scope_id,
                    _pending,
                )
                .with_for_update()
            ).all()
        )
        rows = [
            {"id": c.id, "embedding": np.asarray(v, dtype="<f4").tobytes()}
            for c, v in zip(chunks, vectors, strict=True)
            if current.get(c.id) == c.content_hash
        ]
        if rows:
            s.execute(update(ChunkRow), rows)
        s.add_all(HistoryRow(chunk_id=r["id"], scope_id=scope_id, event=EMBED_EVENT) for r in rows)
    return len(rows)
