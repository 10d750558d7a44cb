"""The ids a metadata filter keeps in a scope, listed once and then kept current from the history.

A filtered vector search first checks the scope's nearest candidates against its filter
(:meth:`Notepad.vector_search <memsdk.stores.notepad.Notepad.vector_search>`). When too few of
them pass (a question about logs, filtered to code), it searches among the filter's own ids
instead. Listing them from SQL is slow: 85 ms for the 258,000 ids of a broad filter at a
million chunks (SQLite 36 ms, SQLAlchemy's rows 26, the array 12). That is more than a whole
search may take. An agent asks with the same few filters again and again, so the last few
listings are kept, and a kept listing serves its filter's next searches at once: checking
candidates costs more than following the listing (4,096 candidates took 16 to 30 ms).

A kept listing follows the history, as the vector index does. A listing read at history event
g is current again once the chunks changed by later events have been checked against the filter,
one index probe each (``compile_filters(correlated=True)``). The embedding stage's events are
skipped: a new vector changes no chunk's metadata, so the background stage does not wear a
listing out. At a million chunks a listing cost about 1.4 us an id and following about 10 us an
event, so a listing behind by more events than an eighth of its ids is listed again
(``FOLLOWED_PER_ID``).

History ids are committed in order (one writer at a time, on PostgreSQL too; see
:meth:`SQLStore.writing <memsdk.stores.sql.SQLStore.writing>`), so no event below the newest one
read can appear later.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import and_
from sqlalchemy.sql.elements import ColumnElement

from memsdk.stores.sql_schema import ChunkRow
from memsdk.stores.vector_backlog import EMBED_EVENT

if TYPE_CHECKING:
    from memsdk.stores.sql import SQLStore

__all__ = ["FOLLOWED_PER_ID", "KEPT_FILTERS", "KEPT_IDS", "FilterIds"]

KEPT_FILTERS = 16  # listings kept, the least recently used dropped first
KEPT_IDS = 4_000_000  # ids kept in all (32 MB); the listing in use is kept whatever its size
FOLLOWED_PER_ID = 0.125  # history events a listing follows per id it holds, past that relisted
_CHECK_BATCH = 4096  # changed chunks checked per query (one IN list)


@dataclass(frozen=True)
class _Listing:
    history_id: int  # the newest history event the listing reflects
    ids: np.ndarray  # (n,) int64, ascending


def _key(where: ColumnElement[bool]) -> str:
    """The filter as its SQL text and bound values. The same filter compiles to the same text,
    and a value that differs changes the key."""
    compiled = where.compile()
    return f"{compiled}\n{sorted((k, repr(v)) for k, v in compiled.params.items())}"


class FilterIds:
    """The ids that filters keep in scopes, the last few listings kept current.

    Args:
        sql: the store the ids come from.
        kept_filters, kept_ids: how many listings, and how many ids in all, are kept.
        followed_per_id: a listing behind by more history events than its ids times this is
            listed again rather than followed.
    """

    def __init__(
        self,
        sql: SQLStore,
        *,
        kept_filters: int = KEPT_FILTERS,
        kept_ids: int = KEPT_IDS,
        followed_per_id: float = FOLLOWED_PER_ID,
    ) -> None:
        self.sql = sql
        self.kept_filters, self.kept_ids = kept_filters, kept_ids
        self.followed_per_id = followed_per_id
        self.listings = 0  # filters listed from SQL, for tests and benchmarks
        self._kept: OrderedDict[tuple[int, str], _Listing] = OrderedDict()
        self._lock = threading.Lock()

    def ids(
        self, scope_id: int, where: ColumnElement[bool], probe: ColumnElement[bool]
    ) -> np.ndarray:
        """Ids of the scope's chunks that pass the filter, (n,) int64 ascending: the kept
        listing brought up to date, or a new one.

        ``where`` is the filter in the form that lists ids (``compile_filters``), ``probe`` the
        same filter in the form that checks given rows (``compile_filters(correlated=True)``).
        The array returned is shared with later calls and must not be changed.
        """
        found = self._ids(scope_id, where, probe, listing=True)
        assert found is not None
        return found

    def kept(
        self, scope_id: int, where: ColumnElement[bool], probe: ColumnElement[bool]
    ) -> np.ndarray | None:
        """:meth:`ids` when a listing of the filter is kept and near enough the history to be
        followed; else None, and nothing is listed."""
        return self._ids(scope_id, where, probe, listing=False)

    def _ids(
        self,
        scope_id: int,
        where: ColumnElement[bool],
        probe: ColumnElement[bool],
        *,
        listing: bool,
    ) -> np.ndarray | None:
        key = (scope_id, _key(where))
        with self._lock:
            kept = self._kept.get(key)
            newest = self.sql.max_history_id()
            behind = newest - kept.history_id if kept is not None else 0
            if kept is None or behind > max(1, len(kept.ids)) * self.followed_per_id:
                if not listing:
                    return None
                # Read the history id first: a write landing during the listing has a later
                # event, so the next call checks its chunks again.
                ids = np.sort(self.sql.chunk_ids(scope_id, where), kind="stable")
                kept = _Listing(newest, ids)
                self.listings += 1
            elif newest > kept.history_id:
                kept = self._follow(kept, scope_id, probe, newest)
            self._kept[key] = kept
            self._kept.move_to_end(key)
            self._drop_beyond_bounds()
            return kept.ids

    def _follow(
        self, listing: _Listing, scope_id: int, probe: ColumnElement[bool], newest: int
    ) -> _Listing:
        """The listing brought to event ``newest``: the chunks later events changed leave it,
        and those of them that pass the filter in the scope now come back."""
        _, changed = self.sql.touched_since(listing.history_id, upto=newest, skip=(EMBED_EVENT,))
        if len(changed) == 0:
            return _Listing(newest, listing.ids)
        in_scope = and_(ChunkRow.scope_id == scope_id, probe)
        passing: set[int] = set()
        for start in range(0, len(changed), _CHECK_BATCH):
            passing |= self.sql.passing(changed[start : start + _CHECK_BATCH], in_scope)
        ids = listing.ids
        at = np.searchsorted(ids, changed)
        held = at < len(ids)
        held[held] = ids[at[held]] == changed[held]
        kept = np.delete(ids, at[held])
        back = np.array(sorted(passing), dtype=np.int64)
        return _Listing(newest, np.insert(kept, np.searchsorted(kept, back), back))

    def _drop_beyond_bounds(self) -> None:
        """Drop the least recently used listings past the bounds, never the newest one."""
        total = sum(len(listing.ids) for listing in self._kept.values())
        while len(self._kept) > 1 and (
            len(self._kept) > self.kept_filters or total > self.kept_ids
        ):
            _, dropped = self._kept.popitem(last=False)
            total -= len(dropped.ids)
