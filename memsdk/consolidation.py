"""Background consolidation: every scope's notepad chunks, streamed into its weight memory.

SQL is the source of truth. Each scope's :class:`~memsdk.engine.TTTState` remembers the id of
the last chunk it absorbed (``through_chunk_id``, saved inside its snapshot); the worker streams
the scope's newer chunks in id order, which is ingest order. Writers only *notify* the worker
(a bounded queue of scope ids and commands), so agent code never waits for training and no
ingested text is held twice in memory. After a crash, or when the model changed, a scope simply
resumes from the chunk after its snapshot's ``through_chunk_id``.

One worker thread is the only writer of the states. Readers (scoring, completion) use a state's
fast weights as they are: each inner step replaces the fast-weight dict, never edits it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from memsdk.engine import ByteLM, TTTState, stream
from memsdk.errors import FormatError
from memsdk.stores.sql import SQLStore
from memsdk.stores.weights import WeightSnapshots

__all__ = ["Consolidator", "ScopeWeights"]

logger = logging.getLogger(__name__)

THROUGH = "through_chunk_id"


@dataclass
class _Command:
    kind: str  # "scope" (consolidate), "finish", "reset", "stop"
    scope_id: int | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass(frozen=True)
class ScopeWeights:
    """Weight-memory figures of one scope."""

    bytes_absorbed: int
    steps: int
    rejected_steps: int
    through_chunk_id: int
    drift: float
    snapshot_bytes: int


class Consolidator:
    """Owns the per-scope states of one memory and the worker thread that trains them.

    Args:
        sql: the memory's SQL store (chunks are read from it).
        snapshots: where the states are saved.
        model: the frozen weight-memory model shared by every scope.
        batch_chunks: chunks read from SQL per inner-loop batch (bounds memory and the delay
            of :meth:`close`).
        save_interval_s: how often changed states are saved while the worker is busy.
        queue_size: bound of the command queue.
    """

    def __init__(
        self,
        sql: SQLStore,
        snapshots: WeightSnapshots,
        model: ByteLM,
        *,
        batch_chunks: int = 16,
        save_interval_s: float = 30.0,
        queue_size: int = 1024,
    ) -> None:
        self.sql = sql
        self.snapshots = snapshots
        self.model = model
        self.batch_chunks = batch_chunks
        self.save_interval_s = save_interval_s
        self._states: dict[int, TTTState] = {}
        self._initial: TTTState | None = None
        self._states_lock = threading.Lock()
        self._queued: set[int] = set()
        self._queued_lock = threading.Lock()
        self._dirty: set[int] = set()
        self._last_save = time.monotonic()
        self._stopping = threading.Event()
        self._queue: queue.Queue[_Command] = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._run, name="memsdk-consolidation", daemon=True)
        self._worker.start()
        for scope_id, newest in sql.newest_chunk_ids().items():
            if newest > self._through(self.state(scope_id)):
                self.notify(scope_id)  # resume what the last session did not absorb

    # ---- called by HybridMemory ------------------------------------------------------------

    def state(self, scope_id: int) -> TTTState:
        """The scope's state, loaded from its snapshot on first use (a fresh one if none, or
        if the snapshot is unreadable or belongs to another model: it is then rebuilt from
        the notepad's chunks)."""
        with self._states_lock:
            state = self._states.get(scope_id)
            if state is None:
                state = self._load(scope_id)
                self._states[scope_id] = state
            return state

    def notify(self, scope_id: int) -> None:
        """New chunks were committed for the scope: consolidate them soon."""
        with self._queued_lock:
            if scope_id in self._queued:
                return
            self._queued.add(scope_id)
        self._queue.put(_Command("scope", scope_id))

    def flush(self) -> None:
        """Wait until every committed chunk is absorbed (the last partial chunk included) and
        every changed state is saved."""
        self._call(_Command("finish"))

    def reset(self, scope_id: int) -> None:
        """Back to the initial fast weights; chunks already stored are not absorbed again."""
        self._call(_Command("reset", scope_id))

    def close(self) -> None:
        """Stop after the current batch and save every changed state. What was not absorbed
        yet is absorbed after the next open. Safe to call twice."""
        if not self._worker.is_alive():
            return
        self._stopping.set()
        self._queue.put(_Command("stop"))
        self._worker.join()

    def initial_state(self) -> TTTState:
        """A state with the initial fast weights, for scopes that hold nothing yet."""
        with self._states_lock:
            if self._initial is None:
                self._initial = TTTState(self.model)
            return self._initial

    def model_name(self) -> str:
        card = getattr(self.model, "card", {}) or {}
        return f"{card.get('name', 'custom')} ({self.initial_state().model_fingerprint})"

    def figures(self, scope_id: int) -> ScopeWeights:
        state = self.state(scope_id)
        return ScopeWeights(
            bytes_absorbed=state.position + len(state.pending),
            steps=state.steps,
            rejected_steps=state.rejected_steps,
            through_chunk_id=self._through(state),
            drift=state.drift(),
            snapshot_bytes=self.snapshots.size(scope_id),
        )

    # ---- the worker ------------------------------------------------------------------------

    def _call(self, command: _Command) -> None:
        if not self._worker.is_alive():
            raise RuntimeError("the consolidation worker has stopped")
        self._queue.put(command)
        command.done.wait()
        if command.error is not None:
            raise command.error

    @staticmethod
    def _through(state: TTTState) -> int:
        return int(state.extra.get(THROUGH, "0"))

    def _load(self, scope_id: int) -> TTTState:
        data = self.snapshots.read(scope_id)
        if data is not None:
            try:
                return TTTState.from_bytes(
                    data, self.model, source=str(self.snapshots.path(scope_id))
                )
            except FormatError as exc:
                logger.warning("rebuilding the weight memory of scope %s: %s", scope_id, exc)
        return TTTState(self.model)

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            try:
                if command.kind == "stop":
                    self._save(force=True)
                    return
                if command.kind == "scope":
                    with self._queued_lock:
                        self._queued.discard(command.scope_id)
                    self._consolidate(command.scope_id)
                    self._save(force=False)
                elif command.kind == "finish":
                    self._finish()
                elif command.kind == "reset":
                    self._reset(command.scope_id)
            except Exception as exc:
                logger.exception("weight consolidation failed")
                command.error = exc
            finally:
                command.done.set()

    def _consolidate(self, scope_id: int) -> None:
        state = self.state(scope_id)
        while not self._stopping.is_set():
            rows = self.sql.chunk_bytes_after(scope_id, self._through(state), self.batch_chunks)
            if not rows:
                return
            stream(state, b"".join(data for _, data in rows))
            state.extra[THROUGH] = str(rows[-1][0])
            self._dirty.add(scope_id)
            self._save(force=False)

    def _finish(self) -> None:
        """Drain every scope with unabsorbed chunks, stream partial chunks, save."""
        for scope_id, newest in self.sql.newest_chunk_ids().items():
            if newest > self._through(self.state(scope_id)):
                self._consolidate(scope_id)
        with self._states_lock:
            states = dict(self._states)
        for scope_id, state in states.items():
            if state.pending:
                stream(state, b"", final=True)
                self._dirty.add(scope_id)
        self._save(force=True)

    def _reset(self, scope_id: int) -> None:
        state = self.state(scope_id)
        state.reset()
        newest = self.sql.newest_chunk_ids().get(scope_id, 0)
        state.extra[THROUGH] = str(max(newest, self._through(state)))
        self._dirty.add(scope_id)
        self._save(force=True)

    def _save(self, *, force: bool) -> None:
        if not self._dirty or (
            not force and time.monotonic() - self._last_save < self.save_interval_s
        ):
            return
        for scope_id in sorted(self._dirty):
            self.snapshots.write(scope_id, self.state(scope_id).to_bytes())
        self._dirty.clear()
        self._last_save = time.monotonic()
