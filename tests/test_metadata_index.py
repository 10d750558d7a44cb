"""Metadata filters read an index on SQLite instead of parsing every chunk's metadata (issue 18).

A real SQLite store: the index (``chunk_meta``) is kept by triggers, filled for memories
written before it, gives the same answers as the JSON it indexes, and is what the filter reads.
A filter's ids, once listed, are kept and follow the history (``FilterIds``).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from memsdk.filters import compile_filters
from memsdk.stores.filter_ids import FilterIds
from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_records import NewChunk
from memsdk.stores.sql_schema import ChunkRow

# Values chosen to be confused by a careless index: "1" / 1 / 1.0 / true, null, nested.
METADATA: list[dict[str, Any]] = [
    {"kind": "log", "n": 1},
    {"kind": "log", "n": 1.0, "flag": True},
    {"kind": "code", "n": "1", "flag": False},
    {"kind": "code", "n": 2.5, "flag": 1},
    {"kind": None, "n": -3},
    {"kind": ["log"], "nested": {"kind": "log"}},
    {"n": 10**18},
    {},
]
FILTERS: list[dict[str, Any]] = [
    {"kind": {"eq": "log"}},
    {"kind": "code"},
    {"kind": {"ne": "log"}},
    {"kind": {"in": ["log", "code"]}},
    {"kind": {"nin": ["log", None]}},
    {"kind": {"eq": None}},
    {"n": {"eq": 1}},
    {"n": {"eq": "1"}},
    {"n": {"gt": 1}},
    {"n": {"gte": 1}},
    {"n": {"lt": 0}},
    {"n": {"in": [1, "1", 2.5]}},
    {"n": {"gte": 10**18}},
    {"flag": {"eq": True}},
    {"flag": {"eq": False}},
    {"flag": {"eq": 1}},
    {"flag": {"ne": True}},
    {"AND": [{"kind": "code"}, {"n": {"gt": 2}}]},
    {"OR": [{"kind": "log"}, {"flag": True}]},
]


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _expected(meta: dict[str, Any], flt: dict[str, Any]) -> bool:
    """The documented filter semantics, in Python: a value matches values of its own type."""
    if "AND" in flt:
        return all(_expected(meta, f) for f in flt["AND"])
    if "OR" in flt:
        return any(_expected(meta, f) for f in flt["OR"])
    ((key, cond),) = flt.items()
    if not isinstance(cond, dict):
        cond = {"eq": cond}
    ((op, value),) = cond.items()
    present = key in meta
    stored = meta.get(key)

    def eq(v: Any) -> bool:
        if v is None:
            return present and stored is None
        return present and _kind(stored) == _kind(v) and stored == v

    if op == "eq":
        return eq(value)
    if op == "ne":
        return not eq(value)
    if op == "in":
        return any(eq(v) for v in value)
    if op == "nin":
        return not any(eq(v) for v in value)
    if not (present and _kind(stored) == _kind(value)):
        return False
    return {"gt": stored > value, "gte": stored >= value, "lt": stored < value}[op]


def _rows(metadata: list[dict[str, Any]], tag: str) -> list[NewChunk]:
    rows = []
    for i, meta in enumerate(metadata):
        text = f"{tag} chunk {i}"
        digest = hashlib.sha256(text.encode()).hexdigest()
        rows.append(NewChunk(i, 0, len(text), text, None, digest, meta, np.empty(0, np.float32)))
    return rows


def _store(path: Path) -> SQLStore:
    sql = SQLStore(f"sqlite:///{path}")
    sql.create_schema()
    return sql


def _index_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM chunk_meta").fetchone()[0]


@pytest.fixture
def filled(tmp_path) -> Iterator[tuple[SQLStore, int, list[int]]]:
    """Two scopes holding the same metadata; the first scope's id and its chunk ids."""
    sql = _store(tmp_path / "memory.db")
    mine = sql.ensure_scope(("acme", "u1", "", ""))
    other = sql.ensure_scope(("acme", "u2", "", ""))
    ids = sql.insert_chunks(mine, None, _rows(METADATA, "mine"))
    sql.insert_chunks(other, None, _rows(METADATA, "other"))
    yield sql, mine, [int(i) for i in ids if i is not None]
    sql.close()


def test_indexed_filters_answer_as_the_metadata_says(filled):
    sql, scope_id, ids = filled
    for flt in FILTERS:
        got = set(sql.chunk_ids(scope_id, compile_filters(flt)).tolist())
        want = {cid for cid, meta in zip(ids, METADATA, strict=True) if _expected(meta, flt)}
        assert got == want, flt


def test_the_filter_reads_the_index_not_every_chunk(filled, tmp_path):
    _, scope_id, _ = filled
    stmt = select(ChunkRow.id).where(
        ChunkRow.scope_id == scope_id, compile_filters({"kind": "log"})
    )
    compiled = stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    with sqlite3.connect(tmp_path / "memory.db") as conn:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {compiled}"))
    assert "SEARCH chunk_meta USING PRIMARY KEY (key=? AND value=?)" in plan, plan
    assert "json_extract" not in str(compiled)


