"""HybridMemory: the public API over one memory directory.

Two memories behind one set of calls: the exact notepad (SQL + FAISS) and, per scope, the
weight memory (a byte-level model whose fast weights absorb the scope's chunks by test-time
training in a background worker, :mod:`memsdk.consolidation`). Every read and write names a
:class:`~memsdk.scope.Scope`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from memsdk.chunking import RawChunk, chunk_stream, decode_chunk
from memsdk.config import MemoryConfig
from memsdk.consolidation import Consolidator
from memsdk.engine import ByteLM, TTTState, byte_losses, generate, load_model
from memsdk.errors import InputError, MemsdkError, NotFoundError
from memsdk.filters import compile_filters, validate_metadata
from memsdk.progress import progress_bar
from memsdk.results import (
    AddResult,
    HistoryEvent,
    IngestReport,
    MemoryItem,
    MemoryStats,
    ScopeStats,
    SearchHit,
    SkippedSource,
    WeightFigures,
)
from memsdk.scope import Scope
from memsdk.stores.embedder import MiniLMEmbedder
from memsdk.stores.notepad import Notepad
from memsdk.stores.sql import ChunkRecord, NewChunk
from memsdk.stores.weights import WeightSnapshots

__all__ = ["HybridMemory"]

logger = logging.getLogger(__name__)

READ_BLOCK = 1 << 20
SNIFF_BYTES = 8192
MAX_K = 1000
MAX_IDENTIFIERS = 8  # identifier pieces of one query looked up on their own

# Query pieces that look like identifiers: ids, numbers, hex, paths, host:port, UUIDs.
_IDENTIFIER = re.compile(r"^(?=.*\d)[\w.:/\\@#\-+]{3,}$|^[/~.]?\w+(?:[-_:/.]\w+)+$")
_TRIM = "\"'`()[]{}<>,;!?"

_embedder: MiniLMEmbedder | None = None
_embedder_lock = threading.Lock()
_models: dict[str, ByteLM] = {}
_models_lock = threading.Lock()
MAX_COMPLETION_BYTES = 4096


def _shared_model(name: str) -> ByteLM:
    """The weight-memory model, loaded once per process and shared (it is never trained in
    place: fast weights live in each scope's state)."""
    with _models_lock:
        if name not in _models:
            _models[name], _, _ = load_model(name)
        return _models[name]


def _shared_embedder() -> MiniLMEmbedder:
    """One embedder per process, made on first use: its weights are read once and shared by
    every memory."""
    global _embedder
    with _embedder_lock:
        if _embedder is None:
            _embedder = MiniLMEmbedder()
        return _embedder


def identifier_spans(query: str) -> list[str]:
    """Identifier-like pieces of a query: ``blk_-160...``, ``R02-M1-N0-C:J12-U11``, ``4812``."""
    spans = []
    for piece in query.split():
        piece = piece.strip(_TRIM).rstrip(".:")  # sentence punctuation is not part of an id
        if _IDENTIFIER.match(piece):
            spans.append(piece)
    return spans


def _whole(span: str) -> re.Pattern[str]:
    """Matches ``span`` standing alone: ``heaptrack:amd64`` is not in ``libheaptrack:amd64``."""
    return re.compile(r"(?<!\w)" + re.escape(span) + r"(?!\w)")


@dataclass
class _Source:
    name: str
    size: int | None
    blocks: Callable[[], Iterator[bytes]]
    sniff: bool  # check for binary content before ingesting


def _file_blocks(path: Path) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(READ_BLOCK):
                yield block

    return blocks


def _fileobj_blocks(f: BinaryIO | TextIO, name: str) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        while True:
            try:
                block = f.read(READ_BLOCK)
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{name} is open in text mode and holds bytes that are not valid in its "
                    f"encoding ({e.reason}): open it in binary mode ('rb'); memsdk keeps "
                    "invalid bytes recoverable"
                ) from None
            if not block:
                return
            yield block.encode("utf-8", "surrogateescape") if isinstance(block, str) else block

    return blocks


