"""The records the notepad takes in and hands out: :class:`NewChunk` (a chunk to write),
:class:`ChunkRecord` and :class:`HistoryRecord` (what the public API sees), and their
conversions from the rows of stores/sql_schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, select

from memsdk.stores.sql_schema import ChunkRow, DocumentRow, HistoryRow, as_utc

__all__ = [
    "ChunkRecord",
    "HistoryRecord",
    "NewChunk",
    "chunk_record",
    "history_records",
    "record_select",
    "unpack_embeddings",
]


@dataclass(frozen=True)
class NewChunk:
    """A chunk ready to be written: text, where it came from, and its embedding."""

    seq: int
    start_byte: int
    end_byte: int
    text: str
    raw: bytes | None  # the original bytes when they are not valid UTF-8
    content_hash: str
    metadata: dict[str, Any]
    embedding: np.ndarray  # (dim,) float32
    context: str | None = None  # found by, not part of, the text (ChunkRow.context)


@dataclass(frozen=True)
class ChunkRecord:
    """A stored chunk as the public API sees it."""

    id: int
    scope_id: int
    document_id: int | None
    source: str | None
    seq: int
    start_byte: int
    end_byte: int
    text: str
    raw: bytes | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class HistoryRecord:
    id: int
    chunk_id: int
    event: str
    old_text: str | None
    new_text: str | None
    old_metadata: dict[str, Any] | None
    new_metadata: dict[str, Any] | None
    created_at: datetime


def record_select() -> Select[Any]:
    """The columns of a :class:`ChunkRecord` with its document's source, as plain rows: no
    embedding blob and no ORM identity map (a search reads ~80 candidates per query)."""
    return select(
        ChunkRow.id,
        ChunkRow.scope_id,
        ChunkRow.document_id,
        DocumentRow.source,
        ChunkRow.seq,
        ChunkRow.start_byte,
        ChunkRow.end_byte,
        ChunkRow.text,
        ChunkRow.raw,
        ChunkRow.meta,
        ChunkRow.created_at,
        ChunkRow.updated_at,
    ).outerjoin(DocumentRow, DocumentRow.id == ChunkRow.document_id)


def chunk_record(row: Any) -> ChunkRecord:
    return ChunkRecord(
        id=row.id,
        scope_id=row.scope_id,
        document_id=row.document_id,
        source=row.source,
        seq=row.seq,
        start_byte=row.start_byte,
        end_byte=row.end_byte,
        text=row.text,
        raw=row.raw,
        metadata=dict(row.meta or {}),
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
    )


def history_records(rows: Sequence[HistoryRow], current: ChunkRow | None) -> list[HistoryRecord]:
    """One chunk's history rows (oldest first) as records. ADD events are stored without text
    (it would double the database); their text is the first later event's old text, or the
    ``current`` chunk's."""
    out = []
    for i, r in enumerate(rows):
        new_text, new_meta = r.new_text, r.new_meta
        if r.event == "ADD":
            later = rows[i + 1] if i + 1 < len(rows) else None
            if later is not None:
                new_text, new_meta = later.old_text, later.old_meta
            elif current is not None:
                new_text, new_meta = current.text, dict(current.meta)
        out.append(
            HistoryRecord(
                id=r.id,
                chunk_id=r.chunk_id,
                event=r.event,
                old_text=r.old_text,
                new_text=new_text,
                old_metadata=r.old_meta,
                new_metadata=new_meta,
                created_at=as_utc(r.created_at),
            )
        )
    return out


def unpack_embeddings(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32)
    return ids, vectors
