"""Calls in flight versus ``close()``: one memory is used from many threads, and any of them may
close it while others are inside a call (a web server shutting down, an agent cancelled).

:class:`CallGate` counts the calls in flight. ``close()`` first shuts the gate, so that a call
arriving from then on gets a :class:`~memsdk.errors.MemsdkError` (never a raw error from a
closed database or a stopped worker, never a hang); long calls notice the shut gate at their
next batch and stop (an ingest keeps what it committed); then ``close()`` waits for the calls
still in flight before it stops the weight worker and releases the database, so that nothing
writes after ``close()`` returns.

The gate also refuses use from a process forked after the memory was opened
(:func:`memsdk.forking.check_owner`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from memsdk.errors import MemsdkError
from memsdk.forking import check_owner

__all__ = ["CallGate", "gated"]

F = TypeVar("F", bound=Callable[..., Any])


class CallGate:
    """The calls in flight on one memory (``what`` names it in errors)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.owner_pid = os.getpid()
        self._changed = threading.Condition()
        self._in_flight = 0
        self._shut = False

    @property
    def shut(self) -> bool:
        return self._shut

    def closed_error(self) -> MemsdkError:
        return MemsdkError(f"{self.what} is closed: open it again with HybridMemory.open")

    @contextmanager
    def call(self) -> Iterator[None]:
        """Hold the gate open for one call.

        Raises:
            MemsdkError: the memory is closed or closing, or was opened by another process.
        """
        # Before the lock: in a forked child, a parent thread may have held it at the fork.
        check_owner(self.owner_pid, self.what)
        with self._changed:
            if self._shut:
                raise self.closed_error()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                if not self._in_flight:
                    self._changed.notify_all()

    def check(self, call: str) -> None:
        """Between two batches of a long call: stop it once the memory is closing.

        Raises:
            MemsdkError: ``close()`` was called meanwhile.
        """
        if self._shut:
            raise MemsdkError(
                f"{self.what} was closed while {call} ran: what it committed before stays; "
                "open the memory again and repeat the call to complete it"
            )

    def shut_down(self) -> bool:
        """Refuse new calls; False when the gate was already shut (close() called before)."""
        with self._changed:
            if self._shut:
                return False
            self._shut = True
            return True

    def wait_idle(self) -> None:
        """Wait until no call is in flight (each stops at its next batch)."""
        with self._changed:
            while self._in_flight:
                self._changed.wait()


def gated(method: F) -> F:
    """Run a ``HybridMemory`` method inside its memory's :class:`CallGate`."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._gate.call():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
