"""The notepad: SQL records plus the FAISS index that mirrors their embeddings.

SQL is the source of truth. Every change to a chunk writes a history event in the same
transaction, and the index follows the history: :meth:`Notepad.sync` replays the events the
index has not seen (its own writes, writes of another process, or writes that a crash kept from
reaching the saved index file) by re-reading the current embeddings of the chunks they touched.
Replaying is idempotent, so there is one way the index ever changes.

A vector search runs inside one scope. Listing a scope's chunk ids from SQL for each search
costs about a second at a million chunks (0.4 s of it in SQLite alone), and the list changes with
every batch the embedding stage stores, so it cannot be cached for long. The notepad keeps the
scope of every indexed vector in memory instead (one int32 per chunk id, filled on the first
search and kept by :meth:`Notepad.sync` from the same history events as the index), and a
scope's allowed ids are one comparison over it. A metadata filter first checks the nearest
candidates of the scope against SQL, one index probe each (``compile_filters(correlated=True)``),
and lists the filter's ids only when too few candidates pass: a broad filter (610k chunks at 1M)
is seldom listed, a narrow one (hundreds) is cheap to list. A listing is kept and follows the
history (:mod:`memsdk.stores.filter_ids`): the filter's next searches use it directly.

Keyword search runs on SQL's full-text index, or, in a memory past a size, on the text index
(:mod:`memsdk.stores.text_index`), which follows the same history.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.sql.elements import ColumnElement

from memsdk.encoding import lone_surrogate
from memsdk.errors import (
    ConfigError,
    FormatError,
    IndexCorruptedError,
    InputError,
    NotFoundError,
    StaleFilesError,
)
from memsdk.files import remove_stale_temp_files
from memsdk.stores.filter_ids import FilterIds
from memsdk.stores.manifest import MANIFEST_NAME, Manifest, read_manifest
from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_index import FILTER_CANDIDATES
from memsdk.stores.sql_keywords import CONTEXT_RANK_WEIGHT
from memsdk.stores.text_index import TEXT_INDEX_THRESHOLD, TextIndex
from memsdk.stores.vector_index import INDEX_NAME, IVF_THRESHOLD, VectorIndex

__all__ = ["DATABASE_NAME", "Notepad"]

logger = logging.getLogger(__name__)

DATABASE_NAME = "memory.db"


def _redact(url: str) -> str:
    # Never write a password into the manifest.
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, creds = head.partition("://")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"


def _check_database(recorded: str, url: str, directory: Path) -> None:
    """The records must stay where the memory was created: another database's chunk ids
    would not match the directory's index and weight deltas.

    Raises:
        ConfigError: ``url`` is not the database the manifest records.
    """
    in_directory = recorded.startswith("sqlite")
    if in_directory and url.startswith("sqlite"):
        return  # the directory's own file, wherever the directory has moved to
    if in_directory:
        raise ConfigError(
            f"memory {directory} keeps its records in its own SQLite file ({DATABASE_NAME}), "
            f"not in {_redact(url)}: open it without database_url, or give a new directory "
            "for a memory in that database"
        )
    if _redact(url) != recorded:
        hint = (
            "open it with MemoryConfig(database_url=...) naming that database"
            if url.startswith("sqlite")
            else 'if that database moved to this address, set "database" in '
            f"{MANIFEST_NAME} to {_redact(url)!r}"
        )
        raise ConfigError(
            f"memory {directory} keeps its records in {recorded}, not in {_redact(url)}: {hint}"
        )


class Notepad:
    """One memory directory's exact store: SQL records, the vector index and the manifest.

    Args:
        directory: the memory directory; created when it does not exist.
        database_url: a SQLAlchemy URL; None keeps a SQLite file inside ``directory``.
        embedder_name, dim: the embedder the vectors come from (checked against the manifest).
        busy_timeout_s: SQLite lock wait.
        load_index: False skips reading the index file (used to rebuild a broken one).
        create: False refuses to make a new memory where there is none.
        ivf_threshold: vectors past which the index becomes approximate (IVF; see
            :mod:`memsdk.stores.vector_index`).
        text_index_threshold: chunks past which keyword search runs on tantivy (see
            :mod:`memsdk.stores.text_index`).

    Raises:
        NotFoundError: ``create`` is False and ``directory`` holds no memory.
        InputError: ``directory`` is a file, a non-empty folder that is not a memory, or a
            path with a lone surrogate.
        FormatError: the manifest is corrupted, newer, or names another embedder.
        DatabaseCorruptedError: the SQLite file is damaged (names the repair).
        ConfigError: ``database_url`` is not the database the memory keeps its records in.
        IndexCorruptedError: the index file is missing or unreadable (names the rebuild command).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        database_url: str | None,
        embedder_name: str,
        dim: int,
        busy_timeout_s: float = 30.0,
        load_index: bool = True,
        create: bool = True,
        ivf_threshold: int = IVF_THRESHOLD,
        text_index_threshold: int = TEXT_INDEX_THRESHOLD,
    ) -> None:
        text = os.fspath(directory)
        index = lone_surrogate(text) if isinstance(text, str) else None
        if index is not None:
            raise InputError(
                f"memory path {text!r} holds the lone surrogate U+{ord(text[index]):04X} at index "
                f"{index}, which is not text (the database and index files need UTF-8 paths): "
                "pick a path of valid text"
            )
        self.directory = Path(directory).expanduser().resolve()
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(
                f"{self.directory} is a file: a memory is a directory; pick a new path"
            )
        manifest = read_manifest(self.directory) if self.directory.exists() else None
        if manifest is None and self.directory.exists() and any(self.directory.iterdir()):
            raise InputError(
                f"{self.directory} is not empty and has no {MANIFEST_NAME}: it is not a memsdk "
                "memory; open an empty or new directory instead"
            )
        if manifest is None and not create:
            raise NotFoundError(
                f"no memory at {self.directory}: check the path (a memory is made by ingesting "
                "into a new directory, or by opening it with create=True)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        url = database_url or f"sqlite:///{self.directory / DATABASE_NAME}"
        if manifest is None:
            manifest = Manifest(
                embedder_name=embedder_name, embedder_dim=dim, database=_redact(url)
            )
            manifest.write(self.directory)
        manifest.check_embedder(embedder_name, dim, directory=self.directory)
        _check_database(manifest.database, url, self.directory)
        if removed := remove_stale_temp_files(self.directory):
            logger.info("removed %d temp files left by interrupted writes", removed)
        self.manifest = manifest
        self.dim = dim
        self.ivf_threshold = ivf_threshold
        self.index_path = self.directory / INDEX_NAME
        self.sql = SQLStore(url, busy_timeout_s=busy_timeout_s)
        self.text_index = TextIndex(
            self.sql, threshold=text_index_threshold, saved_in=self.directory
        )
        self._sync_lock = threading.Lock()
        # The scope of each indexed vector by chunk id (-1: none), built on the first search;
        # and per scope, its indexed ids at an index generation.
        self._scope_of: np.ndarray | None = None
        self._scope_ids: dict[int, tuple[int, np.ndarray]] = {}
        self.filter_ids = FilterIds(self.sql)
        self._saved_at = time.monotonic()
        try:
            self.sql.create_schema()
            self.memory_id = self._identity()
            self.index = self._open_index() if load_index else self._new_index()
            self.index.memory_id = self.text_index.memory_id = self.memory_id
            if load_index:
                self.sync()
        except BaseException:
            self.sql.close()
            raise

    def _identity(self) -> str:
        """The memory's identity, the same in the manifest and the database. A memory without
        one (made before identities, or new) adopts one: the database first, so a crash in
        between leaves a manifest that adopts the database's on the next open.

        Raises:
            StaleFilesError: the manifest names an identity the database does not hold (the
                database was removed, emptied, or replaced by another memory's).
        """
        recorded = self.manifest.memory_id
        held = self.sql.identity()
        if recorded and held != recorded:
            got = "no identity (a new, removed or emptied database)" if held is None else held
            raise StaleFilesError(
                f"the database of memory {self.directory} is not the one its files were made "
                f"with: the manifest names memory {recorded}, the database holds {got}. "
                "Restore the memory's own database from a backup, or keep this database and "
                "move the index, weight deltas and router policies it does not vouch for aside "
                f"with: memsdk repair --memory {self.directory}"
            )
        if not recorded:
            recorded = self.sql.adopt_identity(held or uuid.uuid4().hex)
            self.manifest = dataclasses.replace(self.manifest, memory_id=recorded)
            self.manifest.write(self.directory)
        return recorded

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, ivf_threshold=self.ivf_threshold)

    def _open_index(self) -> VectorIndex:
        """The saved index, when it belongs to this memory and to no history past the
        database's.

        Raises:
            IndexCorruptedError: the file is missing while the database holds chunks, or
                unreadable (names the rebuild command).
            StaleFilesError: the file belongs to another memory, or reflects history events
                the database does not hold (it was restored from an older backup, or lost
                them): its ids would name other chunks (names the rebuild command).
        """
        if self.index_path.exists():
            index = VectorIndex.load(
                self.index_path, dim=self.dim, ivf_threshold=self.ivf_threshold
            )
            fix = (
                f"rebuild it from the database with: memsdk rebuild-index --memory {self.directory}"
            )
            if index.memory_id and index.memory_id != self.memory_id:
                raise StaleFilesError(
                    f"vector index {self.index_path} belongs to memory {index.memory_id}, this "
                    f"is memory {self.memory_id}: {fix}"
                )
            newest = self.sql.max_history_id()
            if index.synced_to > newest:
                raise StaleFilesError(
                    f"vector index {self.index_path} reflects history up to event "
                    f"{index.synced_to}, the database holds events up to {newest} only (it "
                    f"was restored from an older backup, or replaced): {fix}"
                )
            index.dirty = index.dirty or not index.memory_id  # saved with the identity
            return index
        if len(self.sql.all_chunk_ids()):
            raise IndexCorruptedError(
                f"vector index {self.index_path} is missing but the database holds chunks: "
                f"rebuild it with: memsdk rebuild-index --memory {self.directory}"
            )
        # Written at once, so a crash before the first regular save leaves an index that
        # catches up from SQL, not a missing one.
        index = self._new_index()
        index.memory_id = self.memory_id
        index.save(self.index_path)
        return index

    def sync(self) -> int:
        """Bring the index up to date with SQL; returns how many chunks were refreshed."""
        if self.sql.max_history_id() == self.index.synced_to:
            return 0
        with self._sync_lock:
            newest, touched = self.sql.touched_since(self.index.synced_to)
            if len(touched) == 0:
                self.index.synced_to = newest
                return 0
            ids, vectors = [], []
            for batch_ids, batch_vectors in self.sql.embeddings(touched):
                ids.append(batch_ids)
                vectors.append(batch_vectors)
            add_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
            add_vectors = (
                np.concatenate(vectors) if vectors else np.empty((0, self.dim), np.float32)
            )
            if add_vectors.shape[1] != self.dim:
                raise FormatError(
                    f"stored embeddings have width {add_vectors.shape[1]}, expected {self.dim}"
                )
            self.index.replace(touched, add_ids, add_vectors)
            if self._scope_of is not None:
                self._set_scopes(touched, add_ids)
            self.index.synced_to = newest
            logger.debug("index synced to history %d (%d chunks refreshed)", newest, len(touched))
            return len(touched)

    def save_index(self, *, min_interval_s: float = 0.0) -> None:
        """Write the index file if it changed since the last save and that save is older than
        ``min_interval_s`` (a large index is costly to rewrite after every small ingest)."""
        if self.index.dirty and time.monotonic() - self._saved_at >= min_interval_s:
            self.index.save(self.index_path)
            self._saved_at = time.monotonic()

    def wait_for_layout(self, timeout: float | None = None) -> bool:
        """Wait until the index has no IVF training in flight (it trains in the background;
        see :mod:`memsdk.stores.vector_index`); False if ``timeout`` seconds passed first."""
        return self.index.wait_for_layout(timeout)

    def rebuild_index(self, *, on_batch: Callable[[int], None] | None = None) -> int:
        """Rebuild the index from the embeddings stored in SQL and save it; returns its size.

        A rebuild past the IVF threshold waits for the training (minutes at a million vectors)
        before it saves: it is a repair that runs once, shows its progress and is often the
        last call of a process (``memsdk rebuild-index``), and the saved file should then be
        the IVF that later opens load without training again. The index it replaces keeps
        serving searches until then.
        """
        with self._sync_lock:
            newest = self.sql.max_history_id()
            # Filled flat and given its layout once at the end: an IVF index is trained on
            # all the vectors, not on the first batches to cross the threshold.
            index = VectorIndex(self.dim, ivf_threshold=np.iinfo(np.int64).max)
            index.memory_id = self.memory_id
            for ids, vectors in self.sql.embeddings():
                index.add(ids, vectors)
                if on_batch is not None:
                    on_batch(len(ids))
            index.ivf_threshold = self.ivf_threshold
            index.choose_layout()
            index.wait_for_layout()
            index.synced_to = newest
            index.dirty = True
            self.index.abandon_layout()
            self.index = index
            self._scope_of = None
        self.sync()
        self.index.save(self.index_path)
        return len(self.index)

    def _set_scopes(self, touched: np.ndarray, add_ids: np.ndarray) -> None:
        """Record the scopes of the vectors just (re)indexed; ``touched`` ids lose theirs (a
        deleted chunk, or one whose vector is pending again). Under the sync lock."""
        assert self._scope_of is not None
        top = int(max(touched.max(initial=-1), add_ids.max(initial=-1)))
        if top >= len(self._scope_of):
            grown = np.full(max(top + 1, 2 * len(self._scope_of)), -1, np.int32)
            grown[: len(self._scope_of)] = self._scope_of
            self._scope_of = grown
        self._scope_of[touched] = -1
        ids, scopes = self.sql.chunk_scopes(add_ids)
        self._scope_of[ids] = scopes

    def _scope_vectors(self, scope_id: int) -> np.ndarray:
        """Ids of the scope's indexed vectors, ascending (cached per index generation)."""
        cached = self._scope_ids.get(scope_id)
        if cached is not None and cached[0] == self.index.synced_to:
            return cached[1]
        with self._sync_lock:
            if self._scope_of is None:
                held = self.index.ids()
                self._scope_of = np.full(int(held.max(initial=-1)) + 1, -1, np.int32)
                self._set_scopes(np.empty(0, np.int64), held)
            cached = (self.index.synced_to, np.flatnonzero(self._scope_of == scope_id))
        self._scope_ids[scope_id] = cached
        return cached[1]

    def vector_search(
        self,
        scope_id: int,
        query: np.ndarray,
        *,
        k: int,
        where: ColumnElement[bool] | None = None,
        probe: ColumnElement[bool] | None = None,
    ) -> list[tuple[int, float]]:
        """Top-``k`` chunks of the scope passing ``where`` by cosine similarity to ``query``.

        ``probe`` is the same filter compiled to check given rows (``compile_filters(...,
        correlated=True)``); without it a filtered search lists the filter's ids at once.
        """
        self.sync()
        allowed = self._scope_vectors(scope_id)
        if where is not None and probe is None:
            allowed = self.sql.chunk_ids(scope_id, where)
        elif where is not None and probe is not None:
            # A kept listing of the filter's ids serves at once; else the nearest candidates
            # are checked, and the ids listed only when too few pass.
            kept = self.filter_ids.kept(scope_id, where, probe)
            if kept is None:
                checked = self._checked_candidates(query, k, allowed, probe)
                if checked is not None:
                    return checked
            allowed = kept if kept is not None else self.filter_ids.ids(scope_id, where, probe)
        ids, scores = self.index.search(query, k=k, allowed_ids=allowed)
        return [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]

    def _checked_candidates(
        self, query: np.ndarray, k: int, allowed: np.ndarray, probe: ColumnElement[bool]
    ) -> list[tuple[int, float]] | None:
        """The filter's top ``k`` among the scope's nearest vectors (``allowed``), checked
        against ``probe`` in rounds of :data:`FILTER_CANDIDATES`; None when too few pass."""
        for n, more in zip(FILTER_CANDIDATES, (*FILTER_CANDIDATES[1:], 0), strict=True):
            ids, scores = self.index.search(query, k=n, allowed_ids=allowed)
            passing = self.sql.passing(ids, probe)
            hits = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True)]
            hits = [(i, s) for i, s in hits if i in passing]
            # Enough passed, or every vector of the scope was a candidate: on an exact index
            # these are the filter's top k.
            if len(hits) >= k or n >= len(allowed):
                return hits[:k]
            # At this round's pass rate the next would fall short of k too (at 1M its 4,096
            # checks cost 16 to 30 ms): the filter's ids are listed instead.
            if len(hits) * more < k * n:
                return None
        return None

    def keyword_ranking(
        self, scope_id: int, query: str, *, limit: int, **options: Any
    ) -> tuple[list[tuple[int, float]], list[list[str]]]:
        """Exact-token search inside one scope, with the arguments and results of
        :meth:`SQLStore.keyword_ranking <memsdk.stores.sql.SQLStore.keyword_ranking>`: on the
        text index once the memory is large enough for it to be built
        (:mod:`memsdk.stores.text_index`), else, and for a filter the index's nearest
        candidates do not satisfy, on SQL's full-text index. ``terms`` (text index only, see
        :meth:`TextIndex.ranking <memsdk.stores.text_index.TextIndex.ranking>`) is ``where``
        again when that filter is only string equalities.
        """
        where, probe, terms = options.get("where"), options.get("probe"), options.pop("terms", None)
        if where is None or probe is not None or terms is not None:
            found = self.text_index.ranking(
                scope_id,
                query,
                limit=limit,
                probe=probe if where is not None else None,
                terms=terms if where is not None else None,
                context_weight=options.get("context_weight", CONTEXT_RANK_WEIGHT),
            )
            if found is not None:
                return found
        return self.sql.keyword_ranking(scope_id, query, limit=limit, **options)

    def keyword_search(self, scope_id: int, query: str, **options: Any) -> list[tuple[int, float]]:
        """:meth:`keyword_ranking`'s rows alone (the same arguments)."""
        return self.keyword_ranking(scope_id, query, **options)[0]

    def close(self) -> None:
        """Save the index and release the database. A training in flight is abandoned, not
        waited for (minutes at a million vectors): the file saved is the index in use, and
        the next open trains again. A text index being built is dropped."""
        try:
            self.text_index.close()
            self.index.abandon_layout()
            self.save_index()
        finally:
            self.sql.close()
