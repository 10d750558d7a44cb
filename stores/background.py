"""Threads that work behind a memory's callers, at a lower CPU priority than the callers.

A memory embeds chunks, trains its weight memory and builds its text and vector indexes on
background threads. On the two cores of the development machine those kept both cores busy,
and a search's own work (embedding the query, ranking) shared them: at a million chunks, with
the stages running, natural-language search p50 was 20.2 ms at equal priority and 12.5 ms with
the stages at nice 10 (11.1 ms with them stopped; benchmarks/README.md, ``notepad.py``). Linux
gives each thread its own nice value and a thread inherits its creator's, so a background
thread lowers its own first: the threads it starts later (torch's OpenMP workers, tantivy's
indexing threads) run at its priority. When nothing else wants the cores, the stages run as
fast as before; under load they yield, and ``stats()`` shows how far they lag.

The weight memory's training runs lower still (:data:`TRAINING_NICE`), below the embedding
stage: when both have work, the vectors go first. At equal priority the two stages' torch
thread pools, four threads on two cores, took the cores from each other: ingesting 5 MB of
code and logs with the weight memory on, every vector was stored after 106 s (49 kB/s) and
the weights caught up after 269 s; with the training at nice 19, after 72 s (72 kB/s) and 237
s (``benchmarks/ack_ingest.py --prose-mb 4``). A chunk without its vector is missing from
meaning-based search; a lagging weight memory only answers from a little less of the stream,
and says so.

Other systems give no per-thread nice value through ``os.setpriority``; there the threads keep
the process's priority.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BACKGROUND_NICE", "TRAINING_NICE", "background_thread"]

logger = logging.getLogger(__name__)

# The nice value of background threads. 10 and 19 measured alike for searches (12.5 and 11.8
# ms natural-language p50 at 1M chunks); 10 leaves the stages a tenth of a busy core, not a
# sixtieth, so a process that keeps the cores busy does not starve them.
BACKGROUND_NICE = 10
# The weight memory's training: the lowest priority, below the embedding stage (see above).
TRAINING_NICE = 19


def _lowered(target: Callable[..., None], nice: int) -> Callable[..., None]:
    def run(*args: Any) -> None:
        if sys.platform.startswith("linux"):
            try:
                # On Linux, PRIO_PROCESS with a thread id reads and sets that thread's nice
                # value. A thread started by a background thread is already there.
                native = threading.get_native_id()
                own = os.getpriority(os.PRIO_PROCESS, native)
                os.setpriority(os.PRIO_PROCESS, native, max(own, nice))
            except OSError as e:  # a sandbox may refuse it: run at the process's priority
                logger.debug("background thread keeps its priority: %s", e)
        target(*args)

    return run


def background_thread(
    target: Callable[..., None],
    *,
    name: str,
    args: tuple[Any, ...] = (),
    nice: int = BACKGROUND_NICE,
) -> threading.Thread:
    """A daemon thread named ``name`` (not started) that runs ``target(*args)`` at a
    background priority: on Linux, nice ``nice`` (:data:`BACKGROUND_NICE` by default), or the
    process's when that is higher."""
    return threading.Thread(target=_lowered(target, nice), args=args, name=name, daemon=True)
