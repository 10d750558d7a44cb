"""The chunk writes every insert and delete path of :class:`~memsdk.stores.sql.SQLStore`
shares, each inside the caller's transaction: new chunks with their history rows, and deletes
with theirs and their documents' counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from memsdk.stores.sql_records import NewChunk
from memsdk.stores.sql_schema import ChunkRow, DocumentRow, HistoryRow, LedgerRow, utc_now

__all__ = ["delete_rows", "held_hashes", "insert_rows"]


def held_hashes(session: Session, scope_id: int, hashes: Sequence[str]) -> set[str]:
    stmt = select(ChunkRow.content_hash).where(
        ChunkRow.scope_id == scope_id, ChunkRow.content_hash.in_(set(hashes))
    )
    return set(session.scalars(stmt))


def insert_rows(
    s: Session, scope_id: int, document_id: int | None, chunks: Sequence[NewChunk]
) -> list[int | None]:
    """:meth:`SQLStore.insert_chunks` inside the caller's transaction.

    Rows go in as one bulk INSERT ... RETURNING (batched multi-row statements, ids in the
    order given) rather than as ORM objects: on an acknowledged ingest of logs the ORM's
    per-object bookkeeping took about half of the writing thread's time."""
    taken = held_hashes(s, scope_id, [c.content_hash for c in chunks])
    now = utc_now()
    values: list[dict[str, Any]] = []
    fresh: list[bool] = []
    for c in chunks:
        fresh.append(c.content_hash not in taken)
        if not fresh[-1]:
            continue
        taken.add(c.content_hash)
        values.append(
            {
                "scope_id": scope_id,
                "document_id": document_id,
                "seq": c.seq,
                "start_byte": c.start_byte,
                "end_byte": c.end_byte,
                "text": c.text,
                "raw": c.raw,
                "context": c.context,
                "content_hash": c.content_hash,
                "meta": c.metadata,
                "embedding": np.asarray(c.embedding, dtype="<f4").tobytes(),
                "created_at": now,
                "updated_at": now,
            }
        )
    if not values:
        return [None] * len(chunks)
    stmt = insert(ChunkRow).returning(ChunkRow.id, sort_by_parameter_order=True)
    added = [int(i) for i in s.scalars(stmt, values)]
    s.execute(
        insert(HistoryRow),
        [{"chunk_id": i, "scope_id": scope_id, "event": "ADD", "created_at": now} for i in added],
    )
    if document_id is not None:
        s.execute(
            update(DocumentRow)
            .where(DocumentRow.id == document_id)
            .values(chunk_count=DocumentRow.chunk_count + len(added))
        )
    ids = iter(added)
    return [next(ids) if new else None for new in fresh]


def delete_rows(s: Session, scope_id: int, ids: Sequence[int] | None) -> list[int]:
    """:meth:`SQLStore.delete_chunks` inside the caller's transaction."""
    if ids is not None and not ids:
        return []
    # Only the columns the history needs: not the embeddings of a whole scope.
    stmt = select(ChunkRow.id, ChunkRow.text, ChunkRow.meta, ChunkRow.document_id).where(
        ChunkRow.scope_id == scope_id
    )
    if ids is not None:
        stmt = stmt.where(ChunkRow.id.in_(list(ids)))
    rows = s.execute(stmt).all()
    if not rows:
        return []
    s.add_all(
        HistoryRow(
            chunk_id=r.id,
            scope_id=scope_id,
            event="DELETE",
            old_text=r.text,
            old_meta=dict(r.meta),
        )
        for r in rows
    )
    deleted = [r.id for r in rows]
    docs = {r.document_id for r in rows if r.document_id is not None}
    for start in range(0, len(deleted), 500):
        s.execute(delete(ChunkRow).where(ChunkRow.id.in_(deleted[start : start + 500])))
    for doc_id in docs:
        left = s.scalar(select(func.count()).where(ChunkRow.document_id == doc_id))
        if left:
            s.execute(update(DocumentRow).where(DocumentRow.id == doc_id).values(chunk_count=left))
        else:
            s.execute(
                update(LedgerRow).where(LedgerRow.document_id == doc_id).values(document_id=None)
            )
            s.execute(delete(DocumentRow).where(DocumentRow.id == doc_id))
    return deleted
