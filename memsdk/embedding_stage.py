"""Background embedding: vectors for the chunks a bulk ingest stored without them.

Why a stage: an ingest is bound by the embedder's forward pass (about 20 chunks/s on two
cores), while SQL commits a chunk with its full-text entry hundreds of times faster. So
:meth:`HybridMemory.ingest` acknowledges a batch once SQL holds it (exact search finds it at
once) and leaves its vectors to this stage, beside the weight memory's worker
(:mod:`memsdk.consolidation`), with the same shape: writers only notify the worker, SQL is the
source of truth, ``flush()`` waits for it, and after a crash it resumes from SQL.

Which writes go through it: ``ingest`` (files, directories, streams: the bulk path whose speed
matters). ``add``, ``update`` and document replacement stay inline: they write a few chunks an
agent usually searches for right away by meaning, and a vector computed with the write keeps
``add()`` then ``search()`` unsurprising; ``add(context=...)`` also blends a vector that only
exists during the call.

Crash safety: a pending chunk holds an empty embedding in SQL (:mod:`memsdk.stores.vector_backlog`),
committed with the chunk itself. The worker reads pending chunks in id order, embeds a batch and
stores its vectors in one transaction, each with an ``EMBED`` history event that the FAISS index
replays like any other change. A process killed mid-batch loses only that batch's unsaved work:
the chunks are still pending and the next open (of any process) embeds them. A vector is stored
only while its chunk exists with the same content and no vector, so a chunk deleted or updated
meanwhile never comes back through a late vector.

One process embeds at a time. Every open memory runs a stage, and two processes that open one
memory directory used to embed the same pending chunks (the loser's work wasted, half the
throughput on two cores). Now a stage embeds only while it holds the memory's embedding lease
in SQL (:class:`memsdk.lease.MemoryLease`, the weight leases' table and rules): it takes the
lease when it finds work, renews it while it embeds (between batches, and between the
embedder's forward passes inside a batch), and gives it up when nothing is pending and at
close. The others poll SQL and take the lease over once it is free, lapsed (``lease_s``
without renewal), or held by a process of this machine that has ended (SIGKILL): no wait then.
Should a holder stall past ``lease_s`` and another take over, the vectors are still stored once
(the rule above): work wasted, not wrong.
A flush in a process that does not hold the lease waits for the holder's progress and then
syncs its own index; it raises :class:`~memsdk.errors.BusyError` only when ``wait_s`` pass
without a chunk getting its vector while another process keeps the lease.

Template-shared vectors (:mod:`memsdk.templates`) apply here as they did inline: one cache per
scope, so a vector computed from one scope's text never lands in another scope.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable

import numpy as np

from memsdk.errors import BusyError, MemsdkError
from memsdk.lease import EMBEDDING_LEASE, MemoryLease
from memsdk.stores.background import background_thread
from memsdk.stores.notepad import Notepad
from memsdk.stores.vector_backlog import backlog, pending_chunks, store_vectors
from memsdk.templates import TemplateVectors
from memsdk.worker import Command, closed_error, fail_queued, stop_and_join

__all__ = ["EmbeddingStage"]

logger = logging.getLogger(__name__)

FLUSH_POLL_S = 0.25  # how often a flush checks the progress of another process's stage


class _Dropped(Exception):
    """The batch in flight is dropped, its chunks left pending: another process took the
    embedding lease over (this one stalled past ``lease_s``), or the stage is closing."""


class EmbeddingStage:
    """The worker thread that embeds a memory's pending chunks.

    Args:
        notepad: the memory's notepad (pending chunks are read from its SQL, and its index is
            synced after each stored batch).
        embed: the embedder's batch call, texts -> (n, dim) unit vectors, calling its keyword
            argument ``between`` between two forward passes
            (:meth:`~memsdk.stores.embedder.MiniLMEmbedder.embed`).
        batch_chunks: chunks embedded and stored per transaction (bounds memory and the work
            a kill or a close drops; larger batches sort and pad better).
        share_templates: chunks equal once their variable fields are masked share a vector.
        poll_interval_s: how often an idle worker looks in SQL for pending chunks (written by
            another process, or left by one that was killed).
        lease_s: how long the memory's embedding lease lasts without renewal.
        wait_s: how long :meth:`flush` waits without progress while another process holds
            the lease.
    """

    def __init__(
        self,
        notepad: Notepad,
        embed: Callable[..., np.ndarray],
        *,
        batch_chunks: int = 512,
        share_templates: bool = True,
        poll_interval_s: float = 1.0,
        lease_s: float = 10.0,
        wait_s: float = 60.0,
    ) -> None:
        self.notepad = notepad
        self.embed = embed
        self.batch_chunks = batch_chunks
        self.share_templates = share_templates
        self.poll_interval_s = poll_interval_s
        self.wait_s = wait_s
        self.lease = MemoryLease(notepad.sql, EMBEDDING_LEASE, lease_s=lease_s)
        self.embedded = 0  # chunks this process embedded (and stored, unless raced)
        self._templates: tuple[int, TemplateVectors] | None = None  # (scope id, its cache)
        self._stopping = threading.Event()
        self._accept_lock = threading.Lock()
        self._accepting = True
        self._woken = False
        self._queue: queue.Queue[Command] = queue.Queue(maxsize=1024)
        self._worker = background_thread(self._run, name="memsdk-embedding")
        self._worker.start()  # it first embeds what the last session left pending
        # A memory never closed: stop the worker at exit, before the interpreter tears down
        # torch under a forward pass in flight (which aborts the process).
        self._at_exit = _stopper(weakref.ref(self))
        atexit.register(self._at_exit)

    def notify(self, scope_id: int) -> None:
        """Chunks without vectors were committed for the scope: embed them soon."""
        with self._accept_lock:
            # One wake-up queued at a time: the worker drains SQL, not the queue. Closed: the
            # chunks are embedded after the next open.
            if self._accepting and not self._woken:
                self._woken = True
                self._queue.put(Command("scope", scope_id))

    def flush(self) -> None:
        """Wait until every pending chunk of the memory (this process's and others') has its
        vector in SQL and in the index, embedding them here or, while another process holds
        the embedding lease, waiting for that process.

        Raises:
            MemsdkError: the memory was closed meanwhile (what was embedded is kept).
            BusyError: another process kept the lease and ``wait_s`` passed without a chunk
                getting its vector.
        """
        command = Command("finish")
        with self._accept_lock:
            if not self._accepting:
                raise closed_error()
            self._queue.put(command)
        command.done.wait()
        if command.error is not None:
            raise command.error

    def interrupt(self) -> None:
        """Stop at the next forward pass, dropping the batch in flight (its chunks stay
        pending); a flush waiting for it raises MemsdkError."""
        self._stopping.set()

    def close(self) -> None:
        """Stop at the next forward pass, dropping the batch in flight; what is still pending
        is embedded after the next open. Safe to call twice and from several threads."""
        stop_and_join(self)
        atexit.unregister(self._at_exit)

    # ---- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                command = self._queue.get(timeout=self.poll_interval_s)
            except queue.Empty:
                command = Command("poll")
            if command.kind == "scope":
                with self._accept_lock:
                    self._woken = False
            if command.kind == "stop":
                self._release()
                command.done.set()
                fail_queued(self._queue)
                return
            try:
                if command.kind == "finish":
                    self._finish()
                else:
                    self._drain()
                if command.kind == "finish" and self._stopping.is_set():
                    raise MemsdkError(
                        "the memory was closed while flush() waited for the embedding stage: "
                        "the vectors computed are kept, the rest are computed after the next open"
                    )
            except Exception as exc:
                logger.exception("background embedding failed")
                command.error = exc
            finally:
                command.done.set()

    def _drain(self) -> int:
        """Embed every pending chunk of every scope, oldest scope first, batch by batch, while
        this process holds the embedding lease; returns how many chunks are still pending (0
        when done; the lease is then given up)."""
        sql = self.notepad.sql
        while not self._stopping.is_set():
            pending = backlog(sql)
            if not pending:
                self._release()  # idle: the next process with work takes it at once
                return 0
            left = sum(b.chunks for b in pending.values())
            for scope_id in sorted(pending):
                while not self._stopping.is_set():
                    # The lease before the read: chunks read while another process held it
                    # could be the ones it is embedding.
                    if not self.lease.keep():
                        return left  # another process embeds; it is polled
                    chunks = pending_chunks(sql, scope_id, limit=self.batch_chunks)
                    if not chunks:
                        break
                    try:
                        vectors = self._vectors(scope_id, [c.text for c in chunks])
                    except _Dropped:
                        return left
                    store_vectors(sql, scope_id, chunks, vectors)
                    self.embedded += len(chunks)
                    self.notepad.sync()
        return sum(b.chunks for b in backlog(sql).values())

    def _finish(self) -> None:
        """A flush: drain; while another process holds the lease, wait for its progress (and
        take over when it is gone), then sync the index with the vectors it stored."""
        deadline, last = time.monotonic() + self.wait_s, None
        while (left := self._drain()) and not self._stopping.is_set():
            if last is not None and left < last:
                deadline = time.monotonic() + self.wait_s  # the holder is getting on
            last = left
            if time.monotonic() > deadline:
                holder = self.lease.current_holder()
                raise BusyError(
                    f"the vectors of memory {self.notepad.directory} are computed by another "
                    f"process ({holder or 'unknown'}), and {self.wait_s:.0f} s passed without "
                    f"a chunk getting its vector ({left} pending): flush again once that "
                    "process is idle or closed. A holder that has ended is taken over at once "
                    "if it ran on this machine, otherwise when its lease lapses "
                    f"(MemoryConfig.weights_lease_s, {self.lease.lease_s:g} s)"
                )
            self._stopping.wait(FLUSH_POLL_S)
        self.notepad.sync()

    def _release(self) -> None:
        try:
            self.lease.release()
        except Exception:  # it lapses after lease_s
            logger.exception("giving up the embedding lease failed")

    def _vectors(self, scope_id: int, texts: list[str]) -> np.ndarray:
        if not self.share_templates:
            return self._embed(texts)
        if self._templates is None or self._templates[0] != scope_id:
            self._templates = (scope_id, TemplateVectors(self._embed))
        return self._templates[1].vectors(texts)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """The embedder's call, the lease renewed between its forward passes: a batch on a
        busy machine can take longer than ``lease_s``, and a lapsed lease lets another process
        embed the same chunks. (Calls of 16 texts each, renewed between them, took 10.75 s
        of embedding where one call took 9.8 s on ack_ingest's logs: each slice was sorted
        and padded on its own.) A close is seen there too, so it waits for one forward pass
        rather than the whole batch.

        Raises:
            _Dropped: another process took the lease over meanwhile, or the stage is closing.
        """
        return self.embed(texts, between=self._between_passes)

    def _between_passes(self) -> None:
        if self._stopping.is_set() or not self.lease.keep():
            raise _Dropped


def _stopper(stage: weakref.ref[EmbeddingStage]) -> Callable[[], None]:
    owner = os.getpid()

    def stop() -> None:
        # A forked child inherits the handler but not the worker (and maybe a lock a parent
        # thread held at the fork): the stage is the parent's to stop.
        alive = stage()
        if alive is not None and os.getpid() == owner:
            alive.close()

    return stop
