"""What the two background workers of a memory share: the consolidation worker
(:mod:`memsdk.consolidation`) and the embedding stage (:mod:`memsdk.embedding_stage`) each run
one thread fed by a bounded queue of :class:`Command`, and close the same way
(:func:`stop_and_join`).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memsdk.errors import MemsdkError

if TYPE_CHECKING:  # both import this module
    from memsdk.consolidation import Consolidator
    from memsdk.embedding_stage import EmbeddingStage

__all__ = ["Command", "closed_error", "fail_queued", "stop_and_join"]


@dataclass
class Command:
    kind: str  # "scope" (consolidate), "finish", "reset", "stop"
    scope_id: int | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def stop_and_join(worker: Consolidator | EmbeddingStage) -> None:
    """Close a background worker: refuse new commands, queue "stop" once (when the worker
    still runs) and wait for it, unless the worker itself is closing."""
    worker._stopping.set()
    with worker._accept_lock:
        accepting, worker._accepting = worker._accepting, False
        if accepting and worker._worker.is_alive():
            worker._queue.put(Command("stop"))
    if worker._worker is not threading.current_thread():
        worker._worker.join()


def fail_queued(commands: queue.Queue[Command]) -> None:
    """After "stop": fail whatever a worker still has queued (nothing should be)."""
    while True:
        try:
            command = commands.get_nowait()
        except queue.Empty:
            return
        command.error = closed_error()
        command.done.set()


def closed_error() -> MemsdkError:
    return MemsdkError("the memory is closed: open it again with HybridMemory.open")
