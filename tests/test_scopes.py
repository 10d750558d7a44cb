"""A memory of many scopes holds in memory the weight states of the scopes in use only.

Before, opening a memory and every idle poll of its weight worker loaded the state of every
scope with chunks (about 0.8 MB each): memory grew with the number of tenants, not the number
in use, and so did the open time. Now states are loaded when a scope is used, which scopes
have work is read from the delta headers, and at most ``weights_max_loaded_scopes`` states
stay loaded: the least recently used are saved, then dropped, and load again with what they
absorbed.
"""

from __future__ import annotations

import time

import pytest

from memsdk import HybridMemory, MemoryConfig, Scope

SCOPES = 30
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