def _iter_blocks(items: Iterable[Any], name: str) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        for i, item in enumerate(items):
            if isinstance(item, str):
                yield item.encode("utf-8", "surrogateescape")
            elif isinstance(item, bytes | bytearray | memoryview):
                yield bytes(item)
            else:
                raise InputError(
                    f"{name}: item {i} is a {type(item).__name__}; an iterable source must "
                    "yield str or bytes"
                )

    return blocks


def _sources(source: Any, name: str | None) -> list[_Source]:
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file in sorted(files):
                    p = Path(root) / file
                    if file.startswith(".") or not p.is_file():
                        continue
                    found.append(_Source(str(p.resolve()), p.stat().st_size, _file_blocks(p), True))
            return found
        if path.is_file():
            return [_Source(str(path.resolve()), path.stat().st_size, _file_blocks(path), True)]
        raise NotFoundError(
            f"no file or directory at {str(source)[:200]!r}: ingest takes a path, a directory, a "
            "file object or an iterable of str/bytes; to store a piece of text use add()"
        )
    if isinstance(source, bytes | bytearray | memoryview):
        raise InputError(
            "ingest got bytes: to store one text use add(); to stream bytes pass a file object "
            "or an iterable of bytes"
        )
    if hasattr(source, "read"):
        label = name or str(getattr(source, "name", "") or "<stream>")
        return [_Source(label, None, _fileobj_blocks(source, label), True)]
    if isinstance(source, Iterable) and not isinstance(source, Mapping):
        label = name or "<stream>"
        return [_Source(label, None, _iter_blocks(source, label), False)]
    raise InputError(
        f"ingest cannot read a {type(source).__name__}: pass a path, a directory, a file object "
        "or an iterable of str/bytes"
    )


def _to_bytes(text: Any, what: str) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8", "surrogateescape")
    if isinstance(text, bytes | bytearray):
        return bytes(text)
    raise InputError(f"{what} must be str or bytes, got {type(text).__name__}")


def _check_scope(scope: Any) -> Scope:
    if not isinstance(scope, Scope):
        raise InputError(
            f"scope must be a memsdk.Scope, got {type(scope).__name__}: "
            "pass scope=Scope(tenant=..., user=...)"
        )
    return scope


def _check_id(memory_id: Any) -> int:
    if isinstance(memory_id, bool) or not isinstance(memory_id, int):
        raise InputError(f"memory id must be an int, got {type(memory_id).__name__} {memory_id!r}")
    return memory_id


