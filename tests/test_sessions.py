"""Sessions: each open of a memory saves its scopes' weight memory as a 4-bit delta on a chain;
reopening merges the chain, so the third session starts with what the first two absorbed."""

from __future__ import annotations

import logging

import pytest

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.cli import main as cli_main
from memsdk.engine import TTTState, load_model, stream
from memsdk.engine.ttt import FISHER_MASKED_INNER_LR
from memsdk.stores.weights import WeightDeltas, WeightSnapshots


@pytest.fixture(scope="module")
def hdfs(shared) -> list[bytes]:
    """Three sessions' worth of a held-out log stream and a later part to score."""
    data = shared("data", "loghub", "HDFS", "HDFS_2k.log").read_bytes()
    lines = data.splitlines(keepends=True)
    parts = [b"".join(lines[i * 60 : (i + 1) * 60]) for i in range(3)]
    return [*parts, b"".join(lines[-80:])]


def _session(memory_dir, scope, text: bytes, name: str, config=None) -> None:
    with HybridMemory.open(memory_dir, config=config) as mem:
        mem.ingest([text], scope=scope, name=name)
        mem.flush()


def test_three_sessions_build_a_chain_that_merges_on_open(memory_dir, scope, hdfs) -> None:
    *parts, later = hdfs
    deltas = WeightDeltas(memory_dir)
    with HybridMemory.open(memory_dir) as mem:
        fresh = mem.bits_per_byte(later, scope=Scope(tenant="nobody"))
    for i, part in enumerate(parts):
        _session(memory_dir, scope, part, f"part-{i}")
    (scope_id,) = deltas.scope_ids()
    assert len(deltas.versions(scope_id)) == 3  # one delta per session on the chain
    with HybridMemory.open(memory_dir) as mem:
        figures = mem.stats().scopes[0].weights
        assert figures.deltas == 3
        assert figures.bytes_absorbed == sum(len(p) for p in parts)
        assert figures.saved_at is not None
        assert figures.delta_bytes == sum(  # a session may save twice: its last save stays
            deltas.path(scope_id, v).stat().st_size for v in deltas.versions(scope_id)
        )
        merged = mem.bits_per_byte(later, scope=scope)
    assert merged < fresh
    # The same sessions in one full-precision state (each flush streams its partial chunk):
    # the chain of 4-bit deltas keeps what they learned.
    model = load_model()[0]
    state = TTTState(model)
    for part in parts:
        stream(state, part, final=True)
    assert merged == pytest.approx(float(_bits(state, later)), abs=0.03)


def _bits(state, text: bytes) -> float:
    from memsdk.engine import bits_per_byte

    return bits_per_byte(state, text)


def test_a_long_chain_is_compacted(memory_dir, scope, hdfs) -> None:
    *parts, later = hdfs
    config = MemoryConfig(weights_max_deltas=2)
    deltas = WeightDeltas(memory_dir)
    for i, part in enumerate(parts):
        _session(memory_dir, scope, part, f"part-{i}", config)
    (scope_id,) = deltas.scope_ids()
    # The third session's save compacted the chain into one delta from the initial weights (its
    # version is 3, or later when a session saved more than once).
    (only,) = deltas.versions(scope_id)
    assert only >= 3
    with HybridMemory.open(memory_dir, config=config) as mem:
        assert mem.stats().scopes[0].weights.deltas == 1
        compacted = mem.bits_per_byte(later, scope=scope)
        assert mem.compact_weights() == 1
        assert mem.bits_per_byte(later, scope=scope) == pytest.approx(compacted, abs=1e-6)
    with HybridMemory.open(memory_dir) as mem:
        assert mem.bits_per_byte(later, scope=scope) == pytest.approx(compacted, abs=0.02)
    assert len(deltas.versions(scope_id)) == 1


def test_compaction_removes_files_no_chain_names(memory_dir, scope, hdfs) -> None:
    parts = hdfs[:2]
    for i, part in enumerate(parts):
        _session(memory_dir, scope, part, f"part-{i}")
    deltas = WeightDeltas(memory_dir)
    (scope_id,) = deltas.scope_ids()
    deltas.write(scope_id, 9, b"left by a crash")  # unreadable: the chain of 9 is broken
    with HybridMemory.open(memory_dir) as mem:
        mem.compact_weights(scope=scope)  # opening rebuilt from the notepad; then compacted
    (only,) = deltas.versions(scope_id)  # the broken file and every save before are gone
    assert only > 9  # 10, or 11 when the worker saved the rebuilt state before compacting


def test_a_snapshot_from_before_deltas_is_read_then_replaced(memory_dir, scope, hdfs) -> None:
    part, later = hdfs[0], hdfs[3]
    _session(memory_dir, scope, part, "a", MemoryConfig(weight_memory=False))
    model = load_model()[0]
    state = TTTState(model)
    stream(state, part, final=True)
    with HybridMemory.open(memory_dir, config=MemoryConfig(weight_memory=False)) as mem:
        (newest,) = [item.id for item in mem.get_all(scope=scope, limit=1000)][-1:]
    state.extra["through_chunk_id"] = str(newest)
    WeightSnapshots(memory_dir).write(1, state.to_bytes())
    with HybridMemory.open(memory_dir) as mem:
        assert mem.bits_per_byte(later, scope=scope) == pytest.approx(_bits(state, later), abs=1e-6)
    assert WeightSnapshots(memory_dir).read(1) is None
    assert WeightDeltas(memory_dir).versions(1) == [1]


def test_a_scope_saved_in_another_mode_is_rebuilt(memory_dir, scope, hdfs, caplog) -> None:
    _session(memory_dir, scope, hdfs[0], "a")
    config = MemoryConfig(weights_fast_params="fisher_masked")
    with caplog.at_level(logging.WARNING), HybridMemory.open(memory_dir, config=config) as mem:
        assert mem.weights.ttt_config.inner_lr == FISHER_MASKED_INNER_LR  # tuned for the mode
        mem.flush()
        figures = mem.stats().scopes[0].weights
        assert figures.bytes_absorbed == len(hdfs[0])  # absorbed again, in the new mode
    assert "configured for 'fisher_masked'" in caplog.text


def test_sessions_command_lists_compacts_and_drops(memory_dir, scope, hdfs, capsys) -> None:
    for i, part in enumerate(hdfs[:2]):
        _session(memory_dir, scope, part, f"part-{i}")
    memory = ["--memory", str(memory_dir)]
    assert cli_main(["sessions", *memory]) == 0
    out = capsys.readouterr().out
    assert "delta bytes" in out and f"{scope}" in out
    row = next(line for line in out.splitlines() if line.endswith(str(scope)))
    assert row.split()[0] == "2"  # two deltas
    assert cli_main(["sessions", *memory, "--compact"]) == 0
    assert "compacted the deltas of 1 scopes" in capsys.readouterr().out
    assert cli_main(["sessions", *memory, "--drop"]) == 2
    assert "--drop needs the scope" in capsys.readouterr().err
    assert cli_main(["sessions", *memory, "--drop", "--tenant", "acme", "--user", "u1"]) == 0
    with HybridMemory.open(memory_dir) as mem:
        assert mem.stats().scopes[0].weights.steps == 0
