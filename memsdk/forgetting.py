"""Deleting a whole scope, weights and router policy included, without a window that leaks.

``delete_all`` removes the scope's chunks in SQL, then resets the scope's weight memory and
removes its router policy, both of which learned from those chunks. A crash, or a failure, after
the SQL commit would leave the deleted data in the weights for good, so the transaction that
deletes the chunks also records that the reset is owed (``owed_resets``). The record is removed
only once the reset is done, and every open (and every :meth:`HybridMemory.flush`) finishes the
resets still owed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from memsdk.errors import MemsdkError
from memsdk.scope import Scope

if TYPE_CHECKING:
    from memsdk.memory import HybridMemory

__all__ = ["delete_scope", "settle_owed_resets"]

logger = logging.getLogger(__name__)


def delete_scope(memory: HybridMemory, scope: Scope) -> int:
    """:meth:`HybridMemory.delete_all`: returns how many memories were deleted.

    Raises:
        BusyError: another process kept the scope's weight lease; the reset stays owed and is
            finished by the next open or flush.
    """
    scope_id = memory._scope_id(scope, create=False)
    if scope_id is None:
        return 0
    deleted = memory.notepad.sql.delete_scope(scope_id)
    memory.notepad.sync()
    memory.notepad.save_index()
    _settle(memory, scope_id)
    return len(deleted)


def settle_owed_resets(memory: HybridMemory) -> None:
    """Finish every reset a delete-all still owes (after a crash or a failure). A reset that
    fails again stays owed, with a warning: the next open or flush tries again."""
    for scope_id in memory.notepad.sql.owed_resets():
        try:
            _settle(memory, scope_id)
        except (MemsdkError, OSError) as exc:
            logger.warning(
                "the weight memory of scope %s still holds chunks a delete-all removed, and "
                "resetting it failed (%s): it is tried again at the next open or flush",
                scope_id,
                exc,
            )


def _settle(memory: HybridMemory, scope_id: int) -> None:
    memory._recall.forget(scope_id)
    if memory.weights is None:
        return  # owed until the memory is opened with its weight memory
    memory.weights.reset(scope_id)
    memory.notepad.sql.settle_reset(scope_id)