class HybridMemory:
    """Long memory for an agent, in one directory.

    Open it with :meth:`open` (or the constructor) and close it with :meth:`close` or a
    ``with`` block. One instance may be used from several threads.

    Args:
        path: the memory directory; created if missing. A non-empty directory that is not a
            memory is refused.
        config: a :class:`MemoryConfig`; defaults apply when None.
        rebuild_index: rebuild the vector index from SQL before use (repairs a missing or
            corrupted index file; the same as ``memsdk rebuild-index``).
        progress: show a progress bar while rebuilding.

    Raises:
        InputError: ``path`` is a file or a foreign non-empty directory.
        FormatError: the directory was written by a newer memsdk or another embedder.
        IndexCorruptedError: the vector index is missing or corrupted (see ``rebuild_index``).
        ModelNotFoundError: the embedding model package or the weight-memory model
            (``config.weights_model``) is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: MemoryConfig | None = None,
        rebuild_index: bool = False,
        progress: bool = False,
    ) -> None:
        if config is not None and not isinstance(config, MemoryConfig):
            raise InputError(
                f"config must be a MemoryConfig, got {type(config).__name__}: "
                "use MemoryConfig.model_validate(d) for a dict"
            )
        self.config = config or MemoryConfig()
        self.embedder = _shared_embedder()
        self.notepad = Notepad(
            path,
            database_url=self.config.database_url,
            embedder_name=self.embedder.name,
            dim=self.embedder.dim,
            busy_timeout_s=self.config.busy_timeout_s,
            load_index=not rebuild_index,
        )
        self.path = self.notepad.directory
        self._closed = False
        self.weights: Consolidator | None = None
        if self.config.weight_memory:
            try:
                self.weights = Consolidator(
                    self.notepad.sql,
                    WeightSnapshots(self.path),
                    _shared_model(self.config.weights_model),
                    batch_chunks=self.config.weights_batch_chunks,
                    save_interval_s=self.config.weights_save_interval_s,
                )
            except BaseException:
                self.notepad.close()
                raise
        if rebuild_index:
            self.rebuild_index(progress=progress)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        config: MemoryConfig | None = None,
        rebuild_index: bool = False,
        progress: bool = False,
    ) -> HybridMemory:
        """Create or reopen the memory at ``path`` (see the class for arguments and errors)."""
        return cls(path, config=config, rebuild_index=rebuild_index, progress=progress)

    def __enter__(self) -> HybridMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"HybridMemory({str(self.path)!r}, {state})"

    def close(self) -> None:
        """Save the vector index and the weight snapshots and release the database. Chunks the
        weight memory has not absorbed yet are absorbed after the next open. Safe to call
        twice."""
        if not self._closed:
            self._closed = True
            try:
                if self.weights is not None:
                    self.weights.close()
            finally:
                self.notepad.close()

    def flush(self) -> None:
        """Wait until the weight memory has absorbed every stored chunk, then write everything
        pending to disk (the vector index file, the weight snapshots)."""
        self._live()
        if self.weights is not None:
            self.weights.flush()
        self.notepad.save_index()

    def _live(self) -> None:
        if self._closed:
            raise MemsdkError(f"memory {self.path} is closed: open it again with HybridMemory.open")

    def _scope_id(self, scope: Any, *, create: bool) -> int | None:
        self._live()
        key = _check_scope(scope).key()
        if create:
            return self.notepad.sql.ensure_scope(key)
        return self.notepad.sql.find_scope(key)

    # ---- writing -----------------------------------------------------------------------------

    def add(
        self, text: str | bytes, *, scope: Scope, metadata: Mapping[str, Any] | None = None
    ) -> AddResult:
        """Store one text (a fact, a ticket, a note). A long text is cut into several chunks.

        Raises:
            InputError: ``text`` is not str/bytes, is empty or blank, or is larger than
                ``config.max_text_bytes``; bad metadata or scope.
        """
        data = _to_bytes(text, "text")
        if not data.strip():
            raise InputError("text is empty or only white space: there is nothing to remember")
        if len(data) > self.config.max_text_bytes:
            raise InputError(
                f"text is {len(data)} bytes, add() takes at most {self.config.max_text_bytes}: "
                "stream large content with ingest()"
            )
        meta = validate_metadata(metadata)
        scope_id = self._scope_id(scope, create=True)
        assert scope_id is not None
        ids, doc_id, dups = self._ingest_stream(scope_id, "<add>", iter([data]), meta)
        return AddResult(ids=ids, document_id=doc_id, duplicates_skipped=dups)

    def ingest(
        self,
        source: str | os.PathLike[str] | BinaryIO | TextIO | Iterable[str | bytes],
        *,
        scope: Scope,
        metadata: Mapping[str, Any] | None = None,
        name: str | None = None,
        progress: bool = False,
    ) -> IngestReport:
        """Stream documents into the notepad: a file, a directory (recursively, hidden entries
        skipped), a file object, or an iterable of str/bytes pieces forming one stream.

        Nothing is read whole: the stream is chunked as it arrives (whole lines, byte offsets
        kept), exact duplicate chunks of the scope are skipped, and each batch is embedded and
        committed in one transaction, so an interrupted ingest keeps what it committed and
        running it again completes it. Binary files (a NUL byte in the first 8 KiB) and empty
        files are skipped and listed in the report.

        Args:
            metadata: stored on every chunk of these documents (filterable).
            name: the document name for a file object or iterable.
            progress: show a progress bar in bytes.

        Raises:
            NotFoundError: the path does not exist.
            InputError: an unsupported source, a text file object with undecodable bytes, bad
                metadata or scope.
        """
        started = time.perf_counter()
        meta = validate_metadata(metadata)
        sources = _sources(source, name)
        scope_id = self._scope_id(scope, create=True)
        assert scope_id is not None
        sizes = [s.size for s in sources]
        total = sum(sizes) if sizes and None not in sizes else None  # type: ignore[arg-type]
        documents, chunks, read, dups = [], 0, 0, 0
        skipped: list[SkippedSource] = []
        with progress_bar(progress, total=total, desc="ingest", unit="B", unit_scale=True) as bar:
            for src in sources:
                try:
                    blocks = src.blocks()
                    first = next(blocks, b"")
                except OSError as e:
                    skipped.append(SkippedSource(source=src.name, reason=f"unreadable: {e}"))
                    logger.warning("skipping %s: %s", src.name, e)
                    continue
                if not first:
                    skipped.append(SkippedSource(source=src.name, reason="empty"))
                    continue
                if src.sniff and b"\x00" in first[:SNIFF_BYTES]:
                    skipped.append(SkippedSource(source=src.name, reason="binary (NUL bytes)"))
                    logger.info("skipping binary file %s", src.name)
                    bar.update(src.size or len(first))
                    continue
                stream = _Counted(first, blocks, bar.update)
                ids, doc_id, d = self._ingest_stream(scope_id, src.name, stream, meta)
                read += stream.seen
                chunks += len(ids)
                dups += d
                if doc_id is not None:
                    documents.append(doc_id)
        self.notepad.save_index(min_interval_s=self.config.index_save_interval_s)
        return IngestReport(
            documents=len(documents),
            chunks=chunks,
            bytes=read,
            duplicates_skipped=dups,
            seconds=time.perf_counter() - started,
            document_ids=documents,
            skipped=skipped,
        )

    def _ingest_stream(
        self,
        scope_id: int,
        source: str,
        blocks: Iterable[bytes],
        metadata: dict[str, Any],
    ) -> tuple[list[int], int | None, int]:
        """Chunk, deduplicate, embed and store one document. Returns (new ids, document id or
        None when nothing new was stored, duplicates skipped)."""
        sql = self.notepad.sql
        doc_id = sql.start_document(scope_id, source, metadata)
        hasher = hashlib.sha256()
        size = 0

        def hashed() -> Iterator[bytes]:
            nonlocal size
            for block in blocks:
                hasher.update(block)
                size += len(block)
                yield block

        new_ids: list[int] = []
        dups = 0
        batch: list[RawChunk] = []

        def store() -> None:
            nonlocal dups
            seen: set[str] = set()
            unique = []
            for c in batch:
                h = c.content_hash
                if h not in seen:
                    seen.add(h)
                    unique.append((h, c))
            existing = sql.existing_hashes(scope_id, [h for h, _ in unique])
            fresh = [(h, c) for h, c in unique if h not in existing]
            dups += len(batch) - len(fresh)
            batch.clear()
            if not fresh:
                return
            decoded = [decode_chunk(c.data) for _, c in fresh]
            vectors = self.embedder.embed([t for t, _ in decoded])
            rows = [
                NewChunk(c.seq, c.start_byte, c.end_byte, text, raw, h, metadata, vec)
                for (h, c), (text, raw), vec in zip(fresh, decoded, vectors, strict=True)
            ]
            ids = sql.insert_chunks(scope_id, doc_id, rows)
            dups += sum(i is None for i in ids)
            new_ids.extend(i for i in ids if i is not None)
            self.notepad.sync()
            if self.weights is not None:
                self.weights.notify(scope_id)

        for chunk in chunk_stream(
            hashed(), chunk_bytes=self.config.chunk_bytes, max_line_bytes=self.config.max_line_bytes
        ):
            batch.append(chunk)
            if len(batch) >= self.config.embed_batch_chunks:
                store()
        store()
        kept = sql.finish_document(
            doc_id, size_bytes=size, content_hash=hasher.hexdigest(), duplicates=dups
        )
        return new_ids, (doc_id if kept else None), dups

    def update(
        self,
        memory_id: int,
        *,
        scope: Scope,
        text: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryItem:
        """Replace a memory's text (re-embedded) and/or its metadata; the change is recorded in
        its history.

        Raises:
            NotFoundError: the scope holds no memory ``memory_id``.
            InputError: neither text nor metadata given, or either is invalid.
            DuplicateError: another memory of the scope already holds exactly this text.
        """
        memory_id = _check_id(memory_id)
        if text is None and metadata is None:
            raise InputError("update needs text=, metadata= or both")
        meta = validate_metadata(metadata) if metadata is not None else None
        content_hash = vector = None
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise InputError("text must be a non-empty string")
            data = text.encode("utf-8", "surrogateescape")
            if len(data) > self.config.max_text_bytes:
                raise InputError(
                    f"text is {len(data)} bytes, at most {self.config.max_text_bytes} allowed"
                )
            text, _ = decode_chunk(data)
            content_hash = hashlib.sha256(data).hexdigest()
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None or not self.notepad.sql.get_chunks(scope_id, [memory_id]):
            raise NotFoundError(f"memory {memory_id} not found in {scope}")
        if text is not None:
            vector = self.embedder.embed([text])[0]
        self.notepad.sql.update_chunk(
            scope_id,
            memory_id,
            text_value=text,
            content_hash=content_hash,
            embedding=vector,
            metadata=meta,
        )
        self.notepad.sync()
        return self.get(memory_id, scope=scope)

    def delete(self, memory_id: int, *, scope: Scope) -> None:
        """Delete one memory (its history stays).

        Raises:
            NotFoundError: the scope holds no memory ``memory_id``.
        """
        memory_id = _check_id(memory_id)
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None or not self.notepad.sql.delete_chunks(scope_id, [memory_id]):
            raise NotFoundError(f"memory {memory_id} not found in {scope}")
        self.notepad.sync()

    def delete_all(self, *, scope: Scope) -> int:
        """Delete every memory of the scope; returns how many were deleted."""
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None:
            return 0
        deleted = self.notepad.sql.delete_chunks(scope_id)
        self.notepad.sync()
        self.notepad.save_index()
        if self.weights is not None:
            self.weights.reset(scope_id)  # forgetting everything includes the weights
        return len(deleted)

    # ---- the weight memory -------------------------------------------------------------------

    def _weight_state(self, scope: Scope) -> TTTState:
        """The scope's weight memory as it is now (the initial weights for a scope without
        data). Raises MemsdkError when the memory was opened with weight_memory=False."""
        scope_id = self._scope_id(scope, create=False)
        if self.weights is None:
            raise MemsdkError(
                f"memory {self.path} was opened with weight_memory=False: open it with "
                "MemoryConfig(weight_memory=True) to use the weight memory"
            )
        if scope_id is None:
            return self.weights.initial_state()
        return self.weights.state(scope_id)

    def _query_bytes(self, text: Any, what: str) -> bytes:
        data = _to_bytes(text, what)
        if not data:
            raise InputError(f"{what} is empty: give at least one byte")
        if len(data) > self.config.max_text_bytes:
            raise InputError(
                f"{what} is {len(data)} bytes, at most {self.config.max_text_bytes} are accepted "
                "(config.max_text_bytes)"
            )
        return data

    def bits_per_byte(self, text: str | bytes, *, scope: Scope) -> float:
        """How surprising ``text`` is to the scope's weight memory, in bits per byte (lower:
        more familiar). Scored in a fresh window with the current fast weights; nothing is
        learned from it. Call :meth:`flush` first to include chunks still being absorbed.

        Raises:
            InputError: empty, oversized or non-text input; a bad scope.
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        data = self._query_bytes(text, "text")
        return float(byte_losses(self._weight_state(scope), data).mean())

    def complete(
        self,
        prompt: str | bytes,
        *,
        scope: Scope,
        max_bytes: int = 200,
        stop: str | None = "\n",
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        """Continue ``prompt`` with the scope's weight memory (greedy unless ``temperature``
        > 0). Stops after ``max_bytes`` bytes or at ``stop`` (default: the end of the line;
        None runs to ``max_bytes``). Returns the continuation, without the prompt and without
        the stop string.

        Raises:
            InputError: empty, oversized or non-text prompt; ``max_bytes`` outside
                1..4096; a negative temperature; a bad scope.
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        data = self._query_bytes(prompt, "prompt")
        if not isinstance(max_bytes, int) or not 1 <= max_bytes <= MAX_COMPLETION_BYTES:
            raise InputError(
                f"max_bytes must be an int in 1..{MAX_COMPLETION_BYTES}, got {max_bytes!r}"
            )
        stop_bytes = stop.encode() if stop else None
        out = generate(
            self._weight_state(scope),
            data,
            max_bytes,
            temperature=temperature,
            stop=stop_bytes,
            seed=seed,
        )
        if stop_bytes and out.endswith(stop_bytes):
            out = out[: -len(stop_bytes)]
        return out.decode("utf-8", "replace")

    def reset_weights(self, *, scope: Scope) -> None:
        """Forget what the scope's weight memory learned: back to the initial fast weights.
        The notepad keeps its chunks, and they are not absorbed again; later ingests are.

        Raises:
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        self._weight_state(scope)
        scope_id = self._scope_id(scope, create=False)
        if scope_id is not None:
            self.weights.reset(scope_id)

    # ---- reading -----------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        scope: Scope,
        k: int = 5,
        filters: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        """Find the scope's memories most relevant to ``query``.

        Exact-token search (BM25 over SQLite FTS5) and vector search (FAISS, cosine) each rank
        the scope's chunks that pass ``filters``; the two rankings are fused by reciprocal rank
        (``1 / (rrf_k + rank)`` summed, always below 1). Identifier-like pieces of the query
        (``blk_-1608999687919862906``, ``R02-M1-N0-C:J12-U11``, ``10.2.1.37``) are also looked
        up alone, and a hit's score adds 1 for each of them its text holds verbatim and whole,
        so a chunk with the exact id always outranks chunks that are merely similar.

        Returns:
            up to ``k`` hits, best first; ``[]`` for a scope that holds nothing.

        Raises:
            InputError: empty or oversized query, bad ``k`` or scope.
            FilterError: a malformed filter (see :mod:`memsdk.filters`).
        """
        if not isinstance(query, str) or not query.strip():
            raise InputError("query must be a non-empty string")
        size = len(query.encode("utf-8", "surrogatepass"))
        if size > self.config.max_query_bytes:
            raise InputError(
                f"query is {size} bytes, at most {self.config.max_query_bytes}: search with a "
                "shorter query (raise MemoryConfig.max_query_bytes if you need longer ones)"
            )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InputError(f"k must be an int from 1 to {MAX_K}, got {k!r}")
        notepad = self.notepad
        where = compile_filters(filters, dialect=notepad.sql.dialect)
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None:
            return []
        n = max(k, self.config.search_candidates)
        keyword = notepad.sql.keyword_search(scope_id, query, limit=n, where=where)
        vector = notepad.vector_search(scope_id, self.embedder.embed_query(query), k=n, where=where)
        rrf = self.config.rrf_k
        scores: dict[int, float] = {}
        keyword_rank = {cid: r for r, (cid, _) in enumerate(keyword, 1)}
        vector_rank = {cid: r for r, (cid, _) in enumerate(vector, 1)}
        similarity = dict(vector)
        for ranks in (keyword_rank, vector_rank):
            for cid, r in ranks.items():
                scores[cid] = scores.get(cid, 0.0) + 1.0 / (rrf + r)
        # Each identifier of the query is also looked up on its own, so a chunk that holds it
        # is a candidate even when the rest of the query's words flood the keyword ranking.
        spans = identifier_spans(query)[:MAX_IDENTIFIERS]
        for span in spans:
            if span == query.strip():
                continue  # the whole query is this id: its keyword ranking is already in
            for cid, _ in notepad.sql.keyword_search(scope_id, span, limit=n, where=where):
                scores.setdefault(cid, 0.0)
        records = notepad.sql.get_chunks(scope_id, list(scores))
        patterns = [_whole(span) for span in spans]
        exact = {}
        for cid, rec in records.items():
            matched = sum(p.search(rec.text) is not None for p in patterns)
            exact[cid] = matched > 0
            scores[cid] += matched  # fused scores are < 1: exact identifiers rank first
        order = sorted(records, key=lambda cid: (-scores[cid], cid))[:k]
        return [
            SearchHit(
                **self._item_fields(records[cid], scope),
                score=scores[cid],
                similarity=similarity.get(cid),
                vector_rank=vector_rank.get(cid),
                keyword_rank=keyword_rank.get(cid),
                exact_match=exact[cid],
            )
            for cid in order
        ]

    def get(self, memory_id: int, *, scope: Scope) -> MemoryItem:
        """One memory by id.

        Raises:
            NotFoundError: the scope holds no memory ``memory_id`` (another scope's memory is
                reported exactly like a missing one).
        """
        memory_id = _check_id(memory_id)
        scope_id = self._scope_id(scope, create=False)
        found = self.notepad.sql.get_chunks(scope_id, [memory_id]) if scope_id is not None else {}
        if memory_id not in found:
            raise NotFoundError(f"memory {memory_id} not found in {scope}")
        return MemoryItem(**self._item_fields(found[memory_id], scope))

    def get_all(
        self,
        *,
        scope: Scope,
        filters: Mapping[str, Any] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[MemoryItem]:
        """The scope's memories passing ``filters``, oldest first, ``limit`` at a time."""
        for label, value, low in (("limit", limit, 1), ("offset", offset, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{label} must be an int >= {low}, got {value!r}")
        where = compile_filters(filters, dialect=self.notepad.sql.dialect)
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None:
            return []
        records = self.notepad.sql.list_chunks(scope_id, where=where, limit=limit, offset=offset)
        return [MemoryItem(**self._item_fields(r, scope)) for r in records]

    def history(self, memory_id: int, *, scope: Scope) -> list[HistoryEvent]:
        """Every change to a memory, oldest first (also after it was deleted).

        Raises:
            NotFoundError: the scope never held memory ``memory_id``.
        """
        memory_id = _check_id(memory_id)
        scope_id = self._scope_id(scope, create=False)
        events = self.notepad.sql.history(scope_id, memory_id) if scope_id is not None else []
        if not events:
            raise NotFoundError(f"memory {memory_id} has no history in {scope}")
        return [
            HistoryEvent(
                id=e.id,
                memory_id=e.chunk_id,
                event=e.event,  # type: ignore[arg-type]
                old_text=e.old_text,
                new_text=e.new_text,
                old_metadata=e.old_metadata,
                new_metadata=e.new_metadata,
                created_at=e.created_at,
            )
            for e in events
        ]

    def stats(self) -> MemoryStats:
        """Figures of the whole memory: per scope documents, chunks and bytes; index size."""
        self._live()
        sql = self.notepad.sql
        counts = sql.scope_counts()
        scopes = []
        for scope_id, (tenant, user, agent, run) in sql.scopes():
            docs, chunks, size = counts.get(scope_id, (0, 0, 0))
            scope = Scope(tenant=tenant, user=user or None, agent=agent or None, run=run or None)
            weights = None
            if self.weights is not None:
                figures = self.weights.figures(scope_id)
                weights = WeightFigures(**dataclasses.asdict(figures))
            scopes.append(
                ScopeStats(scope=scope, documents=docs, chunks=chunks, bytes=size, weights=weights)
            )
        index_file = self.notepad.index_path
        return MemoryStats(
            path=str(self.path),
            database=self.notepad.manifest.database,
            format_version=self.notepad.manifest.format_version,
            embedder=self.embedder.name,
            index_vectors=len(self.notepad.index),
            index_bytes=index_file.stat().st_size if index_file.exists() else 0,
            weights_model=self.weights.model_name() if self.weights is not None else None,
            scopes=scopes,
        )

    def rebuild_index(self, *, progress: bool = False) -> int:
        """Rebuild the vector index from the embeddings in SQL; returns the number of vectors."""
        self._live()
        total = len(self.notepad.sql.all_chunk_ids())
        with progress_bar(progress, total=total, desc="rebuild-index", unit="chunk") as bar:
            return self.notepad.rebuild_index(on_batch=bar.update)

    @staticmethod
    def _item_fields(record: ChunkRecord, scope: Scope) -> dict[str, Any]:
        return {
            "id": record.id,
            "text": record.text,
            "raw": record.raw,
            "scope": scope,
            "document_id": record.document_id,
            "source": record.source,
            "seq": record.seq,
            "start_byte": record.start_byte,
            "end_byte": record.end_byte,
            "metadata": record.metadata,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
        }


class _Counted:
    """The blocks ``first, *rest``, counting bytes into ``seen`` and reporting each block."""

    def __init__(self, first: bytes, rest: Iterator[bytes], report: Callable[[int], Any]) -> None:
        self.first, self.rest, self.report, self.seen = first, rest, report, 0

    def __iter__(self) -> Iterator[bytes]:
        for block in itertools.chain((self.first,), self.rest):
            self.seen += len(block)
            self.report(len(block))
            yield block
