"""Retention: a scope's weight memory keeps an early source while it absorbs others.

Real held-out logs (BGL, HDFS, OpenStack are never trained on), the shipped model, small sizes.
``benchmarks/retention.py`` measures the same thing on eight sources and megabytes of text.
"""

from __future__ import annotations

import random

import pytest
import torch

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.engine import TTTState, load_model, score_bytes
from memsdk.engine.replay import rehearse
from memsdk.errors import ConfigError
from memsdk.retention import MemoryHistory, RetentionConfig, SQLHistory, absorb


def _lines(data: bytes, start: int, size: int) -> bytes:
    """Whole lines of ``data`` from about ``start``, about ``size`` bytes."""
    part = data[start : start + size + 4096]
    if start:
        part = part[part.find(b"\n") + 1 :]
    return part[: part[:size].rfind(b"\n") + 1]


@pytest.fixture(scope="module")
def logs() -> dict[str, bytes]:
    from conftest import shared_path

    def log(system: str) -> bytes:
        return shared_path("data", "loghub", system, f"{system}_2k.log").read_bytes()

    bgl = log("BGL")
    return {
        "head": _lines(bgl, 0, 8192),
        "tail": _lines(bgl, 100_000, 4096),  # a later part of BGL, never absorbed
        "hdfs": _lines(log("HDFS"), 0, 24576),
        "openstack": _lines(log("OpenStack"), 0, 24576),
    }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model()[0]


def _shared_scope(model, logs, method: str) -> TTTState:
    """BGL's head, then 48 kB of two other systems, in the consolidator's 8 kB batches."""
    state = TTTState(model, model.default_ttt)
    history, config, rng = MemoryHistory(), RetentionConfig(method=method), random.Random(0)
    for name in ("head", "hdfs", "openstack"):
        for start in range(0, len(logs[name]), 8192):
            batch = logs[name][start : start + 8192]
            absorb(state, batch, history=history, config=config, rng=rng)
            history.add(name, batch)
    return state


def _bpb(state: TTTState, data: bytes) -> float:
    return float(score_bytes(state, data)[0].mean())


def test_replay_keeps_an_early_source_that_plain_ttt_forgets(model, logs):
    empty = _bpb(TTTState(model, model.default_ttt), logs["tail"])
    own_state = TTTState(model, model.default_ttt)
    absorb(
        own_state,
        logs["head"],
        history=MemoryHistory(),
        config=RetentionConfig(),
        rng=random.Random(0),
    )
    own = _bpb(own_state, logs["tail"])
    forgot = _bpb(_shared_scope(model, logs, "none"), logs["tail"])
    kept = _bpb(_shared_scope(model, logs, "replay"), logs["tail"])
    assert own < empty - 1.0  # BGL's head teaches its tail a lot
    # Without retention, the shared scope loses much of that gain to the two newer sources;
    # with replay it keeps most of it.
    assert forgot - own > 0.2 * (empty - own)
    assert kept - own < 0.5 * (forgot - own)


def test_rehearsal_keeps_the_prequential_contract(model, logs):
    state = TTTState(model, model.default_ttt)
    absorb(
        state,
        logs["head"][:1500],
        history=MemoryHistory(),
        config=RetentionConfig(),
        rng=random.Random(0),
    )
    before = (state.position, state.pending, state.last_byte, state.steps, state.caches)
    weights = state.fast_weights
    assert rehearse(state, [logs["head"][:128], logs["head"][200:328]])
    assert state.fast_weights is not weights  # replaced, never edited: readers stay consistent
    assert any(not torch.equal(state.fast_weights[n], w) for n, w in weights.items())
    assert (state.position, state.pending, state.last_byte, state.steps) == before[:4]
    assert state.caches is before[4]
    assert not rehearse(state, [])  # nothing to rehearse: nothing moves
    assert not rehearse(state, [b"x"])


def test_retention_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="retention method must be one of"):
        RetentionConfig(method="forget")
    with pytest.raises(ConfigError, match="retention batch must be at least 1"):
        RetentionConfig(batch=0)
    with pytest.raises(ValueError, match="weights_retention"):
        MemoryConfig(weights_retention="forget")


def test_the_memory_rehearses_its_own_scope_only_and_stats_show_it(memory_dir, logs):
    ours, theirs = Scope(tenant="acme", user="a"), Scope(tenant="other", user="b")
    replay = MemoryConfig(weights_retention="replay")
    with HybridMemory.open(memory_dir, config=replay) as mem:
        mem.ingest([logs["head"].decode()], scope=ours, name="bgl")
        mem.ingest([logs["openstack"].decode()], scope=theirs, name="openstack")
        mem.flush()
        mem.ingest([logs["hdfs"].decode()], scope=ours, name="hdfs")
        mem.flush()
        figures = {s.scope.tenant: s.weights for s in mem.stats().scopes}
        assert figures["acme"].retention == "replay"
        assert figures["acme"].sources_held == 2 and figures["other"].sources_held == 1
        assert figures["acme"].rehearsal_steps > 0
        sql = mem.notepad.sql
        scope_ids = {key[0]: scope_id for scope_id, key in sql.scopes()}  # (tenant, ...)
        sampled = SQLHistory(sql, scope_ids["acme"], 10**9).sample(64, 64, random.Random(1))
        ours_text = logs["head"] + logs["hdfs"]
        assert sampled and all(segment in ours_text for segment in sampled)
    with HybridMemory.open(memory_dir, config=replay) as mem:  # the count is kept in its deltas
        again = {s.scope.tenant: s.weights for s in mem.stats().scopes}
        assert again["acme"].rehearsal_steps == figures["acme"].rehearsal_steps