def test_updates_and_deletes_keep_the_index_in_step(filled, tmp_path):
    sql, scope_id, ids = filled
    log = compile_filters({"kind": "log"})
    assert set(sql.chunk_ids(scope_id, log).tolist()) == {ids[0], ids[1]}
    sql.update_chunk(
        scope_id, ids[0], text_value=None, content_hash=None, embedding=None,
        metadata={"kind": "code"},
    )  # fmt: skip
    assert set(sql.chunk_ids(scope_id, log).tolist()) == {ids[1]}
    assert ids[0] in sql.chunk_ids(scope_id, compile_filters({"kind": "code"})).tolist()
    before = _index_rows(tmp_path / "memory.db")
    sql.delete_chunks(scope_id, [ids[1]])  # kind, n and flag: three indexed values
    assert sql.chunk_ids(scope_id, log).tolist() == []
    assert _index_rows(tmp_path / "memory.db") == before - 3


def test_a_memory_written_before_the_index_gets_it_filled_on_open(tmp_path):
    path = tmp_path / "memory.db"
    sql = _store(path)
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    sql.close()
    with sqlite3.connect(path) as conn:  # the schema as it was before the index
        for trigger in ("chunk_meta_insert", "chunk_meta_delete", "chunk_meta_update"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE chunk_meta")
    old = SQLStore(f"sqlite:///{path}")
    ids = [int(i) for i in old.insert_chunks(scope_id, None, _rows(METADATA, "old")) if i]
    old.close()
    sql = _store(path)
    try:
        assert set(sql.chunk_ids(scope_id, compile_filters({"kind": "log"})).tolist()) == {
            ids[0],
            ids[1],
        }
        rows = _index_rows(path)
        sql.close()
        sql = _store(path)  # filled once: opening again adds nothing
        assert _index_rows(path) == rows
    finally:
        sql.close()


def test_kept_filter_listings_follow_every_change_as_a_new_listing_sees_it(filled):
    """A kept listing, brought up to date from the history, holds what listing the filter
    again gives: after inserts in both scopes, metadata updates and deletes."""
    sql, scope_id, ids = filled
    other = sql.ensure_scope(("acme", "u2", "", ""))
    # Never listed again, only followed.
    following = FilterIds(sql, kept_filters=len(FILTERS), followed_per_id=1e9)
    compiled = [(compile_filters(f), compile_filters(f, correlated=True)) for f in FILTERS]
    rng = random.Random(7)

    def check() -> None:
        for where, probe in compiled:
            expected = np.sort(sql.chunk_ids(scope_id, where))
            assert following.ids(scope_id, where, probe).tolist() == expected.tolist()

    check()
    held = list(ids)
    for step in range(12):
        scope = rng.choice((scope_id, other))
        new = sql.insert_chunks(scope, None, _rows(rng.sample(METADATA, 4), f"step {step}"))
        if scope == scope_id:
            held += [int(i) for i in new if i is not None]
        changed = rng.choice(held)
        sql.update_chunk(
            scope_id, changed, text_value=None, content_hash=None, embedding=None,
            metadata=rng.choice(METADATA),
        )  # fmt: skip
        gone = rng.choice(held)
        sql.delete_chunks(scope_id, [gone])
        held.remove(gone)
        check()
    assert following.listings == len(FILTERS)


def test_a_listing_far_behind_the_history_is_listed_again_and_few_are_kept(filled):
    sql, scope_id, _ = filled
    filters = FilterIds(sql, kept_filters=2)
    log = compile_filters({"kind": "log"}), compile_filters({"kind": "log"}, correlated=True)
    code = compile_filters({"kind": "code"}), compile_filters({"kind": "code"}, correlated=True)
    assert filters.kept(scope_id, *log) is None and filters.listings == 0  # nothing listed
    assert len(filters.ids(scope_id, *log)) == 2
    assert filters.ids(scope_id, *log) is filters.kept(scope_id, *log)  # kept, not listed again
    assert filters.listings == 1
    # 16 events behind a listing of 2 ids: listing again costs less than following them.
    added = sql.insert_chunks(scope_id, None, _rows([{"kind": "log"}] * 16, "more"))
    assert filters.kept(scope_id, *log) is None and filters.listings == 1
    assert len(filters.ids(scope_id, *log)) == 18 and filters.listings == 2
    assert filters.ids(scope_id, *code).tolist() == sorted(sql.chunk_ids(scope_id, code[0]))
    sql.delete_chunks(scope_id, [int(added[0])])  # one event behind 17: followed
    assert len(filters.ids(scope_id, *log)) == 17 and filters.listings == 3
    # A third filter drops the least recently used listing (code), which is listed again.
    filters.ids(scope_id, *(compile_filters({"n": 1}), compile_filters({"n": 1}, correlated=True)))
    filters.ids(scope_id, *log)
    assert filters.listings == 4
    filters.ids(scope_id, *code)
    assert filters.listings == 5
