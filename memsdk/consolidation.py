"""Background consolidation: every scope's notepad chunks, streamed into its weight memory.

SQL is the source of truth. Each scope's :class:`~memsdk.engine.TTTState` remembers the id of
the last chunk it absorbed (``through_chunk_id``, saved inside its delta); the worker streams
the scope's newer chunks in id order, which is ingest order. Writers only *notify* the worker
(a bounded queue of scope ids and commands), so agent code never waits for training and no
ingested text is held twice in memory. After a crash, or when the model changed, a scope simply
resumes from the chunk after its newest delta's ``through_chunk_id``. Scopes with chunks
waiting are absorbed together, oldest notice first, up to :data:`SCOPES_PER_BATCH` at a time:
their chunks run through the model as batches (:func:`memsdk.retention.absorb_rows_many`),
each scope ending as if absorbed alone.

Sessions: a scope's weight memory is saved as a chain of 4-bit deltas
(:mod:`memsdk.engine.delta`). Each open of the memory is a session; each of its saves (on a
schedule, when idle and at close) writes a delta relative to the weights the session started
from under the next version number, names the version before the session as its parent, and
removes the session's previous save. Opening merges the chain in order, so a third session
starts with what the first two absorbed. When a chain would grow past ``max_deltas`` files, the
save writes one delta relative to the initial weights instead and removes the older files
(compaction); a file no chain names (left by a crash mid-compaction) is removed then too.

One writer per scope: a scope's weight memory is trained and saved only by the process holding
the scope's lease (:mod:`memsdk.lease`). The worker takes the lease when it has work for the
scope, renews it every batch and before every save, and gives it up, after saving, once it has
been idle for ``poll_interval_s``. Taking a lease reloads the scope's deltas when another
process saved since this one last read them, so no process trains from, or saves over, a stale
state. Without the lease a process reads the newest saved deltas (reloading them when they
change) and leaves the training to the holder; its idle worker polls SQL and takes over the
scopes whose chunks nobody has absorbed.

States are loaded when used and kept under a budget (``max_loaded_states``, least recently
used first out): a memory of many scopes holds only those in use. Which scopes have chunks to
absorb is read from each newest delta's header (``through_chunk_id``, and the size of its
partial-chunk buffer), without loading a state, and by the worker, so that opening a memory
does not depend on how many scopes it holds. The worker alone evicts states, between batches
and when idle; a changed state is saved before it is dropped.

One worker thread per process is the only writer of its states. Readers (scoring, completion)
use a state's fast weights as they are: each inner step replaces the fast-weight dict, never
edits it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from torch import Tensor

from memsdk.config import MemoryConfig
from memsdk.delta_chains import DeltaChains
from memsdk.engine import (
    ByteLM,
    TTTConfig,
    TTTState,
    make_delta,
    restore_state,
)
from memsdk.engine.delta import header_int
from memsdk.engine.ttt import FISHER_MASKED_INNER_LR
from memsdk.errors import DatabaseCorruptedError, FormatError, MemsdkError
from memsdk.lease import WeightLeases
from memsdk.retention import (
    BATCHED_METHODS,
    RetentionConfig,
    RowsToAbsorb,
    SQLHistory,
    absorb_rows_many,
    flush_slot,
    rehearsal_steps,
    slot_sources,
)
from memsdk.shared_parts import shared_model
from memsdk.stores.background import TRAINING_NICE, background_thread
from memsdk.stores.sql import SQLStore
from memsdk.stores.weights import WeightDeltas, WeightSnapshots
from memsdk.worker import Command, closed_error, fail_queued, stop_and_join

if TYPE_CHECKING:
    from memsdk.stores.notepad import Notepad

__all__ = ["Consolidator", "ScopeWeights", "open_weight_memory"]

logger = logging.getLogger(__name__)

THROUGH = "through_chunk_id"
RELOAD_ATTEMPTS = 3  # a chain read while another process compacts it: read it again
# Scopes absorbed together, their chunks run as batches (memsdk.engine.stream_many). On two
# CPU cores, in a thread like this worker's, 4 scopes streamed 1.52 times as fast as one after
# another, 16 scopes 1.62 times, 64 scopes 1.40 times; this worker absorbed 16 scopes 1.74
# times as fast (benchmarks/batched_streams.py).
SCOPES_PER_BATCH = 16


@dataclass(frozen=True)
class ScopeWeights:
    """Weight-memory figures of one scope."""

    bytes_absorbed: int
    steps: int
    rejected_steps: int
    through_chunk_id: int
    drift: float
    deltas: int
    delta_bytes: int
    saved_at: datetime | None
    retention: str = "none"
    rehearsal_steps: int = 0
    sources_held: int = 0
    slots: int = 1
    slot_sources: dict[str, int] = field(default_factory=dict)


@dataclass
class _Session:
    """This session's saves of one scope: deltas relative to ``base`` (the weights after
    merging ``parent``'s chain of ``depth`` files; 0: none)."""

    parent: int
    depth: int
    base: dict[str, Tensor]


