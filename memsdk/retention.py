"""Retention: a scope's weight memory keeps the sources it absorbed, not only the newest.

Plain test-time training is a recency model: each inner step moves the fast weights toward
the newest chunk, and a source absorbed a few hundred kilobytes ago scores as it would in an
empty scope. Two remedies are offered, compared on held-out mixed streams by
``benchmarks/retention.py``:

- ``"replay"`` (complementary learning systems): the notepad keeps every chunk, so after every
  ``every_chunks`` new chunks the fast weights take one rehearsal step
  (:func:`memsdk.engine.replay.rehearse`) on ``batch`` segments of ``segment_bytes`` sampled
  from what the scope absorbed before. Sampling is balanced over sources (a source first,
  uniformly, then a place in it), so a source ingested early keeps its share of rehearsal
  however much came after it.
- ``"ewc"`` (elastic weight consolidation, Kirkpatrick et al., 2017, online form; offered to
  the benchmark only, not to :class:`~memsdk.config.MemoryConfig`): after each
  piece of ``every_chunks`` chunks, every fast weight is pulled back toward an anchor (the
  weights as they were ``anchor_bytes`` ago) in proportion to its running Fisher diagonal, so
  the weights that earlier text relied on move least.
- ``"slots"`` (per-source fast weights, after the 4-bit deltas of
  :mod:`memsdk.engine.delta`, which make one set of fast weights per source cheap): each
  source (the ``source`` of its document: a file, or ``<add>``) trains a slot of its own, so a
  source absorbed later never moves the weights an earlier one taught. The joining rule: a new
  source joins a trained slot only when that slot predicts the source's first chunk (in a
  fresh window) with at least :data:`JOIN_SAVING` fewer bits than fresh weights do: text the
  slot learned, such as the next file of a rotated log (the slot of the lowest bits when
  several qualify). Otherwise it takes a free slot while fewer than ``max_slots`` are in use,
  and only when none is left joins the slot that predicts the chunk best. "Better than fresh
  weights" alone is not enough: a slot that learned man pages predicts tickets a little
  better than fresh weights do, and in a shared slot the newer source overwrites the older
  (on held-out text both lost). On development text (``benchmarks/retention_join.py``:
  Loghub systems the model trained on, training-side prose and code) a slot trained on one
  source saved at most 1% of the bits of another source's first chunk, another log or
  another kind alike; :data:`JOIN_SAVING` leaves a wide margin above that. A wrong "no" costs
  a slot (one more forward pass per read until the mixture prunes it, and a slot that
  relearns); a wrong "yes" costs an older source its weights, so the rule leans to "no".
  Readers score with the slots' Bayesian mixture (:func:`memsdk.engine.scoring.score_bytes`),
  which follows the slot that knows the text being read; a slot switch streams the partial
  chunk of the slot before and empties the sliding window, since another source's text is no
  context.
- ``"none"``: every chunk once (the stream's own inner loop only).

The history a rehearsal samples from is only what the state absorbed before the current call
(earlier chunks, already scored), so the prequential contract holds: no byte is scored by
weights that trained on it.
"""

from __future__ import annotations

import json
import random
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from sqlalchemy import func, select

from memsdk.engine import StreamReport, TTTState, score_bytes, stream, stream_many
from memsdk.engine.replay import rehearse
from memsdk.engine.scoring import slot_bits
from memsdk.engine.ttt import MAX_SLOTS
from memsdk.errors import ConfigError
from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_schema import ChunkRow, DocumentRow

__all__ = [
    "BATCHED_METHODS",
    "METHODS",
    "AbsorbReport",
    "History",
    "MemoryHistory",
    "RetentionConfig",
    "RowsToAbsorb",
    "SQLHistory",
    "absorb",
    "absorb_rows",
    "absorb_rows_many",
    "current_slot",
    "flush_slot",
    "join_savings",
    "read_slots",
    "slot_sources",
]

METHODS = ("none", "replay", "ewc", "slots")
# The methods whose scopes absorb together (absorb_rows_many); the others one after another.
BATCHED_METHODS = ("none", "slots")
REHEARSALS = "rehearsal_steps"  # state.extra key: rehearsal steps taken (saved in the deltas)
SLOT = "slot"  # state.extra key: the slot the newest chunks trained
SLOT_SOURCES = "slot_sources"  # state.extra key: JSON [[source, slot], ...], newest last
# A new source joins a slot that spends at least this share fewer bits than fresh weights on
# its first chunk (benchmarks/retention_join.py: at most 0.01 across development sources).
JOIN_SAVING = 0.25
# Sources remembered by name (their slot); a source forgotten is placed again by its content.
MAX_REMEMBERED_SOURCES = 256


