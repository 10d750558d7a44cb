"""Routed recall: the query a router answers, and the calibration of the router on a scope.

:class:`Recall` holds what :meth:`HybridMemory.query` and :meth:`HybridMemory.calibrate_router`
do beyond the API: the route features of a query and its hits, the scope's policy (calibrated,
or the shipped default), the completion under the chosen branch, and the probes that
calibration scores before the weights learn them. The branches, features and fitting
themselves are in :mod:`memsdk.router`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from random import Random
from typing import TYPE_CHECKING, Any

import torch

from memsdk.engine import TTTState, byte_losses, generate, stream
from memsdk.errors import InputError, MemsdkError, NotFoundError
from memsdk.progress import progress_bar
from memsdk.results import (
    Answer,
    RouteDecision,
    RouteFeatures,
    RouterCalibration,
    SearchHit,
)
from memsdk.retention import MemoryHistory, absorb_rows, flush_slot, read_slots
from memsdk.router import (
    BRANCHES,
    ROUTES,
    Policy,
    Probe,
    default_policy,
    explain,
    fit_policy,
    identifier_spans,
    make_probes,
    passage_context,
    score_branches,
    whole_word,
)
from memsdk.scope import Scope
from memsdk.search import MAX_IDENTIFIERS, check_query, hybrid_search
from memsdk.stores.sql_records import ChunkRecord
from memsdk.stores.sql_schema import ChunkRow
from memsdk.stores.weights import RouterPolicies

if TYPE_CHECKING:
    from memsdk.memory import HybridMemory

__all__ = ["CALIBRATION_REPLAY_BYTES", "MAX_COMPLETION_BYTES", "MAX_IDENTIFIERS", "Recall"]

logger = logging.getLogger(__name__)

MAX_COMPLETION_BYTES = 4096
# calibrate_router replays at most the scope's newest this many bytes into a fresh state
CALIBRATION_REPLAY_BYTES = 256 * 1024


class Recall:
    """The routed queries and router calibration of one :class:`HybridMemory`, with the
    scopes' policies (``router/scope-<id>.json``) and a cache of them."""

    def __init__(self, memory: HybridMemory) -> None:
        self.memory = memory
        self.policies = RouterPolicies(memory.path)
        self._policy_cache: dict[int, Policy] = {}

    def forget(self, scope_id: int) -> None:
        """Drop the scope's calibrated policy (its data is gone)."""
        self.policies.delete(scope_id)
        self._policy_cache.pop(scope_id, None)

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
        """HybridMemory.query: search, features, the branch and its completion."""
        started = time.perf_counter()
        check_query(query, k, max_query_bytes=self.memory.config.max_query_bytes)
        if route not in ROUTES:
            raise InputError(f"route must be one of {', '.join(ROUTES)}; got {route!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise InputError(f"max_bytes must be an int, got {max_bytes!r}")
        if not 1 <= max_bytes <= MAX_COMPLETION_BYTES:
            raise InputError(f"max_bytes must be in 1..{MAX_COMPLETION_BYTES}, got {max_bytes}")
        size = len(query.encode("utf-8", "surrogateescape"))
        limit = self.memory.config.max_score_bytes
        if self.memory.weights is not None and size > limit:
            raise InputError(
                f"query is {size} bytes, and a routed query is scored by the weight model, "
                f"which reads at most {limit} (MemoryConfig.max_score_bytes): shorten it, use "
                "search(), or raise the limit"
            )
        if self.memory.weights is None and route in ("weights", "both"):
            raise MemsdkError(
                f"route={route!r} needs the weight memory, and {self.memory.path} was opened with "
                "weight_memory=False: use route='notepad', or open it with weight_memory=True"
            )
        timings: dict[str, float] = {}

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = (now - since) * 1000
            return now

        hits: list[SearchHit] = []
        clock = started
        if route != "weights":
            # Two hits at least: the similarity margin needs a runner-up.
            hits = self.memory.search(query, scope=scope, k=max(k, 2), filters=filters)
            clock = lap("search", clock)
        scope_id = self.memory._scope_id(scope, create=False)
        chunks = self.memory.notepad.sql.bytes_after(scope_id, 0)[0] if scope_id is not None else 0
        if not chunks:
            features = RouteFeatures(
                identifiers=len(identifier_spans(query)),
                exact_hits=0,
                top_similarity=0.0,
                similarity_margin=0.0,
                query_bits=0.0,
                query_bits_gain=0.0,
                unconsolidated_share=0.0,
            )
            decision = RouteDecision(
                branch="notepad" if route == "auto" else route,  # type: ignore[arg-type]
                reason=f"the scope {scope} holds no memories yet: nothing to recall",
                features=features,
                forced=route != "auto",
                policy="none",
            )
            lap("total", started)
            return Answer(
                query=query,
                scope=scope,
                route=decision,
                passages=[],
                context="",
                completion="",
                timings=timings,
            )
        # The weights read only the slots of the sources the hits come from
        # (memsdk.retention.read_slots): a query's cost is bounded by its hits' sources, not by
        # every source the scope holds.
        slots = None
        if self.memory.weights is not None and hits:
            slots = read_slots(self.memory.weights.state(scope_id), [h.source for h in hits])
        features, exact_span = self.route_features(query, scope_id, hits, slots=slots)
        clock = lap("features", clock)
        if route != "auto":
            branch, policy_kind = route, "forced"
            reason = f"{route}: forced by route={route!r}"
        elif self.memory.weights is None:
            branch, policy_kind = "notepad", "none"
            reason = "notepad: the weight memory is off (weight_memory=False)"
        else:
            policy = self.policy(scope_id)
            branch, policy_kind = policy.choose(features), policy.kind
            reason = explain(branch, features, exact_span=exact_span, policy=policy)
        clock = lap("route", clock)
        context = ""
        if branch != "weights":
            context = passage_context(
                query, hits[:k], budget=self.memory.config.query_context_bytes
            )
        completion = ""
        if self.memory.weights is not None:
            state, read = self.memory.weights.initial_state(), None
            if branch != "notepad":
                state, read = self.memory.weights.state(scope_id), slots
            prompt = (context + query).encode("utf-8", "surrogateescape")
            out = generate(state, prompt, max_bytes, stop=b"\n", copy=True, slots=read)
            completion = out.removesuffix(b"\n").decode("utf-8", "replace")
            clock = lap("complete", clock)
        lap("total", started)
        return Answer(
            query=query,
            scope=scope,
            route=RouteDecision(
                branch=branch,  # type: ignore[arg-type]
                reason=reason,
                features=features,
                forced=route != "auto",
                policy=policy_kind,
            ),
            passages=hits[:k],
            context=context,
            completion=completion,
            timings=timings,
        )

    def route_features(
        self,
        query: str,
        scope_id: int,
        hits: Sequence[SearchHit],
        adapted: TTTState | None = None,
        slots: Sequence[int] | None = None,
    ) -> tuple[RouteFeatures, str | None]:
        """The router's features for one query and its hits, and an identifier of the query
        that a hit holds verbatim (None if none does). ``adapted`` stands in for the scope's
        fast weights (calibration's replayed state, which has absorbed all it will); ``slots``
        are the slots of the scope's weights to read (default: all)."""
        spans = identifier_spans(query)[:MAX_IDENTIFIERS]
        holders = {s: sum(whole_word(s).search(h.text) is not None for h in hits) for s in spans}
        held = [s for s in spans if holders[s]]
        similarities = sorted(
            (h.similarity for h in hits if h.similarity is not None), reverse=True
        )
        top = similarities[0] if similarities else 0.0
        margin = top - similarities[1] if len(similarities) > 1 else top
        query_bits = gain = share = 0.0
        if self.memory.weights is not None:
            data = query.encode("utf-8", "surrogateescape")
            state = adapted if adapted is not None else self.memory.weights.state(scope_id)
            query_bits = float(byte_losses(state, data, slots=slots).mean())
            gain = float(byte_losses(self.memory.weights.initial_state(), data).mean()) - query_bits
            if adapted is None:
                through = self.memory.weights.figures(scope_id).through_chunk_id
                total, pending = self.memory.notepad.sql.bytes_after(scope_id, through)
                share = pending / total if total else 0.0
        features = RouteFeatures(
            identifiers=len(spans),
            exact_hits=len(held),
            top_similarity=top,
            similarity_margin=margin,
            query_bits=query_bits,
            query_bits_gain=gain,
            unconsolidated_share=share,
        )
        # The most specific id names the reason: the one fewest passages hold, then the longest.
        specific = min(held, key=lambda s: (holders[s], -len(s)), default=None)
        return features, specific

    def policy(self, scope_id: int) -> Policy:
        """The scope's calibrated policy if it has one, else the shipped default. A damaged
        policy file is reported in the log and the default is used."""
        if scope_id not in self._policy_cache:
            data = self.policies.read(scope_id)
            policy = default_policy()
            if data is not None:
                try:
                    policy = Policy.from_json(data, source=str(self.policies.path(scope_id)))
                except MemsdkError as e:
                    logger.warning("%s; using the default policy", e)
            self._policy_cache[scope_id] = policy
        return self._policy_cache[scope_id]

    def calibrate(
        self,
        *,
        scope: Scope,
        probes: int = 200,
        seed: int = 0,
        progress: bool = False,
    ) -> RouterCalibration:
        """HybridMemory.calibrate_router: fit and store the scope's policy on its own probes."""
        started = time.perf_counter()
        if isinstance(probes, bool) or not isinstance(probes, int) or not 20 <= probes <= 10_000:
            raise InputError(f"probes must be an int in 20..10000, got {probes!r}")
        self.memory._weight_state(scope)
        scope_id = self.memory._scope_id(scope, create=False)
        if scope_id is None or not self.memory.notepad.sql.bytes_after(scope_id, 0)[0]:
            raise NotFoundError(f"{scope} holds no data to calibrate on: ingest first")
        self.memory.flush()
        made, features, bits = self._probe_scores(scope, scope_id, probes, seed, progress)
        if len(made) < 20:
            raise InputError(
                f"{scope} yields {len(made)} probes, calibration needs at least 20: ingest more "
                "data (the default policy stays in use)"
            )
        policy = fit_policy(features, bits)
        self.policies.write(scope_id, policy.to_json())
        self._policy_cache[scope_id] = policy
        chosen = [BRANCHES.index(policy.choose(f)) for f in features]
        rows = torch.arange(len(made))
        mean_bits = {b: float(bits[:, i].mean()) for i, b in enumerate(BRANCHES)}
        mean_bits["router"] = float(bits[rows, torch.tensor(chosen)].mean())
        mean_bits["oracle"] = float(bits.min(1).values.mean())
        return RouterCalibration(
            scope=scope,
            probes=len(made),
            needle_probes=sum(p.kind == "needle" for p in made),
            pattern_probes=sum(p.kind == "pattern" for p in made),
            mean_bits=mean_bits,
            chosen={b: chosen.count(i) for i, b in enumerate(BRANCHES)},
            seconds=time.perf_counter() - started,
        )

    def _probe_scores(
        self, scope: Scope, scope_id: int, probes: int, seed: int, progress: bool
    ) -> tuple[list[Probe], list[RouteFeatures], torch.Tensor]:
        """Probes from the scope's data, their features and their bits per byte under each
        branch (N, 3), each scored before the weights that answer it learned it.

        The scope's own weights have absorbed every line a probe could come from, so they
        would look better on the probes than on the new lines real queries ask about. The
        scope's newest ``CALIBRATION_REPLAY_BYTES`` are therefore replayed into a fresh
        state: its first three quarters are absorbed, needles come from there, patterns
        from the last quarter, and every probe retrieves from the absorbed part only. The
        probes meet the router as queries do: ids it has stored, new lines of kinds it has
        read.
        """
        sql = self.memory.notepad.sql
        window = self._replay_window(scope_id)
        first = next(iter(window))
        rows = sql.chunk_bytes_after(scope_id, first - 1, len(window))
        total, absorbed, cut = sum(len(data) for _, data in rows), 0, 0
        while cut < len(rows) - 1 and absorbed < total * 3 // 4:
            absorbed += len(rows[cut][1])
            cut += 1
        cut_id = rows[cut - 1][0] if cut else first - 1
        older = [(cid, window[cid].text) for cid, _ in rows[:cut] if cid in window]
        newer = [(cid, window[cid].text) for cid, _ in rows[cut:] if cid in window]

        def is_rare(span: str) -> bool:
            return len(sql.keyword_search(scope_id, span, limit=2)) == 1

        made = make_probes(older, is_rare=is_rare, needles=probes // 2, patterns=0, seed=seed)
        made += make_probes(
            newer, is_rare=is_rare, needles=0, patterns=probes - len(made), seed=seed
        )
        assert self.memory.weights is not None
        initial = self.memory.weights.initial_state()
        replayed = TTTState(self.memory.weights.model, self.memory.weights.ttt_config)
        retention = self.memory.weights.retention
        if retention.method == "slots" and cut:  # the probes meet slots as queries do
            sources = sql.chunk_sources(scope_id, rows[0][0], cut_id)
            history = MemoryHistory()
            absorb_rows(
                replayed, rows[:cut], sources, history=history, config=retention, rng=Random(0)
            )
            flush_slot(replayed)
        else:
            stream(replayed, b"".join(data for _, data in rows[:cut]), final=True)
        absorbed_only = ChunkRow.id <= cut_id
        features, bits = [], []
        k = 5
        bar = progress_bar(progress, total=len(made), desc="calibrate", unit="probe")
        for probe in made:
            bar.update(1)
            hits = hybrid_search(self.memory, probe.query, scope, scope_id, k, absorbed_only)
            slots = read_slots(replayed, [h.source for h in hits])  # as query() reads
            f, _ = self.route_features(probe.query, scope_id, hits, adapted=replayed, slots=slots)
            context = passage_context(
                probe.query, hits, budget=self.memory.config.query_context_bytes
            )
            scores = score_branches(
                initial,
                replayed,
                context=context,
                query=probe.query,
                answer=probe.answer,
                branches=BRANCHES,
                slots=slots,
            )
            features.append(f)
            bits.append([scores[b].bits_per_byte for b in BRANCHES])
        bar.close()
        return made, features, torch.tensor(bits, dtype=torch.float64).reshape(-1, len(BRANCHES))

    def _replay_window(self, scope_id: int) -> dict[int, ChunkRecord]:
        """The scope's newest chunks by id, in id order, holding at most
        ``CALIBRATION_REPLAY_BYTES`` (at least one chunk)."""
        ids = self.memory.notepad.sql.chunk_ids(scope_id).tolist()
        ids.sort()
        newest_first: list[ChunkRecord] = []
        size = 0
        for end in range(len(ids), 0, -256):
            batch = ids[max(0, end - 256) : end]
            records = self.memory.notepad.sql.get_chunks(scope_id, batch)
            for cid in reversed(batch):
                if cid not in records:
                    continue  # deleted meanwhile
                size += records[cid].end_byte - records[cid].start_byte
                if newest_first and size > CALIBRATION_REPLAY_BYTES:
                    return {r.id: r for r in reversed(newest_first)}
                newest_first.append(records[cid])
        return {r.id: r for r in reversed(newest_first)}
