"""Background threads run below their callers' CPU priority (memsdk/stores/background.py)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from memsdk import HybridMemory
from memsdk.stores.background import BACKGROUND_NICE, background_thread

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's"
)


def nice(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_a_memory_s_stages_run_below_the_caller(mem: HybridMemory, scope) -> None:
    """The embedding stage runs below the caller, and the weight memory's training below
    the embedding stage."""
    caller = nice(threading.get_native_id())
    mem.add("ticket 4812: the VPN drops every hour", scope=scope)
    mem.flush()
    assert mem.weights is not None
    for worker, want in ((mem.embedding._worker, BACKGROUND_NICE), (mem.weights._worker, 19)):
        assert worker.native_id is not None and worker.is_alive()
        assert nice(worker.native_id) == max(caller, want), worker.name
    assert nice(threading.get_native_id()) == caller  # the caller's own is untouched
    hits = mem.search("VPN drops", scope=scope, k=1)
    assert hits and "4812" in hits[0].text


def test_threads_a_background_thread_starts_share_its_priority() -> None:
    """torch's OpenMP workers (and tantivy's indexing threads) are started by the background
    thread that first runs their work, and run at its priority."""
    torch.set_num_threads(2)
    torch.ones(256, 256) @ torch.ones(256, 256)  # the caller's own workers, if any
    before = threads()
    seen: dict[str, int] = {}
    looked, release = threading.Event(), threading.Event()

    def work() -> None:
        torch.ones(256, 256) @ torch.ones(256, 256)
        seen["own"] = nice(threading.get_native_id())
        seen.update({str(t): nice(t) for t in threads() - before})
        looked.set()
        release.wait(30)  # alive while the test reads, so no thread id is reused

    thread = background_thread(work, name="memsdk-test")
    thread.start()
    try:
        assert looked.wait(30)
        assert seen["own"] == max(nice(threading.get_native_id()), BACKGROUND_NICE)
        started = {t: n for t, n in seen.items() if t != "own"}
        assert len(started) >= 2  # the thread itself and torch's second worker
        assert set(started.values()) == {seen["own"]}
    finally:
        release.set()
        thread.join()