@dataclass(frozen=True)
class RetentionConfig:
    """How a scope's weight memory keeps older sources (see the module docstring)."""

    method: str = "replay"
    every_chunks: int = 1
    batch: int = 2
    segment_bytes: int = 128
    ewc_strength: float = 0.05
    anchor_bytes: int = 65536
    seed: int = 0
    max_slots: int = 16

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"retention method must be one of {METHODS}, got {self.method!r}")
        for name in ("every_chunks", "batch", "anchor_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"retention {name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.max_slots <= MAX_SLOTS:
            raise ConfigError(
                f"retention max_slots must be from 1 to {MAX_SLOTS}, got {self.max_slots}"
            )
        if self.segment_bytes < 2:
            raise ConfigError(f"retention segment_bytes must be >= 2, got {self.segment_bytes}")
        if not 0.0 <= self.ewc_strength <= 1.0:
            raise ConfigError(f"retention ewc_strength must be in [0, 1], got {self.ewc_strength}")


class History(Protocol):
    """What a scope absorbed before: segments to rehearse."""

    def sample(self, count: int, size: int, rng: random.Random) -> list[bytes]:
        """Up to ``count`` segments of ``size`` bytes (fewer, or shorter, when the history
        holds less), balanced over sources."""
        ...


@dataclass
class MemoryHistory:
    """A history held in memory: each source's absorbed bytes (benchmarks and tests)."""

    sources: dict[str, bytearray] = field(default_factory=dict)

    def add(self, source: str, data: bytes) -> None:
        self.sources.setdefault(source, bytearray()).extend(data)

    def sample(self, count: int, size: int, rng: random.Random) -> list[bytes]:
        names = [n for n, data in self.sources.items() if data]
        out = []
        for _ in range(count if names else 0):
            data = self.sources[rng.choice(names)]
            start = rng.randrange(max(1, len(data) - size + 1))
            out.append(bytes(data[start : start + size]))
        return out


@dataclass
class SQLHistory:
    """A scope's chunks with id up to ``through`` in the notepad's SQL, balanced over the
    ``source`` of their documents (the file or name each ingest gave)."""

    sql: SQLStore
    scope_id: int
    through: int
    _spans: list[tuple[int, int]] | None = None

    def _source_spans(self) -> list[tuple[int, int]]:
        """Per source: the smallest and largest chunk id (up to ``through``)."""
        if self._spans is None:
            with self.sql.reading() as s:
                rows = s.execute(
                    select(func.min(ChunkRow.id), func.max(ChunkRow.id))
                    .join(DocumentRow, DocumentRow.id == ChunkRow.document_id, isouter=True)
                    .where(ChunkRow.scope_id == self.scope_id, ChunkRow.id <= self.through)
                    .group_by(DocumentRow.source)
                ).all()
            self._spans = [(int(r[0]), int(r[1])) for r in rows if r[0] is not None]
        return self._spans

    def sources(self) -> int:
        """How many sources the history holds."""
        return len(self._source_spans())

    def sample(self, count: int, size: int, rng: random.Random) -> list[bytes]:
        spans = self._source_spans()
        out = []
        for _ in range(count if spans else 0):
            low, high = rng.choice(spans)
            # The chunk at or after a random id of the span: ids of other sources in between
            # only skew the choice within this scope's chunks, never across scopes.
            rows = self.sql.chunk_bytes_after(self.scope_id, rng.randint(low, high) - 1, 1)
            if not rows or rows[0][0] > self.through:
                continue
            data = rows[0][1]
            start = rng.randrange(max(1, len(data) - size + 1))
            out.append(data[start : start + size])
        return out


@dataclass(frozen=True)
class AbsorbReport:
    """What one :func:`absorb` call did."""

    bytes_scored: int
    bits: float
    rehearsals: int


def absorb(
    state: TTTState,
    data: bytes,
    *,
    history: History,
    config: RetentionConfig,
    rng: random.Random,
    final: bool = False,
    source: str = "",
) -> AbsorbReport:
    """Stream ``data`` (all of one ``source``) into ``state`` (score, then update), keeping
    what the state absorbed before by ``config.method``: pieces of ``every_chunks`` chunks,
    each followed by a rehearsal step on ``history`` (replay) or a Fisher-weighted pull toward
    the anchor (ewc); or the slot of ``source`` (slots). ``history`` must hold only bytes
    absorbed before this call."""
    piece = config.every_chunks * state.config.chunk_bytes
    bits, scored, rehearsals = 0.0, 0, 0
    if config.method == "slots":
        slot, flushed = _slot_of_run(state, source, data, config)
        report = stream(state, data, final=final, slot=slot)
        return AbsorbReport(report.bytes_scored + flushed[0], report.bits + flushed[1], 0)
    if config.method == "none":
        report = stream(state, data, final=final, slot=current_slot(state))
        return AbsorbReport(report.bytes_scored, report.bits, 0)
    for start in range(0, max(len(data), 1), piece):
        last = start + piece >= len(data)
        report = stream(state, data[start : start + piece], final=final and last)
        bits, scored = bits + report.bits, scored + report.bytes_scored
        if not report.steps:
            continue
        if config.method == "replay":
            segments = history.sample(config.batch, config.segment_bytes, rng)
            rehearsals += rehearse(state, segments)
        else:
            _pull_to_anchor(state, config)
    state.extra[REHEARSALS] = str(int(state.extra.get(REHEARSALS, "0")) + rehearsals)
    return AbsorbReport(scored, bits, rehearsals)


# Per state: (position when the anchor was taken, the anchor weights); gone with the state.
_ANCHORS: weakref.WeakKeyDictionary[TTTState, tuple[int, dict[str, torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _pull_to_anchor(state: TTTState, config: RetentionConfig) -> None:
    """Online EWC as a proximal step: w <- w - min(1, s * F / mean F) * (w - anchor)."""
    anchor_at, anchor = _ANCHORS.get(state, (-1, {}))
    if anchor_at < 0 or state.position - anchor_at >= config.anchor_bytes:
        weights = {n: w.detach().clone() for n, w in state.slot_weights(0).items()}
        _ANCHORS[state] = (state.position, weights)
        return
    if not state.fisher.count:
        return
    fisher = state.fisher.mean()
    new = {}
    for name, weight in state.slot_weights(0).items():
        f = fisher[name]
        pull = (config.ewc_strength * f / f.mean().clamp_min(1e-30)).clamp(max=1.0)
        new[name] = weight - pull * (weight - anchor[name])
    state.set_slot_weights(0, new)


def absorb_rows(
    state: TTTState,
    rows: Sequence[tuple[int, bytes]],
    sources: Mapping[int, str],
    *,
    history: History,
    config: RetentionConfig,
    rng: random.Random,
) -> AbsorbReport:
    """:func:`absorb` notepad chunks ``(id, bytes)`` in order; ``sources`` gives each chunk id
    its document's source (read only by the slots method, which absorbs each run of one
    source's chunks into its slot)."""
    batch = RowsToAbsorb(state, rows, sources, history)
    return absorb_rows_many([batch], config=config, rng=rng)[0]


@dataclass(frozen=True)
class RowsToAbsorb:
    """One scope's batch for :func:`absorb_rows_many`: its state, its notepad chunks
    ``(id, bytes)`` in order, each chunk id's source, and what it absorbed before."""

    state: TTTState
    rows: Sequence[tuple[int, bytes]]
    sources: Mapping[int, str]
    history: History


def absorb_rows_many(
    batches: Sequence[RowsToAbsorb], *, config: RetentionConfig, rng: random.Random
) -> list[AbsorbReport]:
    """:func:`absorb_rows` of several scopes' batches (distinct states), each state ending as
    if absorbed alone. Under ``slots`` and ``none`` the scopes advance together: the k-th run
    of one source's chunks of every scope (each in its slot) streams in one
    :func:`~memsdk.engine.stream_many` call, which runs the scopes' chunks as batches
    (``benchmarks/batched_streams.py``). Under ``replay`` and ``ewc``, whose rehearsal or
    pull follows each piece of a scope, the scopes absorb one after another."""
    if config.method not in BATCHED_METHODS:
        return [
            absorb(
                b.state,
                b"".join(data for _, data in b.rows),
                history=b.history,
                config=config,
                rng=rng,
            )
            for b in batches
        ]
    runs = [_source_runs(b.rows, b.sources if config.method == "slots" else {}) for b in batches]
    totals = [(0, 0.0)] * len(batches)
    for k in range(max(map(len, runs), default=0)):
        active = [i for i, scope_runs in enumerate(runs) if k < len(scope_runs)]
        slots = []
        for i in active:
            state, (source, data) = batches[i].state, runs[i][k]
            if config.method == "slots":
                slot, (scored, bits) = _slot_of_run(state, source, data, config)
                totals[i] = (totals[i][0] + scored, totals[i][1] + bits)
            else:
                slot = current_slot(state)
            slots.append(slot)
        reports = stream_many(
            [batches[i].state for i in active], [runs[i][k][1] for i in active], slots=slots
        )
        for i, report in zip(active, reports, strict=True):
            totals[i] = (totals[i][0] + report.bytes_scored, totals[i][1] + report.bits)
    return [AbsorbReport(scored, bits, 0) for scored, bits in totals]


def _source_runs(
    rows: Sequence[tuple[int, bytes]], sources: Mapping[int, str]
) -> list[tuple[str, bytes]]:
    """``rows`` cut into runs of one source's chunks, in order: (source, their bytes)."""
    runs: list[tuple[str, bytes]] = []
    start = 0
    while start < len(rows):
        source = sources.get(rows[start][0], "")
        end = start + 1
        while end < len(rows) and sources.get(rows[end][0], "") == source:
            end += 1
        runs.append((source, b"".join(data for _, data in rows[start:end])))
        start = end
    return runs


def flush_slot(state: TTTState) -> StreamReport:
    """Stream the partial-chunk buffer, as a short chunk, into the slot it belongs to."""
    return stream(state, b"", final=True, slot=current_slot(state))


def current_slot(state: TTTState) -> int:
    """The slot the state's newest chunks trained (its partial-chunk buffer is that slot's)."""
    slot = int(state.extra.get(SLOT, "0"))
    return slot if slot in state.slots() else 0


def slot_sources(state: TTTState) -> dict[str, int]:
    """The sources the state remembers by name, each with its slot."""
    slots = set(state.slots())
    try:
        pairs = json.loads(state.extra.get(SLOT_SOURCES, "[]"))
        return {str(source): int(slot) for source, slot in pairs if int(slot) in slots}
    except (ValueError, TypeError):  # bookkeeping from a damaged file: placed again by content
        return {}


def read_slots(state: TTTState, sources: Iterable[str | None]) -> list[int] | None:
    """The slots a reader needs for text about ``sources`` (the sources of a query's notepad
    hits, best first): the slots those sources trained, in that order. Each slot costs a read
    one forward pass, so reading only these bounds a query's cost by its hits' sources however
    many sources the scope holds; the notepad's hits name the text the query is about, and a
    slot that never saw that text has nothing to add to it. None (read every slot) when the
    state has one slot or knows none of ``sources`` (they are not absorbed yet, or held before
    a damaged file)."""
    if len(state.slots()) == 1:
        return None
    known = slot_sources(state)
    slots = [known[s or ""] for s in sources if (s or "") in known]
    return list(dict.fromkeys(slots)) or None


def join_savings(state: TTTState, first: bytes, slots: Sequence[int]) -> list[float]:
    """For each slot: the share of bits it saves on ``first`` against fresh weights (both in a
    fresh window); 0 for empty ``first``."""
    if not first:
        return [0.0] * len(slots)
    fresh = float(score_bytes(TTTState(state.model, state.config), first)[0].sum())
    return [1.0 - bits / fresh for bits in slot_bits(state, first, list(slots))]


def _choose_slot(state: TTTState, source: str, first: bytes, config: RetentionConfig) -> int:
    """The slot of ``source``: its own when known; else the slot of the largest
    :func:`join_savings` on ``first`` (the source's first chunk) when that saving is at least
    :data:`JOIN_SAVING`; else a free slot; else, every slot in use, that slot anyway."""
    known = slot_sources(state)
    slot = known.get(source)
    if slot is None:
        trained = sorted(set(known.values()))
        savings = join_savings(state, first, trained)
        best = trained[max(range(len(trained)), key=savings.__getitem__)] if trained else None
        free = [k for k in state.slots() if k not in known.values()]
        if best is not None and max(savings) >= JOIN_SAVING:
            slot = best
        elif free:
            slot = free[0]
        elif len(state.slots()) < config.max_slots:
            slot = state.add_slot()
        else:
            slot = best if best is not None else current_slot(state)
    known.pop(source, None)
    known[source] = slot
    pairs = [[name, k] for name, k in known.items()][-MAX_REMEMBERED_SOURCES:]
    state.extra[SLOT_SOURCES] = json.dumps(pairs)
    return slot


def _slot_of_run(
    state: TTTState, source: str, data: bytes, config: RetentionConfig
) -> tuple[int, tuple[int, float]]:
    """The slot a run of ``source``'s bytes trains (:func:`_choose_slot` on its first chunk),
    made the current one (:func:`_enter_slot`): the slot, and the (bytes, bits) the switch
    scored."""
    first = data[: state.config.chunk_bytes]
    slot = _choose_slot(state, source, first, config) if data else current_slot(state)
    return slot, _enter_slot(state, slot)


def _enter_slot(state: TTTState, slot: int) -> tuple[int, float]:
    """Make ``slot`` the one the next chunks train: the slot before streams its partial
    chunk, and the window empties. Returns (bytes, bits) that flush scored."""
    if slot == current_slot(state):
        return 0, 0.0
    report = flush_slot(state)
    state.clear_window()
    state.extra[SLOT] = str(slot)
    return report.bytes_scored, report.bits


def rehearsal_steps(state: TTTState) -> int:
    """Rehearsal steps the state took since its initial weights (kept in its deltas)."""
    return int(state.extra.get(REHEARSALS, "0"))
