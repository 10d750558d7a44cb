"""The text index: a large memory's keyword ranking on tantivy, beside SQL's full-text index.

SQLite's FTS5 (and PostgreSQL's ``ts_rank_cd``) scores every row the query's selecting words
match before it keeps the best: at a million chunks a question whose words are all common
ranked 54k to 143k rows (134 to 447 ms), and an identifier held by 4,520 replayed log lines
cost 12 to 22 ms (benchmarks/README.md, ``notepad.py``'s 1M section). tantivy, the maintained
Rust search library (PyPI ``tantivy``), ranks by BM25 with block-max WAND: it finds the best
``limit`` chunks without scoring every match (1 to 4 ms for the same questions at 1M). Nothing
here reimplements ranking; this module only keeps tantivy's index in step with SQL.

- SQL stays the source of truth, and its full-text index answers until this one is ready, and
  for memories below ``threshold`` chunks, whose rankings stay FTS5's.
- Built on a background thread when a search finds the memory holding ``threshold`` chunks
  (about 40 s at a million on two cores), from every chunk's text and context.
- It follows SQL's history like the vector index (``stores/notepad.py``): before each search it
  replays the ADD, UPDATE and DELETE events it has not seen by re-reading those chunks, so a
  chunk committed before a search is found by it. Embedding events do not change text and
  are skipped. A long backlog (a bulk ingest since the last search) is replayed on the
  background thread instead, or the index built anew when the backlog holds more events than
  the index holds chunks, and SQL answers until it is done.
- Searched and updated in a temporary directory of the system's (``memsdk-text-index-*``),
  which tantivy maps into memory, so its pages are the system's to evict (at a million chunks
  the process stayed 180 to 250 MB larger than without it); it is removed when the memory
  closes (a killed process leaves it to the system's temp cleaning). Two processes sharing the
  memory share no working index.
- Saved in the memory's directory after a build and at close, when it changed: its files go
  into a new folder ``text-index-<hex>`` (hard links where the file system allows, tantivy's
  segment files being written once; copies and fsync otherwise), then ``text-index.json``
  names that folder, the history event it holds every change up to, and the memory's
  identity, written atomically; the folders of earlier saves are removed. A process that
  finds the memory past ``threshold`` puts the saved index in place (about a second at a
  million chunks, where a build took 97 s) and replays the history since, like any backlog.
  A save of another memory, of a history the database does not reach (restored from an older
  backup), of another layout (``SAVED_FORMAT``), or that fails to open, is set aside and the
  index built anew. A save is never needed: SQL answers until the index is ready.
- The words are FTS5's: runs of letters and digits, lower-cased, accents folded, stemmed (the
  Snowball English stemmer, where FTS5 has Porter's: both bring "paintings" and "painted"
  together). When the query holds an identifier
  (:func:`~memsdk.stores.sql_keywords.is_identifier`), only chunks holding one of its
  identifiers are ranked, as on FTS5; the common-word split FTS5 needs is not, since WAND skips
  what cannot reach the top.
- A chunk is indexed as one field: its text twice, then its context. So a word of the context
  counts half as much as one of the text (FTS5's column weights, ``CONTEXT_RANK_WEIGHT``), and
  as in FTS5's ``bm25()`` the counts of both add up before BM25 saturates them. The rule was to
  follow FTS5's ranking, which is not fitted to any answer: on the LoCoMo development split,
  ranking text and context as two fields (the context's boosted by 0.5) shared 78% of FTS5's
  top 10 per question, this layout 89% (keyword ranking alone: evidence recall@10 0.705 and
  0.745, FTS5 0.759). A phrase may match across the seam between the copies; no query of a
  chunk's own words is changed by that.
- Filters: a chunk's top-level metadata keys holding strings are indexed as exact terms, so a
  filter that only asks keys to equal one of some strings (``{"dataset": "HDFS"}``,
  ``{"team": {"in": [...]}}``; memsdk/filters.py's ``string_terms``) is a clause of the query,
  and tantivy ranks the chunks that pass it. Any other filter checks the nearest candidates
  with SQL (``passing``), and SQL ranks when too few of them pass: at a million chunks that
  fallback took 150 to 190 ms for a question about logs filtered to code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tantivy
from sqlalchemy.sql.elements import ColumnElement

from memsdk.files import atomic_write_bytes, fsync_directory
from memsdk.stores.background import background_thread
from memsdk.stores.sql_index import FILTER_CANDIDATES
from memsdk.stores.sql_keywords import CONTEXT_RANK_WEIGHT, is_identifier, query_phrases
from memsdk.stores.vector_backlog import EMBED_EVENT

if TYPE_CHECKING:
    from memsdk.stores.sql import SQLStore

__all__ = ["SAVED_NAME", "TEXT_INDEX_THRESHOLD", "TextIndex"]

logger = logging.getLogger(__name__)

# Chunks from which keyword search runs on this index. Below it FTS5 meets the latency targets
# (natural-language p95 51 ms at 100k chunks in benchmarks/README.md) and keeps its rankings.
TEXT_INDEX_THRESHOLD = 100_000
# How often a memory below the threshold is counted again (it may grow past it).
RECOUNT_S = 10.0
# History events a search replays itself before it ranks (a few thousand chunks, tens of ms);
# a longer backlog is replayed on the background thread while SQL's index answers.
SYNC_INLINE = 5_000
# History events read per step of a replay: a bulk ingest's backlog (an ADD per chunk, and an
# EMBED once its vector is stored) is read in steps of bounded memory.
REPLAY_EVENTS = 50_000
# Bytes of tantivy's indexing buffer: the build's, shared by its two threads (128 MB built a
# million chunks no faster, 36-40 s, and peaked 100 MB higher), then the smaller one replays keep.
_BUILD_HEAP, _REPLAY_HEAP = 48_000_000, 16_000_000
# Metadata terms (a key and its string value) longer than this are not indexed, and a filter
# naming one is checked by SQL instead (tantivy drops terms of 64 KiB and more).
MAX_META_TERM_BYTES = 1024
# The saved index (see the module): the file naming it, its folders' names, and its layout,
# raised whenever the schema, the analyzer or what a document holds changes.
SAVED_NAME = "text-index.json"
_SAVED_FOLDER = re.compile(r"text-index-[0-9a-f]{32}")
SAVED_FORMAT = 1
_Rows = list[tuple[int, float]]
_Row = tuple[int, int, str, str | None, dict[str, Any]]


class _Folder:
    """The index's temporary folder, removed by :meth:`remove` or when the process that made
    it exits, never by another: a child forked from it (a gunicorn or Celery worker) shares
    the parent's files, and its exit must not remove them from under the parent."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="memsdk-text-index-")
        self._finalizer = weakref.finalize(self, _remove, self.path, os.getpid())

    def remove(self) -> None:
        self._finalizer()


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def _copy_index_files(source: Path, target: Path) -> None:
    """Put the index files of ``source`` into the empty folder ``target``: hard links to the
    segment files, which tantivy writes once and never changes, and copies of its two
    metadata files, which it replaces; copies of everything where links fail (another file
    system). Leaves out tantivy's lock files. Each copy is fsynced, and ``target`` too."""
    for entry in os.scandir(source):
        if not entry.is_file() or entry.name.startswith(".tantivy-"):
            continue
        to = target / entry.name
        if entry.name not in ("meta.json", ".managed.json"):
            try:
                os.link(entry.path, to)
                continue
            except OSError:
                pass
        shutil.copyfile(entry.path, to)
        with open(to, "rb") as f:
            os.fsync(f.fileno())
    fsync_directory(target)


