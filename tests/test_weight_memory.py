"""The weight memory inside HybridMemory: background consolidation, persistence, isolation."""

from __future__ import annotations

import pytest

from memsdk import HybridMemory, InputError, MemoryConfig, MemsdkError, Scope
from memsdk.cli import main as cli_main
from memsdk.engine import load_model


@pytest.fixture(scope="module")
def hdfs(request) -> tuple[bytes, bytes]:
    """A held-out log stream (HDFS is never trained on): the first 24 KB to ingest, a later
    part of the same stream to score."""
    from conftest import shared_path

    data = shared_path("data", "loghub", "HDFS", "HDFS_2k.log").read_bytes()
    head = data[: 24 * 1024]
    later = data[-4096:]
    return head[: head.rfind(b"\n") + 1], later[later.find(b"\n") + 1 :]


def test_the_shipped_model_loads_offline_with_a_card():
    model, metadata, extra = load_model()
    card = model.card
    assert extra == {}  # no optimizer moments in the shipped files
    for key in ("name", "total_steps", "total_bytes_seen", "corpus", "heldout_bits_per_byte"):
        assert key in card, key
    assert model.default_ttt.inner_lr > 0
    assert metadata["config"]["n_layer"] == model.config.n_layer


def test_ingest_feeds_the_scope_weight_memory_and_lowers_surprise(mem, scope, hdfs):
    head, later = hdfs
    other = Scope(tenant="other")
    before = mem.bits_per_byte(later, scope=scope)
    assert before == mem.bits_per_byte(later, scope=other)  # both still hold nothing
    mem.ingest([head], scope=scope, name="hdfs-head")
    mem.flush()
    figures = mem.stats().scopes[0].weights
    assert figures.bytes_absorbed == len(head)
    assert figures.steps >= len(head) // 512 and figures.rejected_steps == 0
    assert figures.drift > 0 and figures.delta_bytes > 0 and figures.deltas == 1
    after = mem.bits_per_byte(later, scope=scope)
    assert after < before  # the later, never-ingested part of the stream is less surprising
    assert mem.bits_per_byte(later, scope=other) == before  # another scope learned nothing
    completion = mem.complete("081109 2", scope=scope, max_bytes=60)
    assert 0 < len(completion.encode()) <= 60 and "\n" not in completion


def test_weights_persist_across_reopen_and_reset(memory_dir, scope, hdfs):
    head, later = hdfs
    with HybridMemory.open(memory_dir) as mem:
        mem.ingest([head[:8000]], scope=scope, name="a")
        mem.flush()
        learned = mem.bits_per_byte(later, scope=scope)
        steps = mem.stats().scopes[0].weights.steps
        initial = mem.bits_per_byte(later, scope=Scope(tenant="nobody"))
    with HybridMemory.open(memory_dir) as mem:
        # Saved as a 4-bit delta: the reopened weights differ by rounding only.
        assert mem.bits_per_byte(later, scope=scope) == pytest.approx(learned, abs=0.02)
        assert mem.stats().scopes[0].weights.steps == steps
        mem.reset_weights(scope=scope)
        assert mem.bits_per_byte(later, scope=scope) == initial
        assert mem.get_all(scope=scope)  # the notepad keeps its chunks
        mem.ingest([head[8000:12000]], scope=scope, name="b")
        mem.flush()
        figures = mem.stats().scopes[0].weights
        assert 0 < figures.bytes_absorbed <= 4000  # only what came after the reset
    with HybridMemory.open(memory_dir) as mem:
        assert mem.stats().scopes[0].weights.bytes_absorbed == figures.bytes_absorbed


def test_chunks_not_absorbed_before_close_are_absorbed_after_reopen(memory_dir, scope, hdfs):
    head, _ = hdfs
    with HybridMemory.open(memory_dir, config=MemoryConfig(weight_memory=False)) as mem:
        mem.ingest([head[:6000]], scope=scope, name="a")
        with pytest.raises(MemsdkError, match="opened with weight_memory=False"):
            mem.bits_per_byte("x", scope=scope)
        assert mem.stats().scopes[0].weights is None
    with HybridMemory.open(memory_dir) as mem:
        mem.flush()
        stored = sum(len(item.text.encode()) for item in mem.get_all(scope=scope, limit=1000))
        assert mem.stats().scopes[0].weights.bytes_absorbed == stored


def test_a_damaged_snapshot_is_rebuilt_from_the_notepad(memory_dir, scope, hdfs, caplog):
    head, later = hdfs
    with HybridMemory.open(memory_dir) as mem:
        mem.ingest([head[:6000]], scope=scope, name="a")
        mem.flush()
        learned = mem.bits_per_byte(later, scope=scope)
    (snapshot,) = (memory_dir / "weights").glob("scope-*/delta-*.safetensors")
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    with HybridMemory.open(memory_dir) as mem:
        mem.flush()
        assert "rebuilding the weight memory" in caplog.text
        assert mem.bits_per_byte(later, scope=scope) == pytest.approx(learned, abs=1e-4)


def test_delete_all_forgets_the_weights_too(mem, scope, hdfs):
    head, later = hdfs
    initial = mem.bits_per_byte(later, scope=scope)
    mem.ingest([head[:6000]], scope=scope, name="a")
    mem.flush()
    assert mem.bits_per_byte(later, scope=scope) != initial
    mem.delete_all(scope=scope)
    assert mem.bits_per_byte(later, scope=scope) == initial


def test_weight_calls_reject_bad_input(mem, scope):
    with pytest.raises(InputError, match="text is empty"):
        mem.bits_per_byte("", scope=scope)
    with pytest.raises(InputError, match="prompt must be str or bytes, got int"):
        mem.complete(3, scope=scope)
    with pytest.raises(InputError, match=r"max_bytes must be an int in 1\.\.4096, got 0"):
        mem.complete("abc", scope=scope, max_bytes=0)
    with pytest.raises(InputError, match="scope"):
        mem.bits_per_byte("abc", scope="acme")
    assert mem.complete("abc", scope=scope, max_bytes=5, stop=None).encode().__len__() <= 5


def test_cli_ingest_absorbs_and_stats_shows_the_weights(tmp_path, capsys, hdfs):
    head, _ = hdfs
    log = tmp_path / "hdfs.log"
    log.write_bytes(head[:4000])
    memory = str(tmp_path / "m")
    assert cli_main(["ingest", "--memory", memory, "--tenant", "t", "--quiet", str(log)]) == 0
    assert cli_main(["stats", "--memory", memory]) == 0
    out = capsys.readouterr().out
    assert f"weights  {len(head[:4000])} bytes absorbed" in out
