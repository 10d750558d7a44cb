"""HybridMemory: the public API over one memory directory.

Two memories behind one set of calls: the exact notepad (SQL + FAISS) and, per scope, the
weight memory (a byte-level model whose fast weights absorb the scope's chunks by test-time
training in a background worker, :mod:`memsdk.consolidation`). Every read and write names a
:class:`~memsdk.scope.Scope`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO, TextIO

from memsdk import reading
from memsdk.chunking import decode_chunk
from memsdk.config import MemoryConfig
from memsdk.consolidation import Consolidator, open_weight_memory
from memsdk.embedding_stage import EmbeddingStage
from memsdk.encoding import encode_text
from memsdk.engine import TTTState, byte_losses
from memsdk.errors import InputError, MemsdkError, NotFoundError
from memsdk.figures import memory_stats, vector_lag, weight_lag
from memsdk.filters import compile_filters, string_terms, validate_metadata
from memsdk.forgetting import delete_scope, settle_owed_resets
from memsdk.ingest_stream import ingest_sources, ingest_stream
from memsdk.inputs import MAX_INT, check_id, check_scope, text_to_store, to_bytes
from memsdk.lifecycle import CallGate, gated
from memsdk.progress import progress_bar, wait_showing
from memsdk.recall import Recall
from memsdk.results import (
    AddResult,
    Answer,
    HistoryEvent,
    IngestReport,
    MemoryItem,
    MemoryStats,
    RouterCalibration,
    SearchHit,
    Surprise,
)
from memsdk.scope import Scope
from memsdk.search import check_query, hybrid_search, item_fields
from memsdk.shared_parts import shared_embedder
from memsdk.sources import (
    resolve_sources,
)
from memsdk.stores.background import fresh_thread
from memsdk.stores.notepad import Notepad
from memsdk.stores.vector_backlog import Backlog
from memsdk.timeline import TIME_KEY, parse_time, with_time

__all__ = ["HybridMemory"]

logger = logging.getLogger(__name__)


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
        create: False opens only an existing memory, so that a mistyped path is an error
            instead of a new empty memory (the CLI's read commands open memories so).

    Raises:
        NotFoundError: ``create`` is False and there is no memory at ``path``.
        InputError: ``path`` is a file or a foreign non-empty directory, or not valid text
            (a lone surrogate).
        FormatError: the directory was written by a newer memsdk or another embedder, or its
            manifest is malformed.
        DatabaseCorruptedError: (a FormatError) the SQLite file is damaged; the message names
            the repair.
        ConfigError: ``config.database_url`` is not the database the memory keeps its
            records in (a PostgreSQL memory opened without it, or the other way round).
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
        create: bool = True,
    ) -> None:
        if config is not None and not isinstance(config, MemoryConfig):
            raise InputError(
                f"config must be a MemoryConfig, got {type(config).__name__}: "
                "use MemoryConfig.model_validate(d) for a dict"
            )
        self.config = config or MemoryConfig()
        self.embedder = shared_embedder(self.config.embedding_precision)
        self.notepad = Notepad(
            path,
            database_url=self.config.database_url,
            embedder_name=self.embedder.name,
            dim=self.embedder.dim,
            busy_timeout_s=self.config.busy_timeout_s,
            ivf_threshold=self.config.vector_ivf_threshold,
            text_index_threshold=self.config.text_index_threshold,
            load_index=not rebuild_index,
            create=create,
        )
        self.path = self.notepad.directory
        self._closed = False
        self._gate = CallGate(f"memory {self.path}")
        self._recall = Recall(self)
        try:
            # Embeds what the last session left pending, then what bulk ingests store.
            self.embedding = EmbeddingStage(
                self.notepad,
                self.embedder.embed,
                batch_chunks=self.config.vector_batch_chunks,
                share_templates=self.config.share_template_vectors,
                lease_s=self.config.weights_lease_s,
            )
        except BaseException:
            self.notepad.close()
            raise
        self.weights: Consolidator | None = None
        if self.config.weight_memory:
            try:
                self.weights = open_weight_memory(self.config, self.notepad)
            except BaseException:
                self.embedding.close()
                self.notepad.close()
                raise
        if rebuild_index:
            self.rebuild_index(progress=progress)
        try:
            settle_owed_resets(self)  # a delete-all cut short by a crash
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        config: MemoryConfig | None = None,
        rebuild_index: bool = False,
        progress: bool = False,
        create: bool = True,
    ) -> HybridMemory:
        """Create or reopen the memory at ``path`` (see the class for arguments and errors);
        with ``create=False`` only reopen it."""
        return cls(
            path, config=config, rebuild_index=rebuild_index, progress=progress, create=create
        )

    def __enter__(self) -> HybridMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"HybridMemory({str(self.path)!r}, {state})"

    def close(self) -> None:
        """Save the vector index and the weight deltas and release the database. Chunks the
        weight memory has not absorbed yet are absorbed after the next open. Safe to call
        twice, and from any thread while others are inside calls: calls arriving from now on
        raise MemsdkError, an ingest or a flush in flight stops at its next batch (raising
        MemsdkError; what was committed stays), other calls in flight finish, and close()
        returns once none is left, so nothing writes after it (:mod:`memsdk.lifecycle`)."""
        if os.getpid() != self._gate.owner_pid:
            self._closed = True  # a forked child's copy: the parent's resources stay its own
            return
        if not self._gate.shut_down():
            return
        self._closed = True
        try:
            self.embedding.interrupt()
            if self.weights is not None:
                self.weights.interrupt()  # absorption and a waiting flush stop at their batch
            self._gate.wait_idle()
            try:
                self.embedding.close()
            finally:
                if self.weights is not None:
                    self.weights.close()
        finally:
            self.notepad.close()

    @gated
    def flush(self, *, progress: bool = False) -> None:
        """Wait until every stored chunk has its vector (:mod:`memsdk.embedding_stage`) and
        the weight memory has absorbed it, and until an IVF layout the vector index is training
        in the background is in use (:mod:`memsdk.stores.vector_index`), then write everything
        pending to disk (the vector index file, the weight deltas). ``progress`` shows a bar
        per stage, in bytes.

        Raises:
            MemsdkError: the memory was closed meanwhile.
            BusyError: another process kept a scope's weight lease (see ``Consolidator``), or
                the embedding lease without storing a vector for a minute
                (:mod:`memsdk.embedding_stage`).
        """
        self._live()
        settle_owed_resets(self)
        sql, weights = self.notepad.sql, self.weights
        stages: list[tuple[str, Callable[[], None], Callable[[], Backlog]]] = [
            ("vectors", self.embedding.flush, lambda: vector_lag(sql))
        ]
        if weights is not None:
            stages.append(("weights", weights.flush, lambda: weight_lag(sql, weights)))
        for name, wait, lag in stages:
            wait_showing(wait, lambda lag=lag: lag().bytes, progress=progress, desc=name)
        while not self.notepad.wait_for_layout(timeout=0.25):
            self._gate.check("flush()")  # close() abandons the training; stop waiting for it
        self.notepad.save_index()

    def _live(self) -> None:
        if self._closed:
            raise self._gate.closed_error()

    def _scope_id(self, scope: Any, *, create: bool) -> int | None:
        self._live()
        key = check_scope(scope).key()
        if create:
            return self.notepad.sql.ensure_scope(key, max_scopes=self.config.max_scopes)
        return self.notepad.sql.find_scope(key)

    # ---- writing -----------------------------------------------------------------------------

    @gated
    def add(
        self,
        text: str | bytes,
        *,
        scope: Scope,
        metadata: Mapping[str, Any] | None = None,
        time: datetime | str | None = None,
        context: str | None = None,
    ) -> AddResult:
        """Store one text (a fact, a ticket, a note). A long text is cut into several chunks.

        ``time`` is when it happened (a datetime or an ISO-8601 string; a naive one is UTC),
        kept as metadata ``"time"`` (see :mod:`memsdk.timeline`): ``search`` filters on it and
        ranks memories of a period the query names ("in May 2023") higher.

        ``context`` is text the memory should be found by without being part of it, such as
        the previous turn of a chat: it is embedded with the text and stored beside it for
        full-text search at a lower weight (:mod:`memsdk.context`); a hit is still the text
        alone. :meth:`update` with new text stores and embeds the new text alone.

        A str is stored as its UTF-8 bytes; U+DC80..U+DCFF stand for the raw bytes 0x80..0xFF
        (``surrogateescape``), so text decoded that way round-trips exactly (see
        :mod:`memsdk.encoding`).

        Raises:
            InputError: ``text`` is not str/bytes, is empty or blank, holds another lone
                surrogate, or is larger than ``config.max_text_bytes``; bad metadata, time or
                scope.
        """
        data = text_to_store(text, self.config.max_text_bytes)
        meta = validate_metadata(with_time(metadata, time))
        if context is not None:
            if not isinstance(context, str):
                raise InputError(f"context must be a str, got {type(context).__name__}")
            encoded = encode_text(context, "context")
            if len(encoded) > self.config.max_text_bytes:
                raise InputError(
                    f"context is {len(encoded)} bytes, add() takes at most "
                    f"{self.config.max_text_bytes}: pass the few sentences around the text, "
                    "not a whole document"
                )
            context = decode_chunk(encoded)[0]  # as SQL text holds it (no NUL, valid UTF-8)
        scope_id = self._scope_id(scope, create=True)
        assert scope_id is not None
        ids: list[int] = []
        doc_id, dups = ingest_stream(
            self, scope_id, "<add>", iter([data]), meta, ids, context=context
        )
        return AddResult(ids=ids, document_id=doc_id, duplicates_skipped=dups)

    @gated
    def ingest(
        self,
        source: str | os.PathLike[str] | BinaryIO | TextIO | Iterable[str | bytes],
        *,
        scope: Scope,
        metadata: Mapping[str, Any] | None = None,
        name: str | None = None,
        follow_symlinks: bool = False,
        progress: bool = False,
        cancel: threading.Event | None = None,
    ) -> IngestReport:
        """Stream documents into the notepad: a file, a directory (recursively), a file object,
        or an iterable of str/bytes pieces forming one stream.

        Nothing is read whole: the stream is chunked as it arrives (whole lines, byte offsets
        kept), exact duplicate chunks of the scope are skipped, and each batch is committed in
        one transaction, so an interrupted ingest keeps what it committed and running it again
        completes it. A batch is acknowledged once SQL holds it with its full-text entry: exact
        search finds it at once, and its vectors are computed by the background embedding stage
        (:mod:`memsdk.embedding_stage`; ``MemoryConfig.background_embedding``). Until then vector
        search does not see it (a search hit says ``vectors_pending``); :meth:`flush` waits for
        the stage, :meth:`stats` shows its lag. A directory walk stays inside the directory (see
        :mod:`memsdk.sources`); every entry it does not read is listed in ``report.skipped``
        with its reason: hidden entries, symlinks leading outside, loops, FIFOs, sockets,
        devices, unreadable, binary (a NUL byte in the first 8 KiB), empty and oversized files.

        Args:
            metadata: stored on every chunk of these documents (filterable).
            name: the document name for a file object or iterable. Document names are
                labels: NUL characters and lone surrogates (a file name's undecodable bytes)
                are stored as U+FFFD.
            follow_symlinks: let a directory walk follow symlinks that lead outside it.
            progress: show a progress bar in bytes.
            cancel: set it (from another thread) to stop the ingest before its next block;
                the call then raises MemsdkError, and the batches committed before stay.

        Raises:
            NotFoundError: the path does not exist.
            InputError: an unsupported source, a text file object with undecodable bytes, a
                str piece with a lone surrogate other than U+DC80..U+DCFF (which stand for
                raw bytes), bad metadata or scope.
            Exception: whatever a source raises while it is read (an iterable's own error, an
                ``OSError`` of a file that fails midway): the batches committed before stay, the
                document is recorded as failed in the ledger, and no empty document is left.
        """
        started = time.perf_counter()
        meta = validate_metadata(metadata)
        sources = resolve_sources(source, name, follow_symlinks=follow_symlinks)
        scope_id = self._scope_id(scope, create=True)
        assert scope_id is not None
        report = ingest_sources(self, scope_id, sources, meta, progress=progress, cancel=cancel)
        self.notepad.save_index(min_interval_s=self.config.index_save_interval_s)
        return report.model_copy(update={"seconds": time.perf_counter() - started})

    @gated
    def update(
        self,
        memory_id: int,
        *,
        scope: Scope,
        text: str | bytes | None = None,
        metadata: Mapping[str, Any] | None = None,
        time: datetime | str | None = None,
    ) -> MemoryItem:
        """Replace a memory's text (re-embedded) and/or its metadata; the change is recorded in
        its history. The text is stored exactly as :meth:`add` stores it (str or bytes, the
        exact bytes kept), as one chunk. ``time`` alone sets when the memory happened and keeps
        its other metadata; with ``metadata`` it is added to the new metadata.

        Raises:
            NotFoundError: the scope holds no memory ``memory_id``.
            InputError: neither text nor metadata given, or either is invalid.
            DuplicateError: another memory of the scope already holds exactly this text.
        """
        memory_id = check_id(memory_id)
        if text is None and metadata is None and time is None:
            raise InputError("update needs text=, metadata= or both (or time=, alone or with them)")
        if time is not None and metadata is None:
            metadata = {k: v for k, v in self.get(memory_id, scope=scope).metadata.items()}
            metadata.pop(TIME_KEY, None)
        meta = validate_metadata(with_time(metadata, time)) if metadata is not None else None
        content_hash = vector = raw = None
        if text is not None:
            # The same bytes, text, raw bytes and content hash as add() stores for this input,
            # so an update never changes what was given nor blocks adding it again.
            data = text_to_store(text, self.config.max_text_bytes, "update()")
            text, raw = decode_chunk(data)
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
            raw=raw,
            content_hash=content_hash,
            embedding=vector,
            metadata=meta,
        )
        self.notepad.sync()
        return self.get(memory_id, scope=scope)

    @gated
    def delete(self, memory_id: int, *, scope: Scope) -> None:
        """Delete one memory (its history stays).

        Raises:
            NotFoundError: the scope holds no memory ``memory_id``.
        """
        memory_id = check_id(memory_id)
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None or not self.notepad.sql.delete_chunks(scope_id, [memory_id]):
            raise NotFoundError(f"memory {memory_id} not found in {scope}")
        self.notepad.sync()

    @gated
    def delete_all(self, *, scope: Scope) -> int:
        """Delete every memory of the scope, and reset its weight memory and router policy
        (they learned from that data); returns how many memories were deleted. Should the
        process die or the reset fail after the memories are deleted, the next open (or
        :meth:`flush`) finishes the reset.

        Raises:
            BusyError: another process kept the scope's weight lease (the reset stays owed).
        """
        return delete_scope(self, check_scope(scope))

    # ---- the weight memory -------------------------------------------------------------------

    def _weight_state(self, scope: Scope) -> TTTState:
        """The scope's weight memory as it is now (the initial weights for a scope without
        data). Raises MemsdkError when the memory was opened with weight_memory=False."""
        scope_id = self._scope_id(scope, create=False)
        weights = self._require_weights()
        if scope_id is None:
            return weights.initial_state()
        return weights.state(scope_id)

    def _require_weights(self) -> Consolidator:
        if self.weights is None:
            raise MemsdkError(
                f"memory {self.path} was opened with weight_memory=False: open it with "
                "MemoryConfig(weight_memory=True) to use the weight memory"
            )
        return self.weights

    def _score_bytes(self, text: Any, what: str, call: str) -> bytes:
        """``text`` as the bytes a scoring call reads: not empty, at most
        ``config.max_score_bytes`` (scoring time and memory grow with the text)."""
        data = to_bytes(text, what)
        if not data:
            raise InputError(f"{what} is empty: give at least one byte")
        limit = self.config.max_score_bytes
        if len(data) > limit:
            raise InputError(
                f"{what} is {len(data)} bytes, {call} scores at most {limit} in one call "
                "(MemoryConfig.max_score_bytes): score it in pieces of at most that size, or "
                "raise the limit"
            )
        return data

    @gated
    @fresh_thread
    def bits_per_byte(self, text: str | bytes, *, scope: Scope) -> float:
        """How surprising ``text`` is to the scope's weight memory, in bits per byte (lower:
        more familiar). Scored in a fresh window with the current fast weights; nothing is
        learned from it. Call :meth:`flush` first to include chunks still being absorbed.

        Raises:
            InputError: empty or non-text input, or more than ``config.max_score_bytes``; a
                bad scope.
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        data = self._score_bytes(text, "text", "bits_per_byte()")
        return float(byte_losses(self._weight_state(scope), data).mean())

    @gated
    @fresh_thread
    def complete(
        self,
        prompt: str | bytes,
        *,
        scope: Scope,
        max_bytes: int = 200,
        stop: str | bytes | None = "\n",
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        """Continue ``prompt`` with the scope's weight memory (greedy unless ``temperature``
        > 0). Stops after ``max_bytes`` bytes or at ``stop`` (default: the end of the line;
        None or empty runs to ``max_bytes``). Returns the continuation, without the prompt and
        without the stop string.

        Args:
            max_bytes: the longest continuation, 1..4096 bytes.
            stop: a str (encoded as UTF-8, as the prompt is) or bytes, matched against the
                continuation's bytes.
            temperature: 0 for greedy decoding, else a finite number > 0.
            seed: the sampling seed (an int in 0..2**64-1); None samples from torch's global
                generator.

        Raises:
            InputError: an empty or non-text prompt, or one of more than
                ``config.max_score_bytes``; ``max_bytes``, ``stop``, ``temperature`` or
                ``seed`` of the wrong type or out of range; a bad scope.
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        data = self._score_bytes(prompt, "prompt", "complete()")
        return reading.complete(
            self._weight_state(scope),
            data,
            max_bytes=max_bytes,
            stop=stop,
            temperature=temperature,
            seed=seed,
        )

    @gated
    @fresh_thread
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

    @gated
    def compact_weights(self, *, scope: Scope | None = None) -> int:
        """Merge the chain of session deltas of ``scope`` (default: every scope) into one delta
        from the initial weights, removing the older files; what was absorbed is kept up to
        4-bit rounding. Returns how many scopes were compacted.

        Raises:
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        self._live()
        weights = self._require_weights()
        if scope is not None:
            scope_id = self._scope_id(scope, create=False)
            scope_ids = [] if scope_id is None else [scope_id]
        else:
            scope_ids = [scope_id for scope_id, _ in self.notepad.sql.scopes()]
        for scope_id in scope_ids:
            weights.compact(scope_id)
        return len(scope_ids)

    # ---- routed queries ----------------------------------------------------------------------

    @gated
    @fresh_thread
    def surprise(self, text: str | bytes, *, scope: Scope, weights: str = "adapted") -> Surprise:
        """How novel each line of ``text`` is to the scope's memory: bits per byte per line
        (each line with its newline), scored in one pass so every line sees the lines before
        it in the window. High values flag lines unlike anything the scope absorbed (anomalies,
        new templates). Nothing is learned from ``text``.

        Args:
            weights: ``"adapted"`` (the scope's fast weights) or ``"initial"`` (the weights
                before any of the scope's data: the baseline to compare against).

        Raises:
            InputError: empty or non-text input, or more than ``config.max_score_bytes``; an
                unknown ``weights``; a bad scope.
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        data = self._score_bytes(text, "text", "surprise()")
        if weights not in ("adapted", "initial"):
            raise InputError(f"weights must be 'adapted' or 'initial', got {weights!r}")
        state = self._weight_state(scope)
        if weights == "initial":
            state = self.weights.initial_state()  # type: ignore[union-attr]
        return reading.surprise(state, data, weights)

    @gated
    @fresh_thread
    def query(
        self,
        query: str,
        *,
        scope: Scope,
        route: str = "auto",
        k: int = 5,
        filters: Mapping[str, Any] | None = None,
        max_bytes: int = 200,
    ) -> Answer:
        """Answer ``query`` from the memory that holds the answer: the notepad, the weights, or
        both, decided per query by the router (or forced with ``route``).

        The query is a prompt to continue, like the first words of a log line or a fact
        (``"blk_-1608999687919862906 was"``). The notepad is searched (:meth:`search`, with
        ``filters``); the router reads cheap features of the query and the hits (identifiers
        held verbatim, similarity, how familiar the query is to the scope's weights, how much
        of the scope is not absorbed yet) and picks a branch with the scope's calibrated
        policy (:meth:`calibrate_router`) or the shipped default. The completion is the
        weight memory's greedy continuation of the query up to the end of the line, with the
        match model of :mod:`memsdk.engine.copy` mixed in (a passage line the query repeats
        is continued as it was written):

        - ``notepad``: with the passage lines most relevant to the query in the window, read
          by the initial weights;
        - ``weights``: the query alone, read by the scope's fast weights;
        - ``both``: the passage lines, read by the scope's fast weights.

        A scope that holds nothing gets an empty answer (no passages, empty completion,
        ``route.reason`` says so). With ``weight_memory=False`` the notepad answers alone and
        the completion is empty.

        Args:
            route: ``"auto"``, or a branch to force (``"weights"`` skips the notepad search).
            k: passages to return (1..1000).
            filters: metadata filters for the notepad search (see :meth:`search`).
            max_bytes: the longest completion in bytes (1..4096).

        Raises:
            InputError: an empty or oversized query (``max_query_bytes``, and with the weight
                memory ``max_score_bytes``), an unknown route, a bad ``k``,
                ``max_bytes`` or scope.
            FilterError: a malformed filter.
            MemsdkError: ``route`` is ``weights`` or ``both`` on a memory opened with
                ``weight_memory=False``.
        """
        return self._recall.query(
            query, scope=scope, route=route, k=k, filters=filters, max_bytes=max_bytes
        )

    @gated
    @fresh_thread
    def calibrate_router(
        self,
        *,
        scope: Scope,
        probes: int = 200,
        seed: int = 0,
        progress: bool = False,
    ) -> RouterCalibration:
        """Fit the scope's router on probes made from its own data, and store it with the
        memory (``router/scope-<id>.json``); later queries of the scope use it.

        Probes come in two kinds (:func:`memsdk.router.make_probes`): needles (a line cut
        after an identifier found in one chunk only; the answer is the rest of the line) and
        patterns (a line of a frequent shape cut early). They are scored before the weights
        learn them: the scope's newest data (at most 256 KiB,
        ``memsdk.recall.CALIBRATION_REPLAY_BYTES``) is replayed into a fresh state, needles
        come from its first three quarters, which the state absorbs, and patterns from the
        last quarter, which neither the state nor the probes' retrieval sees. Each branch is
        scored by the bits per byte of the probe's answer, and a policy is fitted to minimise
        them (:func:`memsdk.router.fit_policy`).
        The weight memory is flushed first.

        Args:
            probes: how many probes to make at most (half needles, half patterns).
            seed: picks the sampled lines.

        Raises:
            NotFoundError: the scope holds no data.
            InputError: the scope's data yields fewer than 20 probes (too little or too
                uniform data); bad arguments.
            MemsdkError: the memory was opened with ``weight_memory=False``.
        """
        return self._recall.calibrate(scope=scope, probes=probes, seed=seed, progress=progress)

    # ---- reading -----------------------------------------------------------------------------

    @gated
    def search(
        self,
        query: str,
        *,
        scope: Scope,
        k: int = 5,
        filters: Mapping[str, Any] | None = None,
        now: datetime | str | None = None,
    ) -> list[SearchHit]:
        """Find the scope's memories most relevant to ``query``.

        Exact-token search (BM25 over SQLite FTS5, on the query without its question words)
        and vector search (FAISS, cosine) each rank the scope's chunks that pass ``filters``;
        the two rankings are fused by weighted reciprocal rank (``weight / (rrf_k + rank)``
        summed, with ``config.keyword_weight`` and ``config.vector_weight`` scaled to sum to 2;
        below 1). A query naming a period ("in May 2023", or relative to ``now``: "last week",
        "yesterday", "last May", "two months ago") raises memories whose ``time`` falls in it
        (:mod:`memsdk.search`, :mod:`memsdk.timeline`). ``now`` is when the question is asked
        (a datetime or an ISO-8601 string; default: the current time). Memories that carry a
        metadata ``"session"`` rank with their session: each gains a share of the best other
        candidate of its session (:data:`memsdk.search.SESSION_SHARE`). Identifier-like pieces
        of the query (``blk_-1608999687919862906``, ``R02-M1-N0-C:J12-U11``, ``10.2.1.37``) are
        also looked up alone, and a hit's score adds 1 for each of them its text holds verbatim
        and whole, so a chunk with the exact id always outranks chunks that are merely similar.

        Returns:
            up to ``k`` hits, best first; ``[]`` for a scope that holds nothing.

        Raises:
            InputError: empty or oversized query, bad ``k``, scope or ``now``.
            FilterError: a malformed filter (see :mod:`memsdk.filters`).
        """
        check_query(query, k, max_query_bytes=self.config.max_query_bytes)
        asked = parse_time(now, "now") if now is not None else datetime.now(UTC)
        dialect = self.notepad.sql.dialect
        where = compile_filters(filters, dialect=dialect)
        probe = compile_filters(filters, dialect=dialect, correlated=True)
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None:
            return []
        terms = string_terms(filters)
        return hybrid_search(
            self, query, scope, scope_id, k, where, probe=probe, terms=terms, now=asked
        )

    @gated
    def get(self, memory_id: int, *, scope: Scope) -> MemoryItem:
        """One memory by id.

        Raises:
            NotFoundError: the scope holds no memory ``memory_id`` (another scope's memory is
                reported exactly like a missing one).
        """
        memory_id = check_id(memory_id)
        scope_id = self._scope_id(scope, create=False)
        found = self.notepad.sql.get_chunks(scope_id, [memory_id]) if scope_id is not None else {}
        if memory_id not in found:
            raise NotFoundError(f"memory {memory_id} not found in {scope}")
        return MemoryItem(**item_fields(found[memory_id], scope))

    @gated
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
            if value > MAX_INT:
                raise InputError(
                    f"{label} is {value}, larger than the databases take (2**63 - 1): page "
                    "with smaller limits and offsets"
                )
        where = compile_filters(filters, dialect=self.notepad.sql.dialect)
        scope_id = self._scope_id(scope, create=False)
        if scope_id is None:
            return []
        records = self.notepad.sql.list_chunks(scope_id, where=where, limit=limit, offset=offset)
        return [MemoryItem(**item_fields(r, scope)) for r in records]

    @gated
    def history(self, memory_id: int, *, scope: Scope) -> list[HistoryEvent]:
        """Every change to a memory, oldest first (also after it was deleted).

        Raises:
            NotFoundError: the scope never held memory ``memory_id``.
        """
        memory_id = check_id(memory_id)
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

    @gated
    def stats(self) -> MemoryStats:
        """Figures of the whole memory: per scope documents, chunks and bytes, how far the
        vectors and the weights lag behind; the index's size and layout."""
        self._live()
        return memory_stats(self)

    @gated
    def rebuild_index(self, *, progress: bool = False) -> int:
        """Rebuild the vector index from the embeddings in SQL; returns the number of vectors."""
        self._live()
        total = len(self.notepad.sql.all_chunk_ids())
        with progress_bar(progress, total=total, desc="rebuild-index", unit="chunk") as bar:
            return self.notepad.rebuild_index(on_batch=bar.update)
