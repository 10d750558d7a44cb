"""What ``fork`` breaks, reset in the child, so that a memory opened in a forked process works.

Production hosts fork after importing memsdk (gunicorn ``--preload``, Celery's prefork pool,
``multiprocessing`` on Linux). A forked child inherits the parent's memory but only the thread
that called ``fork``:

- torch's CPU thread pool (OpenMP) is copied without its threads, so the child's first parallel
  kernel (the embedder's ``layer_norm``) waits forever for workers that do not exist. The child
  runs torch on one thread instead: ``torch.set_num_threads(1)`` keeps every kernel off the
  pool. (The pool cannot be rebuilt in the child; a worker process that wants more threads
  should be started with ``spawn``.)
- a lock another thread held at the time of the fork stays held forever in the child; each
  module registers its own reset with :func:`after_fork_in_child`.
- an open memory's worker thread, database connections and leases belong to the parent: the
  child must not use them. :class:`~memsdk.memory.HybridMemory` remembers the process that
  opened it and refuses use from another one (:func:`check_owner`), naming the fix: open the
  memory again in the child.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from memsdk.errors import MemsdkError

__all__ = ["after_fork_in_child", "check_owner"]

_resets: list[Callable[[], None]] = []


def after_fork_in_child(reset: Callable[[], None]) -> None:
    """Run ``reset`` in every child forked from now on (before any other memsdk code there)."""
    _resets.append(reset)


def _in_child() -> None:
    torch.set_num_threads(1)  # the parent's OpenMP pool has no threads in the child
    for reset in _resets:
        reset()


os.register_at_fork(after_in_child=_in_child)


def check_owner(owner_pid: int, what: str) -> None:
    """Refuse to use ``what`` (opened by process ``owner_pid``) from another process.

    Raises:
        MemsdkError: this process is a child forked after ``what`` was opened.
    """
    pid = os.getpid()
    if pid != owner_pid:
        raise MemsdkError(
            f"{what} was opened by process {owner_pid} and this is process {pid}, forked from "
            "it: its worker thread, database connections and leases stay with the parent. "
            "Open the memory again in this process (HybridMemory.open(path))"
        )
