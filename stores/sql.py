"""SQL records of the notepad: the source of truth of a memory.

:class:`SQLStore` reads and writes them. The tables and their full-text index are in
stores/sql_schema.py, the records the store hands out in stores/sql_records.py, and how it
connects (and names a damaged or full database) in stores/sql_connection.py.

SQLite (the default) runs in WAL mode with a busy timeout; write transactions start with
``BEGIN IMMEDIATE`` so two writers queue on the lock instead of failing with "database is
locked" when a read transaction tries to upgrade. On PostgreSQL every write transaction first
takes one advisory lock, so writers queue the same way and history ids commit in order.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import case, create_engine, delete, func, inspect, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from memsdk.errors import DuplicateError, InputError, NotFoundError, StorageError
from memsdk.stores.sql_connection import (
    WRITE_LOCK_KEY,
    corruption_named,
    out_of_storage,
    sqlite_engine,
)
from memsdk.stores.sql_index import IndexReads
from memsdk.stores.sql_keywords import (
    CONTEXT_RANK_WEIGHT,
    MIN_COMMON_DOCS,
    PROBE_ROWS,
    DocCounts,
    common_cutoff,
    fts_match_count,
    fts_rows,
    keyword_select,
    query_phrases,
    selecting_match,
    split_common,
)
from memsdk.stores.sql_records import (
    ChunkRecord,
    HistoryRecord,
    NewChunk,
    chunk_record,
    history_records,
    record_select,
)
from memsdk.stores.sql_schema import (
    ADD_CONTEXT_COLUMN,
    CHUNK_META,
    FTS_COLUMNS,
    PENDING_VECTOR_INDEX,
    POSTGRES_FTS,
    SQLITE_FTS,
    SQLITE_FTS_DROP,
    SQLITE_FTS_REBUILD,
    SQLITE_METADATA_BACKFILL,
    SQLITE_METADATA_INDEX,
    Base,
    ChunkRow,
    DocumentRow,
    HistoryRow,
    IdentityRow,
    LeaseRow,
    LedgerRow,
    OwedResetRow,
    ScopeRow,
    fts_is_current,
    utc_now,
)
from memsdk.stores.sql_writes import delete_rows, held_hashes, insert_rows

__all__ = [
    "ChunkRecord",
    "ChunkRow",
    "DocumentRow",
    "HistoryRecord",
    "HistoryRow",
    "IdentityRow",
    "LeaseRow",
    "LedgerRow",
    "NewChunk",
    "OwedResetRow",
    "SQLStore",
    "ScopeKey",
    "ScopeRow",
]

ScopeKey = tuple[str, str, str, str]  # (tenant, user, agent, run); "" where unset


logger = logging.getLogger(__name__)


class SQLStore(IndexReads):
    """SQLAlchemy access to one memory's records.

    Args:
        url: any SQLAlchemy URL; ``sqlite:///path/memory.db`` by default.
        busy_timeout_s: how long a SQLite writer waits for the lock before failing.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock = threading.Lock()
        self._doc_counts = DocCounts()  # the common-word split's counts (sql_keywords)
        if self.is_sqlite:
            args = {"timeout": busy_timeout_s, "check_same_thread": False}
            self._read_engine = sqlite_engine(url, args, begin="BEGIN", busy=busy_timeout_s)
            self._write_engine = sqlite_engine(
                url, args, begin="BEGIN IMMEDIATE", busy=busy_timeout_s
            )
        else:
            self._read_engine = self._write_engine = create_engine(url, pool_pre_ping=True)
        self.dialect = self._read_engine.dialect.name
        # Chunk ids are INTEGER: 64 bits on SQLite, 32 on PostgreSQL, whose driver refuses a
        # larger id even in a lookup; an id the column cannot hold belongs to no chunk.
        bits = 63 if self.is_sqlite else 31
        self._id_bound = 2**bits
        self._read = sessionmaker(self._read_engine, expire_on_commit=False)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    def _holdable(self, chunk_id: int) -> bool:
        """Whether the id column can hold ``chunk_id`` (see ``_id_bound``)."""
        return -self._id_bound <= chunk_id < self._id_bound

    def create_schema(self) -> None:
        """Create the tables (and full-text index) that do not exist yet.

        Raises:
            DatabaseCorruptedError: the SQLite file is damaged.
        """
        with corruption_named(self.url):
            Base.metadata.create_all(self._write_engine)
            ddl = [*(SQLITE_FTS if self.is_sqlite else POSTGRES_FTS), PENDING_VECTOR_INDEX]
            if self._write_engine.dialect.name in ("sqlite", "postgresql"):
                with self._write_engine.begin() as conn:
                    # Checked inside the write transaction, so of two processes opening a
                    # memory written before the metadata index, one fills it, once.
                    fill_meta = (
                        self.is_sqlite
                        and not conn.exec_driver_sql(
                            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                            (CHUNK_META,),
                        ).first()
                    )
                    fts = (
                        conn.exec_driver_sql(
                            "SELECT sql FROM sqlite_master WHERE name = 'chunks_fts'"
                        ).scalar()
                        if self.is_sqlite
                        else None
                    )
                    if "context" not in {c["name"] for c in inspect(conn).get_columns("chunks")}:
                        conn.exec_driver_sql(ADD_CONTEXT_COLUMN)
                    restem = fts is not None and not fts_is_current(fts)
                    if restem:
                        logger.info("rebuilding the full-text index (once): %s", FTS_COLUMNS)
                        for statement in SQLITE_FTS_DROP:
                            conn.exec_driver_sql(statement)
                    for statement in ddl:
                        conn.exec_driver_sql(statement)
                    if restem:
                        conn.exec_driver_sql(SQLITE_FTS_REBUILD)
                    if self.is_sqlite:
                        for statement in SQLITE_METADATA_INDEX:
                            conn.exec_driver_sql(statement)
                    if fill_meta:
                        conn.exec_driver_sql(SQLITE_METADATA_BACKFILL)

    def close(self) -> None:
        self._read_engine.dispose()
        self._write_engine.dispose()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A read transaction.

        Raises:
            DatabaseCorruptedError: the SQLite file is damaged.
        """
        with corruption_named(self.url), self._read() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction, committed when the block ends, rolled back on error.

        Raises:
            StorageError: the database cannot grow (disk full) or is read-only.
            DatabaseCorruptedError: the SQLite file is damaged.
        """
        try:
            with (
                corruption_named(self.url),
                self._write_lock,
                self._write() as session,
                session.begin(),
            ):
                if self.dialect == "postgresql":
                    # One writer at a time, as SQLite's BEGIN IMMEDIATE: history ids then
                    # commit in the order they are drawn, so an index that has caught up to
                    # event N never misses an event below N committed later.
                    session.execute(select(func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))
                yield session
        except OperationalError as exc:
            if not out_of_storage(exc):
                raise
            raise StorageError(
                errno.ENOSPC,
                f"the database refused a write ({exc.orig}): the transaction was rolled back "
                "and what was committed before is kept; free space (or make the database "
                "writable) and run the call again",
            ) from exc

    # ---- identity ----------------------------------------------------------------------------

    def identity(self) -> str | None:
        """The memory's identity (a UUID, hex) as the database records it; None when it records
        none (a database made before identities, or a new, removed or emptied one)."""
        with self.reading() as s:
            row = s.get(IdentityRow, "memory_id")
            return None if row is None else row.value

    def adopt_identity(self, memory_id: str) -> str:
        """Record ``memory_id`` as the memory's identity unless one is recorded; returns the
        recorded one (another process may have recorded its own first)."""
        try:
            with self.writing() as s:
                row = s.get(IdentityRow, "memory_id")
                if row is not None:
                    return row.value
                s.add(IdentityRow(key="memory_id", value=memory_id))
                return memory_id
        except IntegrityError:
            found = self.identity()
            assert found is not None
            return found

    # ---- scopes ------------------------------------------------------------------------------

    def find_scope(self, key: ScopeKey) -> int | None:
        tenant, user, agent, run = key
        with self.reading() as s:
            return s.scalar(
                select(ScopeRow.id).where(
                    ScopeRow.tenant == tenant,
                    ScopeRow.user == user,
                    ScopeRow.agent == agent,
                    ScopeRow.run == run,
                )
            )

    def ensure_scope(self, key: ScopeKey, *, max_scopes: int | None = None) -> int:
        """The scope's id, creating the scope if it is new.

        Raises:
            InputError: creating it would make more than ``max_scopes`` scopes.
        """
        found = self.find_scope(key)
        if found is not None:
            return found
        tenant, user, agent, run = key
        try:
            with self.writing() as s:
                if max_scopes is not None:
                    count = s.scalar(select(func.count()).select_from(ScopeRow))
                    if count >= max_scopes:
                        raise InputError(
                            f"the memory holds {count} scopes, the most max_scopes={max_scopes} "
                            "allows: write to an existing scope, or raise MemoryConfig.max_scopes"
                        )
                row = ScopeRow(tenant=tenant, user=user, agent=agent, run=run)
                s.add(row)
                s.flush()
                return row.id
        except IntegrityError:  # another writer created it first
            found = self.find_scope(key)
            assert found is not None
            return found

    def scopes(self) -> list[tuple[int, ScopeKey]]:
        with self.reading() as s:
            rows = s.execute(select(ScopeRow).order_by(ScopeRow.id)).scalars()
            return [(r.id, (r.tenant, r.user, r.agent, r.run)) for r in rows]

    # ---- documents and the ledger ------------------------------------------------------------

    def start_document(self, scope_id: int, source: str, metadata: dict[str, Any]) -> int:
        """Record that ingestion of ``source`` began; returns the document id."""
        with self.writing() as s:
            doc = DocumentRow(scope_id=scope_id, source=source, meta=metadata)
            s.add(doc)
            s.flush()
            s.add(LedgerRow(scope_id=scope_id, document_id=doc.id, source=source))
            return doc.id

    def finish_document(
        self,
        document_id: int,
        *,
        size_bytes: int,
        duplicates: int,
        content_hash: str | None = None,
        failed: bool = False,
    ) -> int:
        """Close a document's ingestion; a document that added no chunk is removed.

        ``failed``: the stream broke off; the ledger row says so, the chunks committed before
        stay with their document, and the document keeps no content hash (it is incomplete).

        Returns:
            the number of chunks the document holds.
        """
        with self.writing() as s:
            doc = s.get(DocumentRow, document_id)
            if doc is None:  # delete_all (or delete of its last chunk) ran during the ingest
                raise NotFoundError(
                    f"document {document_id} was deleted while it was being ingested (a "
                    "delete_all of its scope ran at the same time): ingest it again to keep it"
                )
            count = doc.chunk_count
            s.execute(
                update(LedgerRow)
                .where(LedgerRow.document_id == document_id)
                .values(
                    status="failed" if failed else "committed",
                    chunks_added=count,
                    duplicates=duplicates,
                    bytes_read=size_bytes,
                    finished_at=utc_now(),
                    document_id=document_id if count else None,
                )
            )
            if count:
                doc.size_bytes = size_bytes
                doc.content_hash = None if failed else content_hash
            else:
                s.delete(doc)
            return count

    # ---- chunks ------------------------------------------------------------------------------

    def existing_hashes(self, scope_id: int, hashes: Sequence[str]) -> set[str]:
        """Which of ``hashes`` the scope's chunks already hold."""
        if not hashes:
            return set()
        with self.reading() as s:
            return held_hashes(s, scope_id, hashes)

    def insert_chunks(
        self, scope_id: int, document_id: int | None, chunks: Sequence[NewChunk]
    ) -> list[int | None]:
        """Insert chunks in one transaction, with an ADD history event each.

        A chunk whose content the scope already holds (written meanwhile by another writer) is
        skipped. Returns the new ids in input order, None for a skipped chunk.
        """
        with self.writing() as s:
            return insert_rows(s, scope_id, document_id, chunks)

    def replace_chunks(
        self,
        scope_id: int,
        old_ids: Sequence[int],
        source: str,
        metadata: dict[str, Any],
        chunks: Sequence[NewChunk],
    ) -> list[int]:
        """Delete the scope's chunks among ``old_ids`` and store ``chunks`` as one new
        document, in one transaction: a refused write (a duplicate, a full disk) leaves the
        old chunks in place, and no reader sees the scope without either.

        Returns:
            the new chunk ids, in input order.

        Raises:
            DuplicateError: a chunk repeats content the scope keeps (outside ``old_ids``) or
                another chunk of ``chunks``; nothing was changed.
        """
        old_ids = [i for i in old_ids if self._holdable(i)]
        with self.writing() as s:
            delete_rows(s, scope_id, old_ids)
            doc = DocumentRow(scope_id=scope_id, source=source, meta=metadata)
            s.add(doc)
            s.flush()
            ids = insert_rows(s, scope_id, doc.id, chunks)
            if None in ids or not ids:
                raise DuplicateError(
                    "the text repeats content this scope already holds (memsdk keeps one copy "
                    "of identical content per scope): nothing was changed; search for it, or "
                    "store a text that differs"
                )
            doc.size_bytes = sum(c.end_byte - c.start_byte for c in chunks)
            s.add(
                LedgerRow(
                    scope_id=scope_id,
                    document_id=doc.id,
                    source=source,
                    status="committed",
                    chunks_added=len(ids),
                    bytes_read=doc.size_bytes,
                    finished_at=utc_now(),
                )
            )
            return [i for i in ids if i is not None]

    def keyword_search(self, scope_id: int, query: str, **options: Any) -> list[tuple[int, float]]:
        """:meth:`keyword_ranking`'s rows alone (the same arguments).

        Returns:
            ``[(chunk_id, score)]``, best first; higher scores are better.
        """
        return self.keyword_ranking(scope_id, query, **options)[0]

    def keyword_ranking(
        self,
        scope_id: int,
        query: str,
        *,
        limit: int,
        where: ColumnElement[bool] | None = None,
        probe: ColumnElement[bool] | None = None,
        context_weight: float = CONTEXT_RANK_WEIGHT,
    ) -> tuple[list[tuple[int, float]], list[list[str]]]:
        """Exact-token search (BM25 on SQLite FTS5, ts_rank on PostgreSQL) inside one scope.

        The scope and ``where`` are part of the same SQL query, applied before ranking. On
        SQLite, common words only add to the rank of the rows rarer phrases select
        (:meth:`keyword_phrases`). ``probe`` is ``where`` compiled to check given rows
        (``compile_filters(..., correlated=True)``): used when the query's selecting phrases
        match few chunks (``PROBE_ROWS``), where listing every chunk a broad filter keeps would
        cost more than the ranking (170 ms for 610k chunks). A word of a chunk's context
        counts ``context_weight`` as much as one of its text (0: the context is not searched).

        Returns:
            ``(rows, selecting)``: ``[(chunk_id, score)]``, best first, higher scores better;
            and the phrases (``query_phrases`` words) that selected the rows: the ranking
            holds the best ``limit`` chunks of the scope holding any of them.
        """
        with self.reading() as s:
            common = self._common_words(s, query)
            check = self._filter_form(s, query, common, where, probe)
            ranked = functools.partial(
                self._keyword_rows, s, scope_id, query, limit=limit, weight=context_weight
            )
            rows = ranked(common, where=check)
            if not rows and common:
                # Only common words hold a match in this scope (the counts are the whole
                # index's): rank by every word rather than return nothing.
                common = []
                rows = ranked(common, where=self._filter_form(s, query, common, where, probe))
            return rows, [p for p in query_phrases(query) if p not in common]

    def _filter_form(
        self,
        s: Session,
        query: str,
        common: list[list[str]],
        where: ColumnElement[bool] | None,
        probe: ColumnElement[bool] | None,
    ) -> ColumnElement[bool] | None:
        """``probe`` when the rows the query selects are few enough to check one by one,
        else ``where``."""
        if where is None or probe is None or not self.is_sqlite:
            return where
        match = selecting_match(query, common)
        if match is None or fts_match_count(s, match, PROBE_ROWS + 1) > PROBE_ROWS:
            return where
        return probe

    def _keyword_rows(
        self,
        s: Session,
        scope_id: int,
        query: str,
        common: list[list[str]],
        *,
        limit: int,
        where: ColumnElement[bool] | None,
        weight: float,
    ) -> list[tuple[int, float]]:
        found = keyword_select(self.dialect, query, scoring_only=common, context_weight=weight)
        if found is None:
            return []
        stmt, sign = found
        stmt = stmt.where(ChunkRow.scope_id == scope_id).limit(limit)
        if where is not None:
            stmt = stmt.where(where)
        return [(int(i), sign * float(r)) for i, r in s.execute(stmt)]

    def _common_words(self, s: Session, query: str) -> list[list[str]]:
        """The words of ``query`` too common to select rows (``split_common``); none on
        PostgreSQL, where every phrase selects."""
        phrases = query_phrases(query)
        if not self.is_sqlite or not phrases:
            return []
        indexed = fts_rows(s)
        if indexed <= MIN_COMMON_DOCS:
            return []  # no word can be held by more chunks than there are: skip the counts
        doc_count = functools.partial(self._doc_counts.count, s, indexed=indexed)
        return split_common(phrases, doc_count, common_cutoff(indexed))[1]

    def keyword_phrases(self, query: str) -> tuple[list[list[str]], list[list[str]]]:
        """How :meth:`keyword_search` reads ``query`` now: ``(selecting, scoring_only)``, the
        phrases whose rows it ranks and the common words that only add to their scores
        (``stores.sql_keywords.COMMON_SHARE``). When no selecting phrase matches in the scope,
        every phrase selects."""
        with self.reading() as s:
            common = self._common_words(s, query)
        return [p for p in query_phrases(query) if p not in common], common

    def get_chunks(self, scope_id: int, ids: Sequence[int]) -> dict[int, ChunkRecord]:
        """The scope's chunks among ``ids``; ids of other scopes are simply absent."""
        ids = [i for i in ids if self._holdable(i)]
        if not ids:
            return {}
        stmt = record_select().where(ChunkRow.scope_id == scope_id, ChunkRow.id.in_(list(ids)))
        with self.reading() as s:
            return {row.id: chunk_record(row) for row in s.execute(stmt)}

    def list_chunks(
        self,
        scope_id: int,
        *,
        where: ColumnElement[bool] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ChunkRecord]:
        stmt = (
            record_select()
            .where(ChunkRow.scope_id == scope_id)
            .order_by(ChunkRow.id)
            .offset(offset)
        )
        if where is not None:
            stmt = stmt.where(where)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.reading() as s:
            return [chunk_record(row) for row in s.execute(stmt)]

    def update_chunk(
        self,
        scope_id: int,
        chunk_id: int,
        *,
        text_value: str | None,
        raw: bytes | None = None,
        content_hash: str | None,
        embedding: np.ndarray | None,
        metadata: dict[str, Any] | None,
    ) -> bool:
        """Change a chunk's text (with its exact bytes when the text cannot hold them, its hash
        and embedding) and/or metadata; records UPDATE. A new text drops the context the old
        one was added with.

        Returns:
            False when the scope holds no chunk ``chunk_id``.

        Raises:
            DuplicateError: the new text equals another chunk of the scope.
        """
        if not self._holdable(chunk_id):
            return False
        with self.writing() as s:
            row = s.scalar(
                select(ChunkRow).where(ChunkRow.id == chunk_id, ChunkRow.scope_id == scope_id)
            )
            if row is None:
                return False
            old_text, old_meta = row.text, dict(row.meta)
            if text_value is not None and content_hash != row.content_hash:
                other = s.scalar(
                    select(ChunkRow.id).where(
                        ChunkRow.scope_id == scope_id, ChunkRow.content_hash == content_hash
                    )
                )
                if other is not None:
                    raise DuplicateError(
                        f"memory {other} of this scope already holds this exact text: "
                        f"delete memory {chunk_id} instead, or update memory {other}"
                    )
                row.text, row.raw, row.context = text_value, raw, None
                row.content_hash = content_hash  # type: ignore[assignment]
                row.embedding = np.asarray(embedding, dtype="<f4").tobytes()
            if metadata is not None:
                row.meta = metadata
            row.updated_at = utc_now()
            s.add(
                HistoryRow(
                    chunk_id=chunk_id,
                    scope_id=scope_id,
                    event="UPDATE",
                    old_text=old_text,
                    new_text=row.text,
                    old_meta=old_meta,
                    new_meta=dict(row.meta),
                )
            )
            return True

    def delete_chunks(self, scope_id: int, ids: Sequence[int] | None = None) -> list[int]:
        """Delete the scope's chunks among ``ids`` (all of them when None); records DELETE.

        Documents left without chunks are removed too. Returns the deleted ids.
        """
        if ids is not None:
            ids = [i for i in ids if self._holdable(i)]
            if not ids:
                return []
        with self.writing() as s:
            return delete_rows(s, scope_id, ids)

    def delete_scope(self, scope_id: int) -> list[int]:
        """Delete every chunk of the scope and, in the same transaction, record that its
        weight memory and router policy owe a reset (:meth:`owed_resets`). Returns the
        deleted ids."""
        with self.writing() as s:
            deleted = delete_rows(s, scope_id, None)
            if s.get(OwedResetRow, scope_id) is None:
                s.add(OwedResetRow(scope_id=scope_id))
            return deleted

    def owed_resets(self) -> list[int]:
        """Scopes whose weight memory and router policy still owe the reset of a delete-all."""
        with self.reading() as s:
            return list(s.scalars(select(OwedResetRow.scope_id).order_by(OwedResetRow.scope_id)))

    def settle_reset(self, scope_id: int) -> None:
        """The scope's owed reset is done."""
        with self.writing() as s:
            s.execute(delete(OwedResetRow).where(OwedResetRow.scope_id == scope_id))

    def history(self, scope_id: int, chunk_id: int) -> list[HistoryRecord]:
        """Events of one chunk, oldest first. ADD events are stored without text (it would
        double the database); their text is the first later event's old text, or the current."""
        if not self._holdable(chunk_id):
            return []
        with self.reading() as s:
            rows = list(
                s.scalars(
                    select(HistoryRow)
                    .where(
                        HistoryRow.chunk_id == chunk_id,
                        HistoryRow.scope_id == scope_id,
                        HistoryRow.event != "EMBED",  # bookkeeping of the embedding stage
                    )
                    .order_by(HistoryRow.id)
                )
            )
            current = s.scalar(
                select(ChunkRow).where(ChunkRow.id == chunk_id, ChunkRow.scope_id == scope_id)
            )
        return history_records(rows, current)

    def chunk_bytes_after(
        self, scope_id: int, after_id: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """The scope's chunks with id > ``after_id`` in id order (ingest order): (id, exact
        bytes), at most ``limit``. The weight memory consolidates from this."""
        with self.reading() as s:
            rows = s.execute(
                select(ChunkRow.id, ChunkRow.text, ChunkRow.raw)
                .where(ChunkRow.scope_id == scope_id, ChunkRow.id > after_id)
                .order_by(ChunkRow.id)
                .limit(limit)
            ).all()
        return [(r[0], r[2] if r[2] is not None else r[1].encode("utf-8")) for r in rows]

    def chunk_sources(self, scope_id: int, first_id: int, last_id: int) -> dict[int, str]:
        """Per chunk id of the scope from ``first_id`` to ``last_id``: its document's source
        (``""`` for a chunk without a document)."""
        with self.reading() as s:
            rows = s.execute(
                select(ChunkRow.id, DocumentRow.source)
                .join(DocumentRow, DocumentRow.id == ChunkRow.document_id, isouter=True)
                .where(
                    ChunkRow.scope_id == scope_id,
                    ChunkRow.id >= first_id,
                    ChunkRow.id <= last_id,
                )
            ).all()
        return {int(r[0]): r[1] or "" for r in rows}

    def newest_chunk_ids(self) -> dict[int, int]:
        """Per scope id: the largest chunk id (scopes without chunks are absent)."""
        with self.reading() as s:
            rows = s.execute(
                select(ChunkRow.scope_id, func.max(ChunkRow.id)).group_by(ChunkRow.scope_id)
            ).all()
        return {int(r[0]): int(r[1]) for r in rows}

    def newest_chunk_id_ever(self) -> int:
        """The largest chunk id this database has given, deleted chunks included (every chunk
        has an ADD event in the history, which is never deleted); 0 when it gave none."""
        with self.reading() as s:
            in_history = s.scalar(select(func.max(HistoryRow.chunk_id)))
            in_chunks = s.scalar(select(func.max(ChunkRow.id)))
        return max(int(in_history or 0), int(in_chunks or 0))

    def bytes_after(self, scope_id: int, after_id: int) -> tuple[int, int]:
        """The scope's text bytes: (all of them, those in chunks with id > ``after_id``)."""
        size = ChunkRow.end_byte - ChunkRow.start_byte
        with self.reading() as s:
            total, after = s.execute(
                select(
                    func.sum(size), func.sum(case((ChunkRow.id > after_id, size), else_=0))
                ).where(ChunkRow.scope_id == scope_id)
            ).one()
        return int(total or 0), int(after or 0)

    def all_chunk_ids(self) -> np.ndarray:
        with self.reading() as s:
            return np.fromiter(s.scalars(select(ChunkRow.id)), dtype=np.int64)

    def scope_counts(self) -> dict[int, tuple[int, int, int]]:
        """Per scope id: (documents, chunks, text bytes)."""
        with self.reading() as s:
            chunks = {
                sid: (n, int(b or 0))
                for sid, n, b in s.execute(
                    select(
                        ChunkRow.scope_id,
                        func.count(),
                        func.sum(ChunkRow.end_byte - ChunkRow.start_byte),
                    ).group_by(ChunkRow.scope_id)
                )
            }
            # A document that holds no chunk is one whose ingest was killed before its first
            # batch committed: it is not counted.
            docs = dict(
                s.execute(
                    select(DocumentRow.scope_id, func.count())
                    .where(DocumentRow.chunk_count > 0)
                    .group_by(DocumentRow.scope_id)
                ).all()
            )
        return {
            sid: (docs.get(sid, 0), *chunks.get(sid, (0, 0))) for sid in set(chunks) | set(docs)
        }

    # ---- weight-memory leases ---------------------------------------------------------------

    def acquire_lease(
        self,
        scope_id: int,
        holder: str,
        *,
        ttl_s: float,
        stale: Callable[[str], bool] = lambda holder: False,
    ) -> bool:
        """Take or renew the scope's weight lease for ``holder`` for ``ttl_s`` seconds.

        The lease is granted when nobody holds it, when ``holder`` holds it already, when it
        has expired, or when ``stale(other_holder)`` says its holder is gone (a process of
        this machine that no longer runs). Returns whether ``holder`` holds it now."""
        now = time.time()
        try:
            with self.writing() as s:
                row = s.get(LeaseRow, scope_id, with_for_update=True)
                if row is None:
                    s.add(LeaseRow(scope_id=scope_id, holder=holder, expires_at=now + ttl_s))
                    return True
                if row.holder != holder and row.expires_at > now and not stale(row.holder):
                    return False
                row.holder, row.expires_at = holder, now + ttl_s
                return True
        except IntegrityError:  # another process inserted the first lease of the scope
            return False

    def release_lease(self, scope_id: int, holder: str) -> None:
        """Give the scope's lease up, if ``holder`` still holds it."""
        with self.writing() as s:
            s.execute(
                delete(LeaseRow).where(LeaseRow.scope_id == scope_id, LeaseRow.holder == holder)
            )

    def lease_holder(self, scope_id: int) -> str | None:
        """Who holds the scope's lease (it may have lapsed), or None when nobody does."""
        with self.reading() as s:
            row = s.get(LeaseRow, scope_id)
            return None if row is None else row.holder
