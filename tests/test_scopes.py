"""A memory of many scopes holds in memory the weight states of the scopes in use only.

Before, opening a memory and every idle poll of its weight worker loaded the state of every
scope with chunks (about 0.8 MB each): memory grew with the number of tenants, not the number
in use, and so did the open time. Now states are loaded when a scope is used, which scopes
have work is read from the delta headers, and at most ``weights_max_loaded_scopes`` states
stay loaded: the least recently used are saved, then dropped, and load again with what they
absorbed.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
import torch

from memsdk import HybridMemory, MemoryConfig, Scope

SCOPES = 30
CODE = Path(textwrap.__file__).read_text()  # real text unlike the logs below
CEILING_S = 180.0  # waiting for the weight worker on a busy 2-core machine


def _tenant_lines(tenant: int, n: int) -> str:
    return "".join(
        f"tenant {tenant} host-{i % 5} job {i * 37 % 101} finished with code {i % 3}\n"
        for i in range(n)
    )


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + CEILING_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {CEILING_S:.0f} s")
        time.sleep(0.05)


def test_only_the_scopes_in_use_are_loaded(memory_dir, figures) -> None:
    scopes = [Scope(tenant=f"tenant-{i}") for i in range(SCOPES)]
    with HybridMemory.open(memory_dir) as mem:
        for i, scope in enumerate(scopes):
            mem.add(f"tenant {i} keeps its invoices in folder {i * 7}", scope=scope)
        mem.flush()  # every scope absorbed its chunk and saved a delta
    with HybridMemory.open(memory_dir) as mem:
        weights = mem.weights
        assert weights.loaded_scopes() == []
        # flush() looks at every scope (what is left to absorb, partial chunks) and the
        # worker has made its first poll by then: both read delta headers, not states.
        mem.flush()
        assert weights.loaded_scopes() == []
        stats = mem.stats()  # figures of every scope, read without keeping them
        assert len(stats.scopes) == SCOPES
        assert all(s.weights.steps > 0 for s in stats.scopes)
        assert weights.loaded_scopes() == []
        mem.bits_per_byte("tenant 3 keeps its invoices", scope=scopes[3])
        mem.complete("tenant 5 keeps", scope=scopes[5], max_bytes=4)
        ids = [mem.notepad.sql.find_scope(scopes[i].key()) for i in (3, 5, 9)]
        assert weights.loaded_scopes() == ids[:2]
        # New chunks of one scope load that scope only.
        mem.add("tenant 9 moved its invoices", scope=scopes[9])
        mem.flush()
        assert weights.loaded_scopes() == ids
    figures.record("scopes_loaded", scopes=SCOPES, used=len(ids))


def test_an_evicted_scope_is_saved_first_and_reloads_with_what_it_absorbed(memory_dir) -> None:
    # One state in memory; no scheduled saves: eviction saves (and close, and an idle worker).
    config = MemoryConfig(weights_max_loaded_scopes=1, weights_save_interval_s=3600)
    first, second = Scope(tenant="first"), Scope(tenant="second")
    with HybridMemory.open(memory_dir, config=config) as mem:
        weights = mem.weights
        # Both queued at once: the worker absorbs the first, then loads the second and
        # evicts the first, unsaved until then (the worker was never idle in between).
        first_ids = mem.add(_tenant_lines(1, 80), scope=first).ids
        mem.add(_tenant_lines(2, 20), scope=second)
        first_id = mem.notepad.sql.find_scope(first.key())
        second_id = mem.notepad.sql.find_scope(second.key())
        _wait(
            lambda: weights.loaded_scopes() == [second_id] and weights.figures(second_id).steps > 0,
            "the second scope absorbed its chunks and the first was evicted",
        )
        # Saved before it was dropped: its delta holds what it absorbed.
        saved = weights.figures(first_id)  # read from disk, not kept
        assert weights.loaded_scopes() == [second_id]
        assert saved.deltas == 1
        assert saved.through_chunk_id == first_ids[-1]
        assert saved.steps > 0
        # Used again, it loads from that delta with what it absorbed.
        probe = _tenant_lines(1, 8)
        again = mem.bits_per_byte(probe, scope=first)
        assert first_id in weights.loaded_scopes()
        initial = mem.bits_per_byte(probe, scope=Scope(tenant="nobody"))
        assert again < initial - 0.2


def test_scopes_absorbed_together_learn_what_each_learns_alone(tmp_path, batch_sizes) -> None:
    """Scopes with chunks waiting are absorbed together, their chunks run as batches
    (memsdk.engine.stream_many), and each scope's weights, slots and counts end as when the
    scope is absorbed alone."""
    scopes = [Scope(tenant=f"tenant-{i}") for i in range(6)]

    def write(mem: HybridMemory, i: int) -> None:  # two sources per scope, of other lengths
        mem.ingest([_tenant_lines(i, 30 + 9 * i)], scope=scopes[i], name=f"jobs-{i}")
        mem.ingest([CODE[i * 1500 : (i + 2) * 1500]], scope=scopes[i], name=f"code-{i}")

    alone = MemoryConfig(weights_save_interval_s=3600)
    with HybridMemory.open(tmp_path / "alone", config=alone) as mem:
        for i in range(len(scopes)):
            write(mem, i)
            mem.flush()  # this scope alone has chunks waiting
        expected = [mem.weights.state(mem.notepad.sql.find_scope(s.key())) for s in scopes]
    assert batch_sizes == []  # one scope at a time: nothing to batch

    with HybridMemory.open(tmp_path / "together", config=MemoryConfig(weight_memory=False)) as mem:
        for i in range(len(scopes)):
            write(mem, i)
    with HybridMemory.open(tmp_path / "together", config=alone) as mem:
        mem.flush()  # every scope had chunks waiting at open
        together = [mem.weights.state(mem.notepad.sql.find_scope(s.key())) for s in scopes]

    assert max(batch_sizes) == len(scopes)
    assert any(len(state.slots()) > 1 for state in expected)  # a second source, a second slot
    for got, want in zip(together, expected, strict=True):
        assert got.slots() == want.slots()
        assert got.extra == want.extra  # the same slot for each source
        assert (got.position, got.steps, got.pending) == (want.position, want.steps, want.pending)
        for name, weight in want.fast_weights.items():
            torch.testing.assert_close(got.fast_weights[name], weight, atol=2e-5, rtol=1e-4)