class Consolidator:
    """Owns the per-scope states of one memory and the worker thread that trains them.

    Args:
        sql: the memory's SQL store (chunks are read from it).
        deltas: where the states are saved, as chains of deltas.
        snapshots: full-state snapshots of memories written before deltas: read once, then
            replaced by a delta.
        model: the frozen weight-memory model shared by every scope.
        ttt_config: inner-loop settings of new states (default: the model's tuned ones).
        delta_keep: fraction of each fast weight's changed entries a delta keeps (by Fisher).
        max_deltas: longest chain of delta files before a save compacts it into one.
        batch_chunks: chunks read from SQL per inner-loop batch (bounds memory and the delay
            of :meth:`close`).
        save_interval_s: how often changed states are saved while the worker is busy.
        lease_s: how long a scope's lease lasts without renewal.
        wait_s: how long :meth:`flush`, :meth:`reset` and :meth:`compact` wait for a lease that
            another process holds before raising :class:`~memsdk.errors.BusyError`.
        poll_interval_s: idle time after which the worker saves, gives its leases up and
            looks for chunks nobody has absorbed (written by other processes).
        queue_size: bound of the command queue.
        max_loaded_states: how many scopes' states stay in memory (about 0.8 MB each with
            the shipped model); the least recently used beyond it are saved and dropped.
        memory_id: the memory's identity, written into every delta; a delta that names
            another memory is not merged (the scope is rebuilt from the notepad's chunks).
        retention: how each scope's weights keep older sources (:mod:`memsdk.retention`).
    """

    def __init__(
        self,
        sql: SQLStore,
        deltas: WeightDeltas,
        snapshots: WeightSnapshots,
        model: ByteLM,
        *,
        ttt_config: TTTConfig | None = None,
        delta_keep: float = 1.0,
        max_deltas: int = 8,
        batch_chunks: int = 16,
        save_interval_s: float = 30.0,
        lease_s: float = 10.0,
        wait_s: float = 60.0,
        poll_interval_s: float = 1.0,
        queue_size: int = 1024,
        max_loaded_states: int = 128,
        memory_id: str = "",
        retention: RetentionConfig | None = None,
    ) -> None:
        self.sql = sql
        self.memory_id = memory_id
        self.deltas = deltas
        self.chains = DeltaChains(deltas, model, memory_id)
        self.snapshots = snapshots
        self.model = model
        self.ttt_config = ttt_config or getattr(model, "default_ttt", None) or TTTConfig()
        self.delta_keep = delta_keep
        self.max_deltas = max_deltas
        self.retention = retention or RetentionConfig()
        self._rng = random.Random(self.retention.seed)
        self._sessions: dict[int, _Session] = {}
        self.batch_chunks = batch_chunks
        self.save_interval_s = save_interval_s
        self.poll_interval_s = poll_interval_s
        self.leases = WeightLeases(sql, lease_s=lease_s, wait_s=wait_s)
        self._seen: dict[int, tuple[int, ...]] = {}  # deltas on disk as last loaded or saved
        self._waiting: set[int] = set()  # scopes with work whose lease another process holds
        self._history_seen = -1
        self.max_loaded_states = max_loaded_states
        self._states: OrderedDict[int, TTTState] = OrderedDict()  # least recently used first
        # Worker only: a lower bound of each scope's through_chunk_id, so that a poll reads
        # the headers of scopes with new chunks only; and scopes found with work to do.
        self._absorbed: dict[int, int] = {}
        # Scopes with work, oldest first (a dict as an ordered set): absorbed in that order.
        self._backlog: dict[int, None] = {}
        self._checked: dict[int, tuple[int, ...]] = {}  # chains read in full: their signature
        self._initial: TTTState | None = None
        self._states_lock = threading.Lock()
        self._queued: set[int] = set()
        self._queued_lock = threading.Lock()
        self._dirty: set[int] = set()
        self._last_save = time.monotonic()
        self._stopping = threading.Event()
        # Taken to queue a command and to queue "stop": nothing is queued after "stop", so
        # every queued command is run or failed, and no caller waits forever.
        self._accept_lock = threading.Lock()
        self._accepting = True
        self._queue: queue.Queue[Command] = queue.Queue(maxsize=queue_size)
        self._worker = background_thread(self._run, name="memsdk-consolidation", nice=TRAINING_NICE)
        self._worker.start()  # it first resumes what the last session did not absorb

    # ---- called by HybridMemory ------------------------------------------------------------

    def state(self, scope_id: int) -> TTTState:
        """The scope's state, merged from its deltas on first use (a fresh one if none, or if
        a delta is unreadable or belongs to another model or fast-weight mode: it is then
        rebuilt from the notepad's chunks). Unless this process holds the scope's lease, the
        deltas are merged again whenever another process has saved newer ones. The state
        stays loaded until the worker evicts it (``max_loaded_states``)."""
        with self._states_lock:
            state = self._states.get(scope_id)
            if state is None or (
                scope_id not in self.leases.held
                and self._seen.get(scope_id) != self.deltas.signature(scope_id)
            ):
                state = self._load(scope_id)
                self._states[scope_id] = state
            self._states.move_to_end(scope_id)
            return state

    def loaded_scopes(self) -> list[int]:
        """The scopes whose states are in memory now, least recently used first."""
        with self._states_lock:
            return list(self._states)

    def notify(self, scope_id: int) -> None:
        """New chunks were committed for the scope: consolidate them soon."""
        with self._queued_lock:
            if scope_id in self._queued:
                return
            self._queued.add(scope_id)
        with self._accept_lock:
            if self._accepting:  # else closed: absorbed after the next open
                self._queue.put(Command("scope", scope_id))

    def flush(self) -> None:
        """Wait until every committed chunk is absorbed (the last partial chunk included) and
        every changed state is saved.

        Raises:
            BusyError: another process kept a scope's lease for longer than ``wait_s``.
        """
        self._call(Command("finish"))

    def reset(self, scope_id: int) -> None:
        """Back to the initial fast weights and no deltas; chunks already stored are not
        absorbed again.

        Raises:
            BusyError: another process kept the scope's lease for longer than ``wait_s``.
        """
        self._call(Command("reset", scope_id))

    def compact(self, scope_id: int) -> None:
        """Merge the scope's chain of deltas into one delta relative to the initial weights
        (what the scope absorbed is kept, up to 4-bit rounding) and remove the other files.

        Raises:
            BusyError: another process kept the scope's lease for longer than ``wait_s``.
        """
        self._call(Command("compact", scope_id))

    def interrupt(self) -> None:
        """Stop absorbing after the current batch (a flush waiting for it raises MemsdkError);
        commands already queued still run. The first step of closing."""
        self._stopping.set()

    def close(self) -> None:
        """Stop after the current batch, save every changed state and give the leases up.
        What was not absorbed yet is absorbed after the next open. Commands queued before
        run; later ones raise MemsdkError. Safe to call twice and from several threads."""
        stop_and_join(self)

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
        with self._states_lock:
            state = self._states.get(scope_id)
        if state is None:  # read, not kept: stats() of many scopes loads none of them
            try:
                state = self._load_chain(scope_id)[0]
            except FormatError:
                state = self.state(scope_id)  # rebuilt from the notepad
        chain = self.chains.versions(scope_id)
        modified = self.deltas.modified(scope_id)
        return ScopeWeights(
            bytes_absorbed=state.position + len(state.pending),
            steps=state.steps,
            rejected_steps=state.rejected_steps,
            through_chunk_id=self._through(state),
            drift=state.drift(),
            deltas=len(chain),
            delta_bytes=self.deltas.size(scope_id, chain),
            saved_at=None if modified is None else datetime.fromtimestamp(modified, UTC),
            retention=self.retention.method,
            rehearsal_steps=rehearsal_steps(state),
            sources_held=SQLHistory(self.sql, scope_id, self._through(state)).sources(),
            slots=len(state.slots()),
            slot_sources=slot_sources(state),
        )

    # ---- the worker ------------------------------------------------------------------------

    def _call(self, command: Command) -> None:
        """Queue ``command`` and wait for the worker to run it.

        Raises:
            MemsdkError: the memory is closed or closing, or the worker has stopped.
        """
        with self._accept_lock:
            if not self._accepting or not self._worker.is_alive():
                raise closed_error()
            self._queue.put(command)
        while not command.done.wait(timeout=1.0):
            if not self._worker.is_alive() and not command.done.is_set():
                raise MemsdkError(
                    "the weight memory's worker thread ended before it ran this call: close "
                    "the memory and open it again"
                )
        if command.error is not None:
            raise command.error

    @staticmethod
    def _through(state: TTTState) -> int:
        return int(state.extra.get(THROUGH, "0"))

    def _check_through(self, scope_id: int, state: TTTState) -> None:
        """A loaded state may claim only chunks the database has held: a ``through_chunk_id``
        that is not a chunk id, or beyond every chunk id the database ever gave (its weights
        were trained on another database's chunks, or a forged file), would stop the scope
        absorbing its own chunks.

        Raises:
            FormatError: the claim is malformed or goes beyond the database.
        """
        header_int(
            state.extra.get(THROUGH, "0"),
            f"through_chunk_id of scope {scope_id} (the database's chunk ids end there)",
            high=self.sql.newest_chunk_id_ever(),
        )

    def _load(self, scope_id: int) -> TTTState:
        """The scope's state as saved on disk now (see :meth:`_load_chain`); an unreadable
        chain is read again when another process changed it meanwhile, else rebuilt from the
        notepad's chunks."""
        for attempt in range(RELOAD_ATTEMPTS):
            signature = self.deltas.signature(scope_id)
            try:
                state, session, legacy = self._load_chain(scope_id)
                if legacy:
                    self._dirty.add(scope_id)  # saved as a delta at the next save
                break
            except DatabaseCorruptedError:
                raise  # the database is damaged, not the deltas: they stay
            except FormatError as exc:
                if attempt + 1 < RELOAD_ATTEMPTS and self.deltas.signature(scope_id) != signature:
                    continue  # another process saved or compacted meanwhile
                logger.warning("rebuilding the weight memory of scope %s: %s", scope_id, exc)
                state = TTTState(self.model, self.ttt_config)
                session = _Session(0, 0, _copy(state.initial_weights()))
                self._absorbed.pop(scope_id, None)  # absorbed again from its first chunk:
                self._history_seen = -1  # the next poll finds it
                break
        self._sessions[scope_id] = session
        self._seen[scope_id] = signature
        return state

    def _newest(self, scope_id: int) -> int:
        versions = self.deltas.versions(scope_id)
        return versions[-1] if versions else 0

    def _load_chain(self, scope_id: int) -> tuple[TTTState, _Session, bool]:
        """The scope's state from its chain of deltas (or from a snapshot of memsdk before
        deltas, or a fresh state when it has neither), this session's place on the chain, and
        whether the state came from such a snapshot.

        Raises:
            FormatError: a delta is unreadable or belongs to another model or mode.
        """
        versions = self.deltas.versions(scope_id)
        if versions:
            chain = self.chains.chain(scope_id, versions[-1])
            state = restore_state(
                self.model, [d for _, d in chain], source=f"deltas of scope {scope_id}"
            )
            if state.config.fast_params != self.ttt_config.fast_params:
                raise FormatError(
                    f"its deltas train {state.config.fast_params!r}, this memory is "
                    f"configured for {self.ttt_config.fast_params!r}"
                )
            self._check_through(scope_id, state)
            return state, _Session(versions[-1], len(chain), _copy(state.fast_weights)), False
        legacy = self.snapshots.read(scope_id)
        if legacy is not None:
            source = str(self.snapshots.path(scope_id))
            state = TTTState.from_bytes(legacy, self.model, source=source)
            self._check_through(scope_id, state)
        else:
            state = TTTState(self.model, self.ttt_config)
        return state, _Session(0, 0, _copy(state.initial_weights())), legacy is not None

    def _position(self, scope_id: int) -> tuple[int, int]:
        """The scope's ``through_chunk_id`` and partial-chunk bytes: from its state when it is
        loaded, else from its newest delta's header (no state is loaded), else from a state
        read and dropped (a snapshot from before deltas, a damaged header).

        A header is trusted only once its chain was read in full and checked (every field of
        every delta on it, the parents, the memory it belongs to) in this process, as it is on
        disk now: a forged field anywhere on the chain must send the scope to be rebuilt from
        the notepad, not be taken for absorbed work."""
        with self._states_lock:
            state = self._states.get(scope_id)
        if state is None:
            versions = self.deltas.versions(scope_id)
            if not versions and not self.snapshots.size(scope_id):
                return 0, 0
            if versions:
                try:
                    signature = self.deltas.signature(scope_id)
                    if self._checked.get(scope_id) != signature:
                        self.chains.chain(scope_id, versions[-1])  # FormatError when damaged
                        self._checked[scope_id] = signature
                    header = self.deltas.header(scope_id, versions[-1])
                    meta = header["__metadata__"]
                    fast_params = json.loads(meta["ttt_config"])["fast_params"]
                    if meta["model"] != self.initial_state().model_fingerprint or (
                        fast_params != self.ttt_config.fast_params
                    ):  # rebuilt when loaded: load it now, so that it is absorbed again
                        raise ValueError("a delta of another model or fast-weight mode")
                    owner = json.loads(meta["labels"]).get("memory_id")
                    if owner is not None and owner != self.memory_id:
                        raise ValueError(f"a delta of memory {owner}")  # rebuilt when loaded
                    through = header_int(
                        json.loads(meta["extra"]).get(THROUGH, "0"),
                        f"through_chunk_id of scope {scope_id}",
                        high=self.sql.newest_chunk_id_ever(),
                    )
                    return through, int(header["pending"]["shape"][0])
                except (OSError, ValueError, KeyError, TypeError, IndexError, FormatError) as exc:
                    logger.debug("reading the state of scope %s: %s", scope_id, exc)
            try:
                state = self._load_chain(scope_id)[0]
            except FormatError:
                state = self.state(scope_id)  # rebuilt from the notepad
        return self._through(state), len(state.pending)

    # ---- leases ----------------------------------------------------------------------------

    def _own(self, scope_id: int) -> bool:
        """Take or renew the scope's lease. A newly taken lease reloads the scope when another
        process saved since this one last read it; a lost lease drops unsaved progress (the
        state is read again from the deltas of the process that took it)."""
        held = self.leases.acquire(scope_id)
        with self._states_lock:
            if not held:
                if scope_id in self.leases.held:
                    logger.warning(
                        "another process took the weight lease of scope %s: its unsaved "
                        "progress here is dropped",
                        scope_id,
                    )
                    self.leases.held.discard(scope_id)
                    self._dirty.discard(scope_id)
                    self._seen.pop(scope_id, None)
                return False
            newly_taken = scope_id not in self.leases.held
            self.leases.held.add(scope_id)
            # Load a state the worker evicted (it was saved), or reload one another process
            # saved over since this one last read it.
            if scope_id not in self._states or (
                newly_taken and self._seen.get(scope_id) != self.deltas.signature(scope_id)
            ):
                self._dirty.discard(scope_id)
                self._states[scope_id] = self._load(scope_id)
            return True

    def _own_or_wait(self, scope_id: int) -> None:
        """Take the scope's lease (:meth:`_own`), waiting up to ``wait_s`` for another process
        to give it up.

        Raises:
            BusyError: the other process kept it.
        """
        self.leases.wait_for(scope_id, self._own)

    def _release_idle(self) -> None:
        """Save, then give up every lease whose state is saved."""
        self._save(force=True)
        for scope_id in sorted(self.leases.held - self._dirty):
            self.leases.release(scope_id)
            with self._states_lock:
                self.leases.held.discard(scope_id)

    def _poll(self) -> None:
        """Look for chunks nobody has absorbed (left by the last session, written by another
        process, or waiting for a lease that may be free now) and put their scopes on the
        backlog. Reads the delta headers of scopes with chunks newer than this worker knew
        absorbed, and loads no state."""
        newest_history = self.sql.max_history_id()
        if newest_history == self._history_seen and not self._waiting:
            return
        self._history_seen = newest_history
        for scope_id, newest in self.sql.newest_chunk_ids().items():
            if scope_id in self._waiting:
                self._backlog.setdefault(scope_id)
            elif newest > self._absorbed.get(scope_id, -1):
                self._absorbed[scope_id] = through = self._position(scope_id)[0]
                if newest > through:
                    self._backlog.setdefault(scope_id)

    def _evict(self) -> None:
        """Drop the least recently used states beyond ``max_loaded_states``, each saved first
        when it changed (a state whose lease was lost meanwhile is dropped unsaved, as
        :meth:`_own` says)."""
        while True:
            with self._states_lock:
                if len(self._states) <= self.max_loaded_states:
                    return
                scope_id = next(iter(self._states))
            if scope_id in self._dirty:
                self._save_scope(scope_id)
            with self._states_lock:
                if scope_id not in self._dirty:
                    self._states.pop(scope_id, None)
                    self._sessions.pop(scope_id, None)
                    self._seen.pop(scope_id, None)
                else:  # unsaved and still leased: keep it, newest, and stop here
                    self._states.move_to_end(scope_id)
                    return

    # ---- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._poll()  # what the last session did not absorb
        except Exception:
            logger.exception("weight consolidation failed at start")
        while True:
            try:
                if self._backlog:
                    command = self._queue.get_nowait()
                else:
                    command = self._queue.get(timeout=self.poll_interval_s)
            except queue.Empty:
                try:
                    if self._backlog:
                        self._consolidate(self._batches(list(self._backlog))[0])
                        self._save(force=False)
                    else:
                        self._release_idle()
                        self._poll()
                    self._evict()
                except Exception:
                    logger.exception("weight consolidation failed while idle")
                continue
            if command.kind == "stop":
                self._stop(command)
                fail_queued(self._queue)
                return
            try:
                if command.kind == "scope":
                    # Absorbed with the backlog once the queue is empty: scopes notified
                    # together are absorbed together.
                    with self._queued_lock:
                        self._queued.discard(command.scope_id)
                    self._backlog.setdefault(command.scope_id)
                elif command.kind == "finish":
                    self._finish()
                elif command.kind == "reset":
                    self._reset(command.scope_id)
                elif command.kind == "compact":
                    self._compact(command.scope_id)
                self._evict()
            except Exception as exc:
                logger.exception("weight consolidation failed")
                command.error = exc
            finally:
                command.done.set()

    def _stop(self, command: Command) -> None:
        """Save and give the leases up; the worker ends even when the save fails (a full disk):
        what was not saved is absorbed again from SQL after the next open."""
        try:
            self._save(force=True)
        except Exception as exc:
            logger.exception("saving the weight memory at close failed")
            command.error = exc
        finally:
            self.leases.release_all()
            command.done.set()

    def _batches(self, scope_ids: list[int]) -> list[list[int]]:
        """``scope_ids`` in groups absorbed together: up to :data:`SCOPES_PER_BATCH` (and no
        more than the states kept loaded) under a retention method that batches, else one."""
        size = min(SCOPES_PER_BATCH, self.max_loaded_states)
        if self.retention.method not in BATCHED_METHODS:
            size = 1
        return [scope_ids[i : i + size] for i in range(0, len(scope_ids), size)]

    def _consolidate(self, scope_ids: list[int]) -> None:
        """Absorb each scope's chunks after its ``through_chunk_id``, batch by batch and the
        scopes together (:func:`~memsdk.retention.absorb_rows_many`), renewing each lease
        every batch; a scope whose lease another process holds is left to the holder (and
        polled for)."""
        owned = []
        for scope_id in scope_ids:
            self._backlog.pop(scope_id, None)
            if self._own(scope_id):
                self._waiting.discard(scope_id)
                owned.append(scope_id)
            else:
                self._waiting.add(scope_id)
        while owned and not self._stopping.is_set():
            batches, absorbing = [], []
            for scope_id in owned:
                state = self._states[scope_id]
                through = self._through(state)
                rows = self.sql.chunk_bytes_after(scope_id, through, self.batch_chunks)
                if not rows:
                    continue
                # Rehearsals sample only chunks absorbed before this batch (memsdk.retention).
                history = SQLHistory(self.sql, scope_id, through)
                sources = (
                    self.sql.chunk_sources(scope_id, rows[0][0], rows[-1][0])
                    if self.retention.method == "slots"
                    else {}
                )
                batches.append(RowsToAbsorb(state, rows, sources, history))
                absorbing.append(scope_id)
            if not batches:
                return
            absorb_rows_many(batches, config=self.retention, rng=self._rng)
            for scope_id, batch in zip(absorbing, batches, strict=True):
                batch.state.extra[THROUGH] = str(batch.rows[-1][0])
                self._absorbed[scope_id] = batch.rows[-1][0]
                self._dirty.add(scope_id)
            self._save(force=False)
            owned = [scope_id for scope_id in absorbing if self._own(scope_id)]

    def _finish(self) -> None:
        """Drain every scope with unabsorbed chunks, stream partial chunks, save."""
        newest_ids = self.sql.newest_chunk_ids()
        with self._states_lock:
            scope_ids = sorted(set(newest_ids) | set(self._states))
        positions = {scope_id: self._position(scope_id) for scope_id in scope_ids}
        behind = [s for s in scope_ids if newest_ids.get(s, 0) > positions[s][0]]
        for group in self._batches(behind):
            for scope_id in group:
                self._own_or_wait(scope_id)
            self._consolidate(group)
            for scope_id in group:
                positions[scope_id] = self._position(scope_id)
            self._evict()
        for scope_id in scope_ids:
            if positions[scope_id][1]:
                self._own_or_wait(scope_id)
                state = self._states[scope_id]
                if state.pending:
                    flush_slot(state)
                    self._dirty.add(scope_id)
            self._evict()
        self._save(force=True)
        if self._stopping.is_set():
            raise MemsdkError(
                "the memory was closed while flush() waited for the weight memory: what it "
                "absorbed is saved, the rest is absorbed after the next open"
            )

    def _reset(self, scope_id: int) -> None:
        self._own_or_wait(scope_id)
        state = self._states[scope_id]
        state.reset()
        newest = self.sql.newest_chunk_ids().get(scope_id, 0)
        state.extra[THROUGH] = str(max(newest, self._through(state)))
        # The save writes one delta from the initial weights and removes the older files.
        self._sessions[scope_id] = _Session(0, 0, _copy(state.initial_weights()))
        self._dirty.add(scope_id)
        self._save(force=True)

    def _compact(self, scope_id: int) -> None:
        self._own_or_wait(scope_id)
        state = self._states[scope_id]
        session = self._sessions[scope_id]
        session.parent, session.depth, session.base = 0, 0, _copy(state.initial_weights())
        self._dirty.add(scope_id)
        self._save(force=True)

    def _save(self, *, force: bool) -> None:
        if not self._dirty or (
            not force and time.monotonic() - self._last_save < self.save_interval_s
        ):
            return
        for scope_id in sorted(self._dirty):
            self._save_scope(scope_id)
        self._last_save = time.monotonic()

    def _save_scope(self, scope_id: int) -> None:
        """Save one changed state as the next delta of its session's chain."""
        if not self._own(scope_id):
            return  # the lease was lost: _own dropped the progress
        state, session = self._states[scope_id], self._sessions[scope_id]
        if session.depth + 1 > self.max_deltas:  # compact: one delta from the initial weights
            session.parent, session.depth = 0, 0
            session.base = _copy(state.initial_weights())
        # Every save is a new version (the lease holder alone numbers them), so another
        # process sees each save as a change of the versions, whatever the file clock.
        version = self._newest(scope_id) + 1
        labels = {
            "version": str(version),
            "parent": str(session.parent),
            "memory_id": self.memory_id,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        data = make_delta(state, session.base, keep=self.delta_keep, labels=labels)
        self.deltas.write(scope_id, version, data)
        for old in self.deltas.versions(scope_id):  # off the chain now: older saves
            if old != version and old > session.parent:
                self.deltas.delete(scope_id, old)
        self.snapshots.delete(scope_id)  # a snapshot from before deltas, now replaced
        with self._states_lock:
            self._seen[scope_id] = self.deltas.signature(scope_id)
            self._dirty.discard(scope_id)


def _copy(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: w.detach().clone() for name, w in weights.items()}


def open_weight_memory(config: MemoryConfig, notepad: Notepad) -> Consolidator:
    """The weight memory of the memory whose notepad is ``notepad``, as ``config`` sets it:
    the shared model, its fast parameters, deltas and snapshots in the memory directory."""
    model = shared_model(config.weights_model)
    ttt_config = model.default_ttt
    if config.weights_fast_params == "fisher_masked":
        ttt_config = dataclasses.replace(
            ttt_config, fast_params="fisher_masked", inner_lr=FISHER_MASKED_INNER_LR
        )
    return Consolidator(
        notepad.sql,
        WeightDeltas(notepad.directory),
        WeightSnapshots(notepad.directory),
        model,
        ttt_config=ttt_config,
        delta_keep=config.weights_delta_keep,
        max_deltas=config.weights_max_deltas,
        batch_chunks=config.weights_batch_chunks,
        retention=RetentionConfig(method=config.weights_retention, max_slots=config.weights_slots),
        save_interval_s=config.weights_save_interval_s,
        lease_s=config.weights_lease_s,
        max_loaded_states=config.weights_max_loaded_scopes,
        memory_id=notepad.memory_id,
    )
