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
- ``"none"``: every chunk once (the stream's own inner loop only).

The history a rehearsal samples from is only what the state absorbed before the current call
(earlier chunks, already scored), so the prequential contract holds: no byte is scored by
weights that trained on it.
"""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass, field
from typing import Protocol

import torch
from sqlalchemy import func, select

from memsdk.engine import TTTState, stream
from memsdk.engine.replay import rehearse
from memsdk.errors import ConfigError
from memsdk.stores.sql import ChunkRow, DocumentRow, SQLStore

__all__ = [
    "METHODS",
    "AbsorbReport",
    "History",
    "MemoryHistory",
    "RetentionConfig",
    "SQLHistory",
    "absorb",
]

METHODS = ("none", "replay", "ewc")
REHEARSALS = "rehearsal_steps"  # state.extra key: rehearsal steps taken (saved in the deltas)


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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"retention method must be one of {METHODS}, got {self.method!r}")
        for name in ("every_chunks", "batch", "anchor_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"retention {name} must be at least 1, got {getattr(self, name)}")
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
) -> AbsorbReport:
    """Stream ``data`` into ``state`` (score, then update), keeping what the state absorbed
    before by ``config.method``: pieces of ``every_chunks`` chunks, each followed by a
    rehearsal step on ``history`` (replay) or a Fisher-weighted pull toward the anchor (ewc).
    ``history`` must hold only bytes absorbed before this call."""
    piece = config.every_chunks * state.config.chunk_bytes
    bits, scored, rehearsals = 0.0, 0, 0
    if config.method == "none":
        report = stream(state, data, final=final)
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
        weights = {n: w.detach().clone() for n, w in state.fast_weights.items()}
        _ANCHORS[state] = (state.position, weights)
        return
    if not state.fisher.count:
        return
    fisher = state.fisher.mean()
    new = {}
    for name, weight in state.fast_weights.items():
        f = fisher[name]
        pull = (config.ewc_strength * f / f.mean().clamp_min(1e-30)).clamp(max=1.0)
        new[name] = weight - pull * (weight - anchor[name])
    state.fast_weights = new


def rehearsal_steps(state: TTTState) -> int:
    """Rehearsal steps the state took since its initial weights (kept in its deltas)."""
    return int(state.extra.get(REHEARSALS, "0"))
