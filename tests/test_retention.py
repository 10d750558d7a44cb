"""Retention: a scope's weight memory keeps an early source while it absorbs others.

Real held-out logs (BGL, HDFS, OpenStack are never trained on), the shipped model, small sizes.
``benchmarks/retention.py`` measures the same thing on eight sources and megabytes of text.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.engine import TTTState, load_model, score_bytes, stream
from memsdk.engine.replay import rehearse
from memsdk.errors import ConfigError, InputError
from memsdk.retention import (
    JOIN_SAVING,
    MemoryHistory,
    RetentionConfig,
    SQLHistory,
    absorb,
    join_savings,
    read_slots,
    slot_sources,
)


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


def _slotted(model, logs, names, config: RetentionConfig) -> TTTState:
    """One state absorbing each named log, as its own source, in 8 kB batches."""
    state, history, rng = TTTState(model, model.default_ttt), MemoryHistory(), random.Random(0)
    for name in names:
        for start in range(0, len(logs[name]), 8192):
            batch = logs[name][start : start + 8192]
            absorb(state, batch, history=history, config=config, rng=rng, source=name)
    return state


def test_slots_keep_every_source_as_its_own_scope_does(model, logs):
    slots = RetentionConfig(method="slots")
    shared = _slotted(model, logs, ("head", "hdfs", "openstack"), slots)
    assert shared.slots() == [0, 1, 2]
    assert slot_sources(shared) == {"head": 0, "hdfs": 1, "openstack": 2}
    alone = _slotted(model, logs, ("head",), slots)
    stream(alone, b"", final=True)  # as the shared scope's slot did when HDFS began
    own = _bpb(alone, logs["tail"])
    forgot = _bpb(_shared_scope(model, logs, "none"), logs["tail"])
    kept = _bpb(shared, logs["tail"])
    assert forgot - own > 0.5
    # BGL's head is kept as in its own scope: the mixture costs at most log2(3) bits in all.
    assert own <= kept <= own + 1.6 / len(logs["tail"])


def test_a_new_source_joins_the_slot_that_knows_its_kind_or_takes_a_free_one(model, logs):
    bgl_later = {"bgl.1": logs["head"], "hdfs": logs["hdfs"], "bgl.2": logs["tail"]}
    state = _slotted(model, bgl_later, ("bgl.1", "hdfs", "bgl.2"), RetentionConfig("slots"))
    # The rotated log's next file continues the first file's slot; HDFS has its own.
    assert slot_sources(state) == {"bgl.1": 0, "hdfs": 1, "bgl.2": 0}
    # With every slot in use, a new kind joins the slot that predicts it best.
    one = _slotted(
        model, logs, ("hdfs", "head", "openstack"), RetentionConfig("slots", max_slots=2)
    )
    assert one.slots() == [0, 1] and slot_sources(one)["head"] == 1
    assert slot_sources(one)["openstack"] in (0, 1)


def test_a_new_source_joins_a_slot_only_when_the_slot_learned_its_text(model):
    """Another project's tickets are predicted a little better by a slot that learned React's
    tickets than by fresh weights (the same template, other words), but they are another
    source, and a shared slot would let them overwrite React's: they take a free slot. React's
    later tickets, text the slot learned, join it."""
    from conftest import shared_path

    csv_bytes = shared_path("data", "tickets", "issues_train.csv").read_bytes()

    def tickets(repo: str, after: int = 0) -> bytes:
        start = csv_bytes.index(b"\n" + repo.encode() + b",", after) + 1
        return csv_bytes[start : start + 4096]

    texts = {
        "react": csv_bytes[:16384],
        "vscode": tickets("microsoft/vscode"),
        "react-later": tickets("facebook/react", 30000),
    }
    state = _slotted(model, texts, ("react",), RetentionConfig("slots"))
    chunk = state.config.chunk_bytes
    vscode = join_savings(state, texts["vscode"][:chunk], [0])[0]
    later = join_savings(state, texts["react-later"][:chunk], [0])[0]
    assert 0 < vscode < JOIN_SAVING <= later  # better than fresh weights, yet another source
    state = _slotted(model, texts, ("react", "vscode", "react-later"), RetentionConfig("slots"))
    assert slot_sources(state) == {"react": 0, "vscode": 1, "react-later": 0}


def test_the_slot_mixture_is_prequential(model, logs):
    state = _slotted(model, logs, ("head", "hdfs"), RetentionConfig(method="slots"))
    probe = logs["tail"][:1500]
    bits = score_bytes(state, probe)[0]
    # A byte's bits depend only on the bytes before it, through every slot's weight (within
    # the first chunk, where no slot is pruned yet, and later).
    for at in (300, 1000):
        changed = probe[:at] + bytes([probe[at] ^ 1]) + probe[at + 1 :]
        assert torch.equal(score_bytes(state, changed)[0][:at], bits[:at])
    # Each byte's probability is the slots' probabilities weighted by how well each slot
    # predicted the bytes before it (a uniform prior): recomputed here from each slot alone.
    alone = torch.stack([score_bytes(state, probe, slot=k)[0] for k in state.slots()]).double()
    log_p = -alone * math.log(2)
    before = log_p.cumsum(1) - log_p
    mixed = torch.logsumexp(before + log_p, 0) - torch.logsumexp(before, 0)
    assert torch.allclose(bits.double(), -mixed / math.log(2), atol=1e-3)
    best = float(alone.sum(1).min())
    assert best - 1e-2 <= float(bits.sum()) <= best + 1.0 + 1e-2  # log2(2 slots) bits at most


def test_a_memory_keeps_each_source_in_its_slot_across_sessions(tmp_path, logs):
    ours, theirs = Scope(tenant="acme", user="a"), Scope(tenant="other", user="b")
    tail = logs["tail"].decode()
    kept = {}
    for method in ("slots", "none"):
        config = MemoryConfig(weights_retention=method)
        with HybridMemory.open(tmp_path / method, config=config) as mem:
            mem.ingest([logs["head"].decode()], scope=ours, name="bgl")
            mem.ingest([logs["openstack"].decode()], scope=theirs, name="openstack")
            mem.flush()
            alone = mem.bits_per_byte(tail, scope=ours)
            mem.ingest([logs["hdfs"].decode()], scope=ours, name="hdfs")
            mem.ingest([logs["openstack"].decode()], scope=ours, name="openstack")
            mem.flush()
            kept[method] = mem.bits_per_byte(tail, scope=ours)
            figures = {s.scope.tenant: s.weights for s in mem.stats().scopes}
        assert figures["acme"].retention == method
        if method == "slots":
            assert kept["slots"] == pytest.approx(alone, abs=0.01)
            assert figures["acme"].slots == 3 and figures["other"].slots == 1
            assert set(figures["acme"].slot_sources) == {"bgl", "hdfs", "openstack"}
            with HybridMemory.open(tmp_path / method, config=config) as mem:  # from its deltas
                again = mem.bits_per_byte(tail, scope=ours)
                assert mem.stats().scopes[0].weights.slots in (1, 3)
            assert again == pytest.approx(kept["slots"], abs=0.05)  # 4-bit deltas
    assert kept["none"] > kept["slots"] + 0.3  # plain TTT lost BGL to the two newer sources


def test_a_reader_mixes_only_the_slots_it_names(model, logs):
    state = _slotted(model, logs, ("head", "hdfs", "openstack"), RetentionConfig("slots"))
    probe = logs["tail"][:600]
    every = score_bytes(state, probe)[0]
    assert torch.equal(score_bytes(state, probe, slots=[0, 1, 2])[0], every)
    assert torch.equal(
        score_bytes(state, probe, slots=[1])[0], score_bytes(state, probe, slot=1)[0]
    )
    pair = score_bytes(state, probe, slots=[0, 2])[0]
    assert not torch.equal(pair, every)  # two slots' mixture, not three
    for bad, says in (([], "slots is empty"), ([0, 7], "no slot 7")):
        with pytest.raises(InputError, match=says):
            score_bytes(state, probe, slots=bad)
    with pytest.raises(InputError, match="not both"):
        score_bytes(state, probe, slot=0, slots=[0])
    assert read_slots(state, ["openstack", None, "head", "openstack"]) == [2, 0]
    assert read_slots(state, ["never absorbed"]) is None  # unknown sources: every slot


def test_a_query_reads_only_the_slots_of_its_hits_sources(tmp_path, logs):
    """The notepad's hits name the sources a query is about; the weights read those sources'
    slots only, so a query costs the same however many sources the scope holds."""
    scope = Scope(tenant="acme", user="a")
    with HybridMemory.open(tmp_path, config=MemoryConfig(weights_retention="slots")) as mem:
        for name in ("head", "hdfs", "openstack"):
            mem.ingest([logs[name].decode()], scope=scope, name=name)
        mem.flush()
        state = mem.weights.state(mem.notepad.sql.find_scope(scope.key()))
        assert state.slots() == [0, 1, 2]
        line = logs["head"].decode().splitlines()[40]
        query = line[: len(line) // 2]
        answer = mem.query(query, scope=scope, route="both", k=3)
        read = read_slots(state, [p.source for p in answer.passages])
        assert read == [slot_sources(state)["head"]]
        data = query.encode()
        assert answer.route.features.query_bits == pytest.approx(
            float(score_bytes(state, data, slots=read)[0].mean()), abs=1e-6
        )
        assert abs(answer.route.features.query_bits - _bpb(state, data)) > 1e-4
