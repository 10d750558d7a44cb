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

Torch work outside the weight memory's own thread runs on a thread that ends with it
(:func:`on_fresh_thread`): loading the models, the encoder's batches, scoring with the weights.
Torch's CPU build runs its parallel operators on GNU OpenMP, which gives every thread that runs
one a pool of helper threads, kept until that thread ends. While the process holds more of
those threads than it has cores, OpenMP stops letting idle helpers spin and puts them to sleep,
so every operator pays a wake-up: on two cores, an add of 65,536 floats took 10 us with one
pool and 40 to 90 us with two. The weight memory's training is many small operators: one
scope's 1.14 MB of logs was absorbed at 17.7 kB/s while the caller's thread kept the pool it
made loading the models, and at 27.7 kB/s once nothing did (``benchmarks/ack_ingest.py
--weights-alone``). A pool that the application's own threads make by running torch stays, and
slows the training the same way.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "BACKGROUND_NICE",
    "TRAINING_NICE",
    "background_thread",
    "fresh_thread",
    "on_fresh_thread",
]

P = ParamSpec("P")
T = TypeVar("T")

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


def on_fresh_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on a new thread, waited for: its result, or its exception raised
    here. The thread ends with the call, and with it the OpenMP pool torch gave it (see the
    module doc), so no thread of the caller's keeps one. It runs in a copy of the caller's
    context variables, at the caller's priority. The cost is a thread's start and a new pool's:
    on two cores, ``bits_per_byte`` of a log line took 9.1-9.6 ms p50 this way against 9.7-11.5
    on the caller's thread, and a routed ``query`` 385 ms against 372 (3.5% more). An
    interrupt (Ctrl-C) stops the caller's wait, not the call: the thread finishes it alone, and
    what it returns or raises is dropped.
    """
    context = contextvars.copy_context()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, context.run(fn, *args, **kwargs)))
        except BaseException as e:  # raised in the caller
            outcome.append((False, e))

    thread = threading.Thread(target=run, name=f"memsdk-{fn.__name__}", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def fresh_thread(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate ``fn`` so that each call runs on a fresh thread (:func:`on_fresh_thread`)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return on_fresh_thread(fn, *args, **kwargs)

    return wrapper