def _analyzer() -> tantivy.TextAnalyzer:
    """FTS5's words (``[^\\W_]+``, lower-cased, accents folded), stemmed."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.regex(r"[^\W_]+"))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("id", indexed=True, fast=True)
    builder.add_unsigned_field("scope", indexed=True)
    builder.add_text_field("words", tokenizer_name="memsdk", index_option="position")
    builder.add_text_field("meta", tokenizer_name="raw", index_option="basic")
    return builder.build()


def meta_term(key: str, value: str) -> str | None:
    """The term of a metadata key holding a string (JSON, so no key and value run together);
    None when it is longer than :data:`MAX_META_TERM_BYTES`, so not indexed."""
    term = json.dumps([key, value], ensure_ascii=False)
    return term if len(term.encode()) <= MAX_META_TERM_BYTES else None


class TextIndex:
    """tantivy's index of a memory's chunks, built past ``threshold`` chunks; see the module.

    Thread-safe: searches may run from many threads, and one of them at a time replays history.
    """

    def __init__(
        self,
        sql: SQLStore,
        *,
        threshold: int = TEXT_INDEX_THRESHOLD,
        saved_in: Path | None = None,
        memory_id: str | None = None,
    ) -> None:
        """
        Args:
            sql: the memory's store, which the index follows.
            threshold: chunks from which the index is built (or the saved one put in place).
            saved_in: the memory's directory, where the index is saved and read back; None:
                never saved (each process builds its own).
            memory_id: the memory's identity, recorded with a save and checked on reading it.
        """
        self.sql = sql
        self.threshold = threshold
        self.saved_in = saved_in
        self.memory_id = memory_id
        self._analyzer = _analyzer()
        self._schema = _schema()
        self._lock = threading.Lock()  # the writer: one replay at a time
        self._starting = threading.Lock()  # one background worker at a time
        self._index: tantivy.Index | None = None
        self._writer: tantivy.IndexWriter | None = None
        self._synced_to = 0
        self._saved_to: int | None = None  # the history event of the last save read or written
        self._worker: threading.Thread | None = None  # a build or a long replay
        self._directory: _Folder | None = None
        self._counted_at = float("-inf")
        self._closed = False
        self._failed = False

    # ---- state -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether searches run on this index (it is built)."""
        return self._index is not None

    @property
    def state(self) -> Literal["sql", "building", "tantivy"]:
        """How keyword search runs in this process: on SQL's full-text index (the memory is
        below the threshold, or the build failed), on it while this index is built, or on this
        index."""
        if self.ready:
            return "tantivy"
        return "building" if self._worker is not None else "sql"

    def wait_ready(self, timeout: float | None = None) -> bool:
        """If the memory is past the threshold, put the saved index in place or start the
        build, or the replay of a long backlog of changes, and wait for it; whether the next
        search runs on this index."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._due()
        for _ in range(2):  # the build, then the replay of what changed meanwhile
            if self.ready:
                self._current()
            worker = self._worker
            if worker is not None:
                worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.ready and self.sql.max_history_id() - self._synced_to <= SYNC_INLINE

    def close(self) -> None:
        """Stop a build or replay in flight and drop the index (the memory is closing)."""
        self._closed = True
        worker = self._worker
        if worker is not None:
            worker.join()
        with self._lock:
            if self._writer is not None:
                self._writer.wait_merging_threads()  # no merge writes into a removed folder
                if self._synced_to != self._saved_to and not self._failed:
                    self._save()
            self._index = self._writer = None
            if self._directory is not None:
                self._directory.remove()

    def _due(self) -> None:
        """Put the saved index in place, or else start the build, when the memory holds
        ``threshold`` chunks (counted at most every :data:`RECOUNT_S` seconds)."""
        if self.ready or self._worker is not None or self._closed or self._failed:
            return
        now = time.monotonic()
        if now - self._counted_at < RECOUNT_S:
            return
        self._counted_at = now
        if self.sql.chunk_count() >= self.threshold and not self._read_saved():
            self._start(self._build)

    def _start(self, target: Callable[[], None]) -> None:
        with self._starting:
            if self._worker is None and not self._closed:
                self._worker = background_thread(target, name="memsdk-text-index")
                self._worker.start()

    def _read_saved(self) -> bool:
        """Put the saved index in place, here and now (a second at most at a million chunks,
        where SQL's answer to one question can take half of one, and a process that opened the
        memory for one search gets it); whether it did."""
        with self._starting:  # one reader at a time, and no build starts meanwhile
            if self.ready or self._worker is not None or self._closed:
                return True
            try:
                return self._load()
            except Exception:
                logger.warning(
                    "the text index saved in %s could not be read; building it anew",
                    self.saved_in,
                    exc_info=True,
                )
                return False

    def _load(self) -> bool:
        """Put the index saved in the memory's directory in place, when it is this memory's,
        of this layout, and not ahead of the database (see the module); whether it did. Its
        backlog is replayed by the next search, or the index built anew when the backlog holds
        more events than the index holds chunks."""
        if self.saved_in is None or not (self.saved_in / SAVED_NAME).is_file():
            return False
        saved = json.loads((self.saved_in / SAVED_NAME).read_text())
        newest = self.sql.max_history_id()
        why = None
        if saved.get("format") != SAVED_FORMAT:
            why = f"it has layout {saved.get('format')}, this release reads {SAVED_FORMAT}"
        elif saved.get("memory_id") != self.memory_id:
            why = f"it belongs to memory {saved.get('memory_id')}, this is {self.memory_id}"
        elif not _SAVED_FOLDER.fullmatch(str(saved.get("folder"))):
            why = f"it names no folder of a saved index ({saved.get('folder')!r})"
        elif not isinstance(saved.get("synced_to"), int) or saved["synced_to"] > newest:
            why = (
                f"it holds history up to event {saved.get('synced_to')}, the database holds "
                f"events up to {newest} only (restored from an older backup?)"
            )
        if why is not None:
            logger.warning("the text index saved in %s is set aside: %s", self.saved_in, why)
            return False
        begun = time.monotonic()
        directory = _Folder()
        try:
            _copy_index_files(self.saved_in / saved["folder"], Path(directory.path))
            index = tantivy.Index(self._schema, path=directory.path)
            index.register_tokenizer("memsdk", self._analyzer)
            index.reload()
            chunks = index.searcher().num_docs
            if newest - saved["synced_to"] > chunks:
                directory.remove()
                return False  # building beats replaying (see _current)
            writer = index.writer(heap_size=_REPLAY_HEAP, num_threads=1)
        except BaseException:
            directory.remove()
            raise
        with self._lock:
            if self._closed:
                directory.remove()
                return True  # nothing to build either: the memory is closing
            self._directory, self._index, self._writer = directory, index, writer
            self._synced_to = self._saved_to = saved["synced_to"]
        logger.info(
            "text index read from %s: %d chunks in %.1f s, %d history events behind",
            self.saved_in,
            chunks,
            time.monotonic() - begun,
            newest - saved["synced_to"],
        )
        return True

    def _save(self) -> None:
        """Save the index in the memory's directory (see the module). Under the lock, with no
        commit or merge in flight; a failure is logged, and the last save stays as it was."""
        if self.saved_in is None or self._directory is None:
            return
        folder = self.saved_in / f"text-index-{uuid.uuid4().hex}"
        try:
            folder.mkdir()
            _copy_index_files(Path(self._directory.path), folder)
            saved = {
                "format": SAVED_FORMAT,
                "memory_id": self.memory_id,
                "synced_to": self._synced_to,
                "folder": folder.name,
            }
            atomic_write_bytes(self.saved_in / SAVED_NAME, json.dumps(saved).encode())
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning("saving the text index in %s failed", self.saved_in, exc_info=True)
            return
        self._saved_to = self._synced_to
        for entry in os.scandir(self.saved_in):  # earlier saves, and any a crash left
            if entry.name != folder.name and _SAVED_FOLDER.fullmatch(entry.name):
                shutil.rmtree(entry.path, ignore_errors=True)

    def _build(self) -> None:
        """Build the index from every chunk (or build it anew, when replaying the backlog
        would cost more) and put it in place."""
        directory = _Folder()
        try:
            index = tantivy.Index(self._schema, path=directory.path)
            index.register_tokenizer("memsdk", self._analyzer)
            writer = index.writer(heap_size=_BUILD_HEAP, num_threads=2)
            # Every event after this one is replayed later: a chunk changed while the build
            # reads is read again then.
            start = self.sql.max_history_id()
            begun = time.monotonic()
            added = 0
            for rows in self.sql.chunk_texts():
                if self._closed:
                    directory.remove()
                    return
                added += self._add(writer, rows)
            writer.commit()
            writer.wait_merging_threads()  # and gives its buffer back: replays take a smaller one
            writer = index.writer(heap_size=_REPLAY_HEAP, num_threads=1)
            index.reload()
            with self._lock:
                if self._writer is not None:  # the index this one replaces
                    self._writer.wait_merging_threads()
                old, self._directory = self._directory, directory
                self._index, self._writer, self._synced_to = index, writer, start
            if old is not None:
                old.remove()
            logger.info("text index built: %d chunks in %.1f s", added, time.monotonic() - begun)
            with self._lock:
                if not self._closed and self._index is index:
                    self._save()
        except Exception:
            self._give_up("building")
            directory.remove()
        finally:
            self._worker = None

    def _give_up(self, doing: str) -> None:
        """After an error: SQL's full-text index answers every search from now on (an index
        that missed a change is never searched again); the error is in the log."""
        self._failed = True
        self._index = self._writer = None
        logger.exception("%s the text index failed; keyword search stays on SQL", doing)

    def _add(self, writer: tantivy.IndexWriter, rows: Sequence[_Row]) -> int:
        for cid, scope_id, text, context, metadata in rows:
            doc = tantivy.Document()
            doc.add_unsigned("id", cid)
            doc.add_unsigned("scope", scope_id)
            # The text twice, the context once: see the module.
            doc.add_text("words", f"{text}\n{text}\n{context}" if context else f"{text}\n{text}")
            for key, value in (metadata or {}).items():
                term = meta_term(key, value) if isinstance(value, str) else None
                if term is not None:
                    doc.add_text("meta", term)
            writer.add_document(doc)
        return len(rows)

    def _current(self) -> bool:
        """Whether this index holds every change SQL has committed: a short backlog is
        replayed here, a long one (over :data:`SYNC_INLINE` history events, as after a bulk
        ingest) on the background thread while SQL answers. While another thread replays,
        SQL answers too: a search never waits behind a replay."""
        newest = self.sql.max_history_id()
        backlog = newest - self._synced_to
        if backlog <= 0:
            return True
        if backlog > SYNC_INLINE:
            # Reading every chunk once (40 s at a million) beats replaying more events than
            # the index holds chunks (114 s for the 900k chunks of a bulk ingest).
            index = self._index
            rebuild = index is not None and backlog > index.searcher().num_docs
            self._start(self._build if rebuild else self._catch_up)
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._replay(newest)
        finally:
            self._lock.release()
        return True

    def _catch_up(self) -> None:
        try:
            with self._lock:
                self._replay(self.sql.max_history_id())
        except Exception:
            self._give_up("updating")
        finally:
            self._worker = None

    def _replay(self, newest: int) -> None:
        """Replay the history events this index has not seen, up to ``newest`` (see the
        module), at most :data:`REPLAY_EVENTS` at a time, each step committed. Under the
        lock."""
        index, writer = self._index, self._writer
        if index is None or writer is None:
            return
        while self._synced_to < newest and not self._closed:
            upto = min(newest, self._synced_to + REPLAY_EVENTS)
            touched = self.sql.touched_since(self._synced_to, upto=upto, skip=(EMBED_EVENT,))[1]
            if len(touched):
                ids = [int(i) for i in touched]
                query = tantivy.Query.term_set_query(self._schema, "id", ids)
                writer.delete_documents_by_query(query)
                for rows in self.sql.chunk_texts(touched):
                    self._add(writer, rows)
                writer.commit()
                index.reload()
            self._synced_to = upto

    # ---- search ----------------------------------------------------------------------------

    def ranking(
        self,
        scope_id: int,
        query: str,
        *,
        limit: int,
        probe: ColumnElement[bool] | None = None,
        terms: Mapping[str, Sequence[str]] | None = None,
        context_weight: float = CONTEXT_RANK_WEIGHT,
    ) -> tuple[_Rows, list[list[str]]] | None:
        """The scope's best ``limit`` chunks for ``query`` and the phrases that selected them,
        as :meth:`SQLStore.keyword_ranking <memsdk.stores.sql.SQLStore.keyword_ranking>`
        returns them; None when SQL should answer: the index is not built, the context is
        weighed otherwise than at index time, or a filter (``probe``, checking given rows) kept
        too few of the nearest candidates. ``terms``, when the filter is only string
        equalities (each key holds one of its strings), is the same filter, answered here.
        """
        self._due()
        if not self.ready or context_weight != CONTEXT_RANK_WEIGHT or not self._current():
            return None
        index = self._index
        if index is None:
            return None
        strings = self._strings(terms) if terms is not None else None
        if strings is not None:
            probe = None  # the query holds the filter
        phrases = query_phrases(query)
        identifiers = [p for p in phrases if is_identifier(p)]
        if 0 < len(identifiers) < len(phrases):
            found = self._ranked(index, scope_id, (phrases, identifiers, strings), limit, probe)
            if found is None:
                return None
            if found:
                return found, identifiers
        # No identifier, or no chunk of the scope holds one: every phrase selects.
        found = self._ranked(index, scope_id, (phrases, [], strings), limit, probe)
        return None if found is None else (found, phrases)

    def _strings(self, terms: Mapping[str, Sequence[str]]) -> tantivy.Query | None:
        """Chunks whose metadata has each key of ``terms`` holding one of its strings; None
        when a term is too long to have been indexed."""
        keys = []
        for key, values in terms.items():
            found = [term for value in values if (term := meta_term(key, value)) is not None]
            if not found or len(found) < len(values):
                return None  # a term too long to have been indexed
            one_of = [
                (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "meta", t))
                for t in found
            ]
            keys.append((tantivy.Occur.Must, tantivy.Query.boolean_query(one_of)))
        return tantivy.Query.boolean_query(keys) if keys else None

    def _ranked(
        self,
        index: tantivy.Index,
        scope_id: int,
        asked: tuple[list[list[str]], list[list[str]], tantivy.Query | None],
        limit: int,
        probe: ColumnElement[bool] | None,
    ) -> _Rows | None:
        """The best ``limit`` rows for ``asked``: (phrases, the selecting ones, the string
        filter or None); None when too few of the nearest candidates pass ``probe``."""
        if not asked[0]:
            return []
        query = self._query(scope_id, *asked)
        searcher = index.searcher()
        for n in (limit,) if probe is None else [max(limit, c) for c in FILTER_CANDIDATES]:
            hits = searcher.search(query, n, count=False).hits
            ids = searcher.fast_field_values("id", [address for _, address in hits])
            rows = [(int(i), float(score)) for i, (score, _) in zip(ids, hits, strict=True)]
            if probe is None:
                return rows
            passing = self.sql.passing([i for i, _ in rows], probe)
            kept = [(i, score) for i, score in rows if i in passing]
            # Enough passed, or every match was a candidate: these are the filter's best.
            if len(kept) >= limit or len(rows) < n:
                return kept[:limit]
        return None

    def _query(
        self,
        scope_id: int,
        phrases: list[list[str]],
        selecting: list[list[str]],
        strings: tantivy.Query | None,
    ) -> tantivy.Query:
        """The scope's chunks holding a ``selecting`` phrase (any phrase when none) and
        passing the ``strings`` filter, scored by every phrase."""
        should, must = tantivy.Occur.Should, tantivy.Occur.Must

        def phrase(words: list[str]) -> list[tuple[tantivy.Occur, tantivy.Query]]:
            tokens = self._analyzer.analyze(" ".join(words))
            if not tokens:
                return []
            if len(tokens) == 1:
                return [(should, tantivy.Query.term_query(self._schema, "words", tokens[0]))]
            return [(should, tantivy.Query.phrase_query(self._schema, "words", tokens))]

        scope = tantivy.Query.term_query(self._schema, "scope", scope_id)
        clauses = [(must, tantivy.Query.const_score_query(scope, 0.0))]
        if strings is not None:
            clauses.append((must, tantivy.Query.const_score_query(strings, 0.0)))
        chosen = [c for p in selecting or phrases for c in phrase(p)]
        clauses.append((must, tantivy.Query.boolean_query(chosen)))
        if selecting:  # the other phrases only score
            clauses += [c for p in phrases if p not in selecting for c in phrase(p)]
        return tantivy.Query.boolean_query(clauses)
