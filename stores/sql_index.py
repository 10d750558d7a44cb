"""The reads the vector and text indexes make of the SQL store: ids by scope and filter, the
scope of given chunks, stored embeddings and texts, and the history events they have not
replayed yet.

A mixin of :class:`memsdk.stores.sql.SQLStore` (which provides ``reading()``), kept apart so
that the store's module holds its writes and its text search.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from memsdk.stores.sql_records import unpack_embeddings
from memsdk.stores.sql_schema import ChunkRow, HistoryRow

__all__ = ["FILTER_CANDIDATES", "IndexReads"]

# Nearest candidates of the scope (by vector or by keyword rank) checked against a filter with
# :meth:`IndexReads.passing` before the filter's ids are listed or SQL ranks with the filter:
# the first round serves filters keeping a fifth of the scope or more, the second a hundredth.
FILTER_CANDIDATES = (256, 4096)


def distinct_ids(ids: Any) -> np.ndarray:
    """The distinct ``ids``, ascending, int64. A sort and a mask: numpy 2.4's ``np.unique``
    took 0.5 s for a million ids here (its hash path), this 15 ms."""
    ordered = np.sort(np.asarray(ids, dtype=np.int64).ravel())
    return (
        ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered
    )


def _id_batches(ids: np.ndarray, batch: int) -> Iterator[list[int]]:
    """The distinct ``ids`` in ascending order, ``batch`` at a time (one IN list each)."""
    wanted = distinct_ids(ids)
    for start in range(0, len(wanted), batch):
        yield wanted[start : start + batch].tolist()


class IndexReads:
    """Reads for :class:`memsdk.stores.notepad.Notepad`'s vector and text indexes."""

    if TYPE_CHECKING:

        def reading(self) -> AbstractContextManager[Session]: ...  # SQLStore's

    def chunk_ids(self, scope_id: int, where: ColumnElement[bool] | None = None) -> np.ndarray:
        """Ids of the scope's chunks that pass ``where``, (n,) int64."""
        stmt = select(ChunkRow.id).where(ChunkRow.scope_id == scope_id)
        if where is not None:
            stmt = stmt.where(where)
        with self.reading() as s:
            return np.fromiter(s.scalars(stmt), dtype=np.int64)

    def chunk_scopes(self, ids: np.ndarray, *, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """The scope of each existing chunk among ``ids``: ``(ids (n,) int64, scope ids (n,))``.

        The first search of a memory asks this for every indexed vector; at a million it took
        24 s, now under 1 s. Three reads, the cheapest for how the ids lie:

        - most of the memory's chunks: one scan of the (scope_id) index, which holds both
          columns (0.5 s at a million chunks, against 1 s for half of them by id ranges);
        - ``batch`` ids close together: their id range;
        - sparse ids: an IN list.

        Rows are flattened into the array by ``np.fromiter``: ``np.array`` over SQLAlchemy
        rows probes each for array interfaces first, which was most of those 24 s."""
        wanted = distinct_ids(ids)
        pairs = select(ChunkRow.id, ChunkRow.scope_id)
        if len(wanted) > batch and 2 * len(wanted) >= self.chunk_count():
            found = self._id_pairs(pairs)
            found = found[np.isin(found[:, 0], wanted)]
            return found[:, 0], found[:, 1]
        parts = [np.empty((0, 2), np.int64)]
        for start in range(0, len(wanted), batch):
            part = wanted[start : start + batch]
            low, high = int(part[0]), int(part[-1])
            if high - low < 2 * len(part):  # a range reads few rows not asked for
                found = self._id_pairs(pairs.where(ChunkRow.id.between(low, high)))
                parts.append(found[np.isin(found[:, 0], part)])
            else:
                parts.append(self._id_pairs(pairs.where(ChunkRow.id.in_(part.tolist()))))
        found = np.concatenate(parts)
        return found[:, 0], found[:, 1]

    def _id_pairs(self, stmt: Select[tuple[int, int]]) -> np.ndarray:
        """A query's rows of two integers (its parameters integers too) as an (n, 2) int64
        array, read through the driver's cursor: SQLAlchemy's rows took 1.4 s of the 2.4 s
        that a million took through them."""
        parts = [np.empty(0, np.int64)]
        with self.reading() as s:
            connection = s.connection()
            sql = stmt.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
            cursor = connection.connection.dbapi_connection.cursor()
            try:
                cursor.execute(str(sql))
                while rows := cursor.fetchmany(65536):
                    parts.append(np.fromiter(chain.from_iterable(rows), np.int64, 2 * len(rows)))
            finally:
                cursor.close()
        return np.concatenate(parts).reshape(-1, 2)

    def passing(self, ids: np.ndarray, where: ColumnElement[bool]) -> set[int]:
        """Which of the chunks ``ids`` pass ``where``."""
        if len(ids) == 0:
            return set()
        stmt = select(ChunkRow.id).where(ChunkRow.id.in_(np.asarray(ids).tolist()), where)
        with self.reading() as s:
            return set(s.scalars(stmt))

    def embeddings(
        self, ids: np.ndarray | None = None, *, batch: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stored embeddings as ``(ids (n,), vectors (n, dim))`` batches in id order: of every
        chunk, or of the chunks among ``ids`` that exist; chunks whose vector is still pending
        (an empty embedding, stores/vector_backlog.py) are left out."""
        embedded = func.length(ChunkRow.embedding) > 0
        if ids is not None:
            for part in _id_batches(ids, batch):
                stmt = select(ChunkRow.id, ChunkRow.embedding).where(
                    ChunkRow.id.in_(part), embedded
                )
                with self.reading() as s:
                    rows = s.execute(stmt.order_by(ChunkRow.id)).all()
                if rows:
                    yield unpack_embeddings(rows)
            return
        last = 0
        while True:
            stmt = select(ChunkRow.id, ChunkRow.embedding).where(ChunkRow.id > last, embedded)
            with self.reading() as s:
                rows = s.execute(stmt.order_by(ChunkRow.id).limit(batch)).all()
            if not rows:
                return
            out = unpack_embeddings(rows)
            last = int(out[0][-1])
            yield out

    def chunk_texts(
        self, ids: np.ndarray | None = None, *, batch: int = 4096
    ) -> Iterator[list[tuple[int, int, str, str | None, dict[str, Any]]]]:
        """``(id, scope id, text, context, metadata)`` of every chunk, or of the chunks among
        ``ids`` that exist, in id order, ``batch`` rows at a time."""
        columns = (ChunkRow.id, ChunkRow.scope_id, ChunkRow.text, ChunkRow.context, ChunkRow.meta)
        if ids is not None:
            for part in _id_batches(ids, batch):
                with self.reading() as s:
                    rows = s.execute(select(*columns).where(ChunkRow.id.in_(part))).all()
                if rows:
                    yield [tuple(r) for r in rows]  # type: ignore[misc]
            return
        last = 0
        while True:
            stmt = select(*columns).where(ChunkRow.id > last).order_by(ChunkRow.id).limit(batch)
            with self.reading() as s:
                rows = s.execute(stmt).all()
            if not rows:
                return
            last = int(rows[-1][0])
            yield [tuple(r) for r in rows]  # type: ignore[misc]

    def chunk_count(self) -> int:
        """How many chunks the memory holds, in every scope."""
        with self.reading() as s:
            return int(s.scalar(select(func.count()).select_from(ChunkRow)) or 0)

    def max_history_id(self) -> int:
        with self.reading() as s:
            return int(s.scalar(select(func.max(HistoryRow.id))) or 0)

    def touched_since(
        self, history_id: int, *, upto: int | None = None, skip: tuple[str, ...] = ()
    ) -> tuple[int, np.ndarray]:
        """Chunks changed (added, updated, deleted, embedded) by history events after
        ``history_id`` (and up to ``upto``), other than events named in ``skip``.

        Returns:
            ``(newest event id seen, unique chunk ids (n,) int64)``.
        """
        stmt = select(HistoryRow.id, HistoryRow.chunk_id, HistoryRow.event).where(
            HistoryRow.id > history_id
        )
        if upto is not None:
            stmt = stmt.where(HistoryRow.id <= upto)
        with self.reading() as s:
            rows = s.execute(stmt).all()
        if not rows:
            return history_id, np.empty(0, np.int64)
        newest = max(r[0] for r in rows)
        touched = (r[1] for r in rows if r[2] not in skip)
        return newest, distinct_ids(np.fromiter(touched, dtype=np.int64))
