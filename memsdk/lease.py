"""Cross-process leases: one writer per scope's weight memory, one embedding stage per memory.

Several processes may open one memory (a SQLite directory, or workers sharing a PostgreSQL
database and the memory directory), so a scope's weight memory is trained and saved only by the
process holding the scope's *lease* in SQL (``weight_leases``). A lease expires ``lease_s`` after
its last renewal, or at once when its holder was a process of this machine that no longer runs
(killed mid-ingest): another process may then take it over.

The embedding stage (:mod:`memsdk.embedding_stage`) holds one lease for the whole memory, in
the same table under the key :data:`EMBEDDING_LEASE`: the rows are keyed by scope id, and scope
ids are positive, so no schema changes, a memory written before opens as it was, and a
release that predates this lease never reads its row.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from memsdk.errors import BusyError
from memsdk.files import process_running
from memsdk.stores.sql import SQLStore

__all__ = ["EMBEDDING_LEASE", "MemoryLease", "WeightLeases", "process_gone"]

logger = logging.getLogger(__name__)

WAIT_RETRY_S = 0.05  # how often a wait for another process's lease tries again
EMBEDDING_LEASE = -1  # the embedding stage's key in the lease table (scope ids are positive)


def _holder_name() -> str:
    """A lease holder's name, ``host:pid:id``: the host and pid tell whether it still runs, the
    random id keeps two opens of one memory in one process apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def process_gone(holder: str) -> bool:
    """Whether a lease holder (``host:pid:id``) was a process of this machine that has ended."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    return not process_running(int(pid_text))


class WeightLeases:
    """This process's leases of scopes' weight memories.

    Args:
        sql: the memory's SQL store (the leases are rows of it).
        lease_s: how long a lease lasts without renewal.
        wait_s: how long :meth:`wait_for` waits for a lease that another process holds.
    """

    def __init__(self, sql: SQLStore, *, lease_s: float, wait_s: float) -> None:
        self.sql = sql
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.holder = _holder_name()
        # Scopes whose lease this process holds; kept by the caller, under the caller's lock.
        self.held: set[int] = set()

    def acquire(self, scope_id: int) -> bool:
        """Take or renew the scope's lease, taking it over from a holder that is gone; returns
        whether this process holds it now."""
        return self.sql.acquire_lease(scope_id, self.holder, ttl_s=self.lease_s, stale=process_gone)

    def wait_for(self, scope_id: int, take: Callable[[int], bool]) -> None:
        """Call ``take(scope_id)`` (an :meth:`acquire` and what the caller does with a lease)
        until it succeeds, for up to ``wait_s``, while another process gives the lease up.

        Raises:
            BusyError: the other process kept it.
        """
        deadline = time.monotonic() + self.wait_s
        while not take(scope_id):
            if time.monotonic() > deadline:
                holder = self.sql.lease_holder(scope_id)
                raise BusyError(
                    f"the weight memory of scope {scope_id} is being trained by another "
                    f"process ({holder or 'unknown'}) and {self.wait_s:.0f} s "
                    "passed without it giving the lease up: try again when that process is "
                    "idle or closed"
                )
            time.sleep(WAIT_RETRY_S)

    def release(self, scope_id: int) -> None:
        """Give the scope's lease up, if this process still holds it."""
        self.sql.release_lease(scope_id, self.holder)

    def release_all(self) -> None:
        """Give every held lease up (at close); one that cannot be released lapses after
        ``lease_s``."""
        for scope_id in sorted(self.held):
            try:
                self.release(scope_id)
            except Exception:  # it lapses after lease_s
                logger.exception("giving up the weight lease of scope %s failed", scope_id)
        self.held.clear()


class MemoryLease:
    """This process's lease of a task of the whole memory (the embedding stage's, under
    :data:`EMBEDDING_LEASE`), with the weight leases' expiry and take-over.

    Args:
        sql: the memory's SQL store.
        key: the lease's key (not a scope id).
        lease_s: how long the lease lasts without renewal.
    """

    def __init__(self, sql: SQLStore, key: int, *, lease_s: float) -> None:
        self.sql = sql
        self.key = key
        self.lease_s = lease_s
        self.holder = _holder_name()
        self.held = False  # as of the last acquire
        self._renewed_at = 0.0

    def acquire(self) -> bool:
        """Take or renew the lease, taking it over from a holder that is gone; returns whether
        this process holds it now."""
        self.held = self.sql.acquire_lease(
            self.key, self.holder, ttl_s=self.lease_s, stale=process_gone
        )
        self._renewed_at = time.monotonic()
        return self.held

    def keep(self) -> bool:
        """Hold the lease: take it if not held, renew it once a third of ``lease_s`` has passed
        since the last renewal (one SQL write per few seconds, not per call); returns whether
        this process holds it."""
        if self.held and time.monotonic() - self._renewed_at < self.lease_s / 3:
            return True
        return self.acquire()

    def release(self) -> None:
        """Give the lease up, if this process holds it."""
        if self.held:
            self.held = False
            self.sql.release_lease(self.key, self.holder)

    def current_holder(self) -> str | None:
        """Who holds the lease (it may have lapsed), or None when nobody does."""
        return self.sql.lease_holder(self.key)
