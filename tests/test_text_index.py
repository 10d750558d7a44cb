"""The text index: a large memory's keyword ranking on tantivy follows SQL (issue 18).

A real SQLite store and a real tantivy index, built with the threshold at 0. Each test checks
what a user relies on once the index answers: the same words find the same chunks as SQL's
full-text index, a chunk is found by the first search after its commit, updates and deletes
are seen, one scope never sees another's chunks, and a filter is honoured.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.filters import compile_filters, string_terms
from memsdk.repair import repair
from memsdk.stores import text_index
from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_records import NewChunk
from memsdk.stores.text_index import TextIndex

IDENTIFIER = "blk_-1608999687919862906"


def add(sql: SQLStore, scope_id: int, texts: list[str], metas=None, contexts=None) -> list[int]:
    rows = []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(text.encode()).hexdigest()
        meta = metas[i] if metas else {}
        context = contexts[i] if contexts else None
        rows.append(NewChunk(i, 0, len(text), text, context, digest, meta, np.empty(0)))
    return [int(cid) for cid in sql.insert_chunks(scope_id, None, rows)]


@pytest.fixture
def store(tmp_path) -> Iterator[tuple[SQLStore, TextIndex, int, int]]:
    """A store of two scopes with a few hundred log-like chunks, its index built."""
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    first = sql.ensure_scope(("acme", "u1", "", ""))
    other = sql.ensure_scope(("acme", "u2", "", ""))
    add(sql, first, [f"datanode {i} received block blk_{i} of size {i * 7}" for i in range(300)])
    add(sql, other, [f"datanode {i} failed to receive a block" for i in range(50)])
    index = TextIndex(sql, threshold=0)
    assert index.wait_ready(60)
    yield sql, index, first, other
    index.close()
    sql.close()


def ids_of(rows: list[tuple[int, float]]) -> list[int]:
    return [cid for cid, _ in rows]


def test_it_waits_for_the_threshold(tmp_path) -> None:
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    add(sql, scope_id, ["one chunk", "two chunks"])
    index = TextIndex(sql, threshold=3)
    assert not index.wait_ready(5)
    assert index.ranking(scope_id, "chunk", limit=5) is None  # SQL answers
    index._counted_at = float("-inf")  # counted again at once, not after RECOUNT_S
    add(sql, scope_id, ["three chunks"])
    assert index.wait_ready(60)
    assert len(index.ranking(scope_id, "chunk", limit=5)[0]) == 3
    index.close()
    sql.close()


def test_it_finds_what_sql_finds(store) -> None:
    sql, index, first, _ = store
    for query in ("received block", "size 21", "datanode 17", "receiving blocks"):
        tantivy_ids = set(ids_of(index.ranking(first, query, limit=1000)[0]))
        sql_ids = set(ids_of(sql.keyword_search(first, query, limit=1000)))
        assert tantivy_ids == sql_ids, query
    rows, selecting = index.ranking(first, f"show the lines about {IDENTIFIER}", limit=10)
    assert len(rows) == 0  # blk_-1608999687919862906 is held by no chunk of this scope...
    rows, selecting = index.ranking(first, "datanode blk_42", limit=10)
    [(top, _)] = rows  # ...an identifier selects alone: "datanode" only scores
    assert "blk_42 " in sql.get_chunks(first, [top])[top].text
    assert selecting == [["blk", "42"]]


def test_a_chunk_is_found_by_the_first_search_after_its_commit(store) -> None:
    sql, index, first, _ = store
    assert index.ranking(first, IDENTIFIER, limit=5)[0] == []
    [new] = add(sql, first, [f"error writing {IDENTIFIER} to disk"])
    assert ids_of(index.ranking(first, IDENTIFIER, limit=5)[0]) == [new]


def test_a_long_backlog_is_replayed_in_the_background(store, monkeypatch) -> None:
    sql, index, first, _ = store
    monkeypatch.setattr(text_index, "SYNC_INLINE", 10)
    monkeypatch.setattr(text_index, "REPLAY_EVENTS", 7)  # replayed in six steps
    new = add(sql, first, [f"bulk line {i} about {IDENTIFIER}" for i in range(40)])
    assert index.ranking(first, IDENTIFIER, limit=50) is None  # SQL answers meanwhile
    assert index.wait_ready(60)
    assert sorted(ids_of(index.ranking(first, IDENTIFIER, limit=50)[0])) == new


def test_a_backlog_larger_than_the_index_builds_it_anew(tmp_path, monkeypatch, caplog) -> None:
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    first = add(sql, scope_id, [f"first line {i}" for i in range(5)])
    index = TextIndex(sql, threshold=0)
    assert index.wait_ready(60)
    monkeypatch.setattr(text_index, "SYNC_INLINE", 10)
    new = add(sql, scope_id, [f"bulk line {i} about {IDENTIFIER}" for i in range(40)])
    sql.delete_chunks(scope_id, first[:2])
    with caplog.at_level("INFO", logger="memsdk.stores.text_index"):
        assert index.ranking(scope_id, "line", limit=50) is None  # SQL answers meanwhile
        assert index.wait_ready(60)
    assert sum("text index built" in r.getMessage() for r in caplog.records) == 1  # rebuilt
    assert sorted(ids_of(index.ranking(scope_id, "line", limit=50)[0])) == first[2:] + new
    index.close()
    sql.close()


def test_an_error_while_updating_leaves_search_to_sql(store, monkeypatch, caplog) -> None:
    sql, index, first, _ = store
    monkeypatch.setattr(text_index, "SYNC_INLINE", 10)
    add(sql, first, [f"bulk line {i}" for i in range(40)])

    def unreadable(*args, **kwargs):
        raise OSError("disk unreadable")

    monkeypatch.setattr(sql, "chunk_texts", unreadable)
    with caplog.at_level("ERROR", logger="memsdk.stores.text_index"):
        assert index.ranking(first, "bulk", limit=5) is None
        assert not index.wait_ready(60)
    assert "updating the text index failed" in caplog.text
    assert index.state == "sql"  # an index that missed a change is never searched again
    assert index.ranking(first, "datanode", limit=5) is None


def test_a_forked_child_leaves_the_parents_index_in_place(store) -> None:
    _, index, first, _ = store
    folder = Path(index._directory.path)
    pid = os.fork()
    if pid == 0:  # the child exits as a worker process does: its exit handlers run
        try:
            atexit._run_exitfuncs()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert folder.is_dir() and any(folder.iterdir())
    assert ids_of(index.ranking(first, "blk_42", limit=5)[0])  # still searchable
    index.close()
    assert not folder.exists()  # the parent removes it


def test_updates_and_deletes_are_seen(store) -> None:
    sql, index, first, _ = store
    [cid] = ids_of(index.ranking(first, "blk_42", limit=1)[0])
    sql.update_chunk(
        first,
        cid,
        text_value="the mountains were quiet",
        content_hash=hashlib.sha256(b"the mountains were quiet").hexdigest(),
        embedding=np.empty(0, np.float32),
        metadata=None,
    )
    assert ids_of(index.ranking(first, "mountains", limit=5)[0]) == [cid]
    assert index.ranking(first, "blk_42", limit=5)[0] == []
    sql.delete_chunks(first, [cid])
    assert index.ranking(first, "mountains", limit=5)[0] == []


def test_one_scope_never_sees_another(store) -> None:
    sql, index, first, other = store
    found = set(ids_of(index.ranking(first, "failed to receive", limit=1000)[0]))
    theirs = set(ids_of(sql.keyword_search(other, "failed receive", limit=1000)))
    assert len(theirs) == 50
    assert found and not found & theirs
    assert set(ids_of(index.ranking(other, "datanode", limit=1000)[0])) == theirs


def test_a_filter_is_honoured_or_left_to_sql(tmp_path) -> None:
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    texts = [f"request {i} failed with a timeout" for i in range(600)]
    ids = add(sql, scope_id, texts, metas=[{"n": i} for i in range(600)])
    index = TextIndex(sql, threshold=0)
    assert index.wait_ready(60)
    for f, want in (
        ({"n": {"gte": 300}}, set(ids[300:])),  # broad: the nearest candidates pass
        ({"n": {"eq": 599}}, {ids[599]}),  # narrow: every match checked
    ):
        rows = index.ranking(
            scope_id, "timeout", limit=1000, probe=compile_filters(f, correlated=True)
        )
        assert rows is not None and set(ids_of(rows[0])) == want
    # Among more matches than the candidates checked, too few pass: SQL's filtered ranking.
    add(sql, scope_id, [f"timeout number {i}" for i in range(5000)])
    probe = compile_filters({"n": {"eq": 599}}, correlated=True)
    assert index.ranking(scope_id, "timeout", limit=10, probe=probe) is None
    index.close()
    sql.close()


def test_a_string_filter_is_answered_inside_the_index(tmp_path) -> None:
    """A filter of string equalities ranks the chunks that pass it where checking the nearest
    candidates with SQL would have handed the search to SQL, and follows metadata updates."""
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    add(sql, scope_id, [f"timeout {i}" for i in range(5000)])  # ranked first
    metas = [{"team": f"t{i % 3}", "n": str(i % 2)} for i in range(90)]
    ids = add(sql, scope_id, [f"request {i} failed with a timeout" for i in range(90)], metas)
    index = TextIndex(sql, threshold=0)
    assert index.wait_ready(60)

    def ranked(filters: dict, limit: int = 1000) -> set[int] | None:
        probe = compile_filters(filters, correlated=True)
        found = index.ranking(
            scope_id, "timeout", limit=limit, probe=probe, terms=string_terms(filters)
        )
        return None if found is None else set(ids_of(found[0]))

    assert (
        index.ranking(
            scope_id, "timeout", limit=10, probe=compile_filters({"team": "t1"}, correlated=True)
        )
        is None
    )  # the 4,096 best candidates hold too few: SQL would rank
    assert ranked({"team": "t1"}) == set(ids[1::3])
    assert ranked({"team": {"in": ["t0", "t2"]}, "n": "0"}) == {
        cid for i, cid in enumerate(ids) if i % 3 != 1 and i % 2 == 0
    }
    assert ranked({"team": "t1"}, limit=5) <= set(ids[1::3])
    assert ranked({"team": "T1"}) == set()  # exact, as SQL compares
    sql.update_chunk(
        scope_id,
        ids[0],
        text_value=None,
        content_hash=None,
        embedding=None,
        metadata={"team": "t1", "n": "0"},
    )
    assert ids[0] in ranked({"team": "t1"})
    assert ids[0] not in ranked({"team": "t0"})
    # A value too long to be indexed: the candidates are checked by SQL, as for other filters.
    assert ranked({"team": "x" * text_index.MAX_META_TERM_BYTES}) is None
    index.close()
    sql.close()


@pytest.mark.parametrize(
    ("filters", "terms"),
    [
        ({"team": "vpn"}, {"team": ["vpn"]}),
        (
            {"team": {"eq": "vpn"}, "kind": {"in": ["log", "code"]}},
            {"team": ["vpn"], "kind": ["log", "code"]},
        ),
        ({"team": {"in": ("a",)}}, {"team": ["a"]}),
        ({"ticket": 4812}, None),  # a number: SQL compares numbers
        ({"team": {"in": ["vpn", 1]}}, None),
        ({"team": {"ne": "vpn"}}, None),
        ({"team": {"eq": "vpn", "ne": "net"}}, None),
        ({"OR": [{"team": "vpn"}, {"team": "net"}]}, None),
        ({"time": "2023-05-01"}, None),  # stored normalised (memsdk/timeline.py)
        ({}, None),
        (None, None),
    ],
)
def test_string_terms_are_only_string_equalities(filters, terms) -> None:
    compile_filters(filters)  # each is a valid filter
    assert string_terms(filters) == terms


def test_search_runs_on_it_past_the_threshold(tmp_path, database) -> None:
    config = MemoryConfig(text_index_threshold=0, weight_memory=False)
    scope = Scope(tenant="acme", user="u1")
    with HybridMemory(tmp_path / "memory", config=config) as mem:
        for i in range(40):
            mem.add(f"worker {i} finished its task in {i * 3} seconds", scope=scope)
        mem.add(f"worker 99 lost {IDENTIFIER} while writing", scope=scope)
        assert mem.stats().keyword_index in ("sql", "building")
        assert mem.notepad.text_index.wait_ready(60)
        assert mem.stats().keyword_index == "tantivy"
        mem.add("a line added after the build about the scoreboard slot", scope=scope)
        scope_id = mem.notepad.sql.find_scope(scope.key())
        ranked = mem.notepad.keyword_ranking(scope_id, "worker task", limit=10)
        assert ranked == mem.notepad.text_index.ranking(scope_id, "worker task", limit=10)
        [hit] = mem.search("scoreboard slot", scope=scope, k=1)
        assert "scoreboard" in hit.text and hit.keyword_rank == 1
        assert IDENTIFIER in mem.search(f"what happened to {IDENTIFIER}", scope=scope, k=1)[0].text
        mem.add("worker 7 restarted the gateway", scope=scope, metadata={"team": "vpn"})
        mem.add("worker 8 restarted the gateway", scope=scope, metadata={"team": "net"})
        for filters in ({"team": "vpn"}, {"team": {"in": ["vpn"]}, "NOT": {"team": "net"}}):
            hits = mem.search("worker restarted", scope=scope, k=3, filters=filters)
            assert [h.text for h in hits] == ["worker 7 restarted the gateway"]
            assert hits[0].keyword_rank == 1


def saved_index(sql: SQLStore, directory: Path, memory_id: str = "memory-1") -> TextIndex:
    return TextIndex(sql, threshold=0, saved_in=directory, memory_id=memory_id)


def saved_folders(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("text-index-*"))


def messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_a_saved_index_is_read_back_and_replays_what_changed_since(tmp_path, caplog) -> None:
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    ids = add(sql, scope_id, [f"datanode {i} received block blk_{i}" for i in range(200)])
    first = saved_index(sql, tmp_path)
    assert first.wait_ready(60)  # built, then saved
    [folder] = saved_folders(tmp_path)
    # Changes the first index replays into its own files, which share the saved ones' inodes:
    # the save must not change with them.
    [new] = add(sql, scope_id, [f"error writing {IDENTIFIER} to disk"])
    sql.delete_chunks(scope_id, ids[:50])
    assert ids_of(first.ranking(scope_id, IDENTIFIER, limit=5)[0]) == [new]
    # A second process (the first one killed before it saved again) reads the save back.
    with caplog.at_level("INFO", logger="memsdk.stores.text_index"):
        second = saved_index(sql, tmp_path)
        assert second.wait_ready(60)
    assert "text index read from" in messages(caplog)
    assert "text index built" not in messages(caplog)
    assert ids_of(second.ranking(scope_id, IDENTIFIER, limit=5)[0]) == [new]
    for query in ("received block", "datanode 17", "blk_3"):
        found = set(ids_of(second.ranking(scope_id, query, limit=1000)[0]))
        assert found == set(ids_of(sql.keyword_search(scope_id, query, limit=1000))), query
    assert not found & set(ids[:50])
    second.close()  # it replayed history: saved again, the earlier save removed
    [again] = saved_folders(tmp_path)
    assert again != folder
    saved = json.loads((tmp_path / text_index.SAVED_NAME).read_text())
    assert saved["synced_to"] == sql.max_history_id() and saved["folder"] == again
    first.close()
    sql.close()


def _old_database_with_a_newer_save(tmp_path: Path) -> tuple[SQLStore, int]:
    """A database restored from a backup older than the index saved beside it."""
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    add(sql, scope_id, [f"datanode {i} received block blk_{i}" for i in range(100)])
    sql.close()
    shutil.copyfile(tmp_path / "memory.db", tmp_path / "backup.db")
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    add(sql, scope_id, [f"error writing {IDENTIFIER} to disk"])
    index = saved_index(sql, tmp_path)
    assert index.wait_ready(60)
    index.close()
    sql.close()
    os.replace(tmp_path / "backup.db", tmp_path / "memory.db")
    return SQLStore(f"sqlite:///{tmp_path / 'memory.db'}"), scope_id


def _another_memorys_save(tmp_path: Path) -> tuple[SQLStore, int]:
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    add(sql, scope_id, [f"datanode {i} received block blk_{i}" for i in range(100)])
    index = saved_index(sql, tmp_path, memory_id="memory-2")
    assert index.wait_ready(60)
    index.close()
    return sql, scope_id


def _a_save_missing_a_file(tmp_path: Path) -> tuple[SQLStore, int]:
    sql, scope_id = _another_memorys_save(tmp_path)
    saved = json.loads((tmp_path / text_index.SAVED_NAME).read_text())
    saved["memory_id"] = "memory-1"
    (tmp_path / text_index.SAVED_NAME).write_text(json.dumps(saved))
    next((tmp_path / saved["folder"]).glob("*.idx")).unlink()
    return sql, scope_id


def _a_save_of_another_layout(tmp_path: Path) -> tuple[SQLStore, int]:
    sql, scope_id = _a_save_missing_a_file(tmp_path)
    shutil.rmtree(tmp_path / saved_folders(tmp_path)[0])
    index = saved_index(sql, tmp_path)
    assert index.wait_ready(60)  # built, and saved whole
    index.close()
    saved = json.loads((tmp_path / text_index.SAVED_NAME).read_text())
    (tmp_path / text_index.SAVED_NAME).write_text(json.dumps(saved | {"format": 0}))
    return sql, scope_id


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_old_database_with_a_newer_save, "the database holds events up to"),
        (_another_memorys_save, "it belongs to memory memory-2"),
        (_a_save_missing_a_file, "could not be read"),
        (_a_save_of_another_layout, "it has layout 0"),
    ],
)
def test_a_save_that_does_not_match_the_database_is_set_aside(tmp_path, caplog, make, why):
    sql, scope_id = make(tmp_path)
    with caplog.at_level("INFO", logger="memsdk.stores.text_index"):
        index = saved_index(sql, tmp_path)
        assert index.wait_ready(60)
    assert why in messages(caplog)
    assert "text index built" in messages(caplog)
    assert "text index read from" not in messages(caplog)
    held = set(ids_of(sql.keyword_search(scope_id, "datanode block", limit=1000)))
    assert set(ids_of(index.ranking(scope_id, "datanode block", limit=1000)[0])) == held
    assert index.ranking(scope_id, IDENTIFIER, limit=5)[0] == []  # not in this database
    index.close()
    saved = json.loads((tmp_path / text_index.SAVED_NAME).read_text())
    assert saved["memory_id"] == "memory-1" and saved["format"] == text_index.SAVED_FORMAT
    assert saved_folders(tmp_path) == [saved["folder"]]
    sql.close()


def test_a_reopened_memory_searches_on_its_saved_index(tmp_path, caplog) -> None:
    config = MemoryConfig(text_index_threshold=0, weight_memory=False)
    scope = Scope(tenant="acme", user="u1")
    with HybridMemory(tmp_path / "memory", config=config) as mem:
        for i in range(30):
            mem.add(f"worker {i} finished its task in {i * 3} seconds", scope=scope)
        assert mem.notepad.text_index.wait_ready(60)
    logs = caplog.at_level("INFO", logger="memsdk.stores.text_index")
    with logs, HybridMemory(tmp_path / "memory", config=config) as mem:
        mem.add(f"worker 99 lost {IDENTIFIER} while writing", scope=scope)
        # The first search reads the save back itself, replays the add, and ranks on it.
        assert IDENTIFIER in mem.search(f"what happened to {IDENTIFIER}", scope=scope)[0].text
        assert mem.stats().keyword_index == "tantivy"
    assert "text index read from" in messages(caplog)
    assert "text index built" not in messages(caplog)


def test_a_replaced_database_never_searches_the_old_memorys_saved_index(tmp_path, database):
    """The database removed and the memory repaired: the new tenant gets the old one's scope
    id, and must not find the old chunks through the text index saved beside them."""
    if database != "sqlite":
        pytest.skip("it removes the memory's SQLite file")
    config = MemoryConfig(text_index_threshold=0, weight_memory=False)
    path = tmp_path / "memory"
    with HybridMemory(path, config=config) as mem:
        for n in range(200):
            mem.add(f"alice secret password is hunter2{n:03d}", scope=Scope(tenant="alice"))
        assert mem.notepad.text_index.wait_ready(60)
    for name in ("memory.db", "memory.db-wal", "memory.db-shm"):
        (path / name).unlink(missing_ok=True)
    repair(path, config=config)
    [saved] = path.glob(f"stale-*/{text_index.SAVED_NAME}")
    bob = Scope(tenant="bob")
    with HybridMemory(path, config=config) as mem:
        # As much history as alice's and a little more: the save is neither ahead of the
        # database nor so far behind that building beats replaying, so only its identity
        # tells it is not this database's.
        synced_to = json.loads(saved.read_text())["synced_to"]
        while mem.notepad.sql.max_history_id() <= synced_to:
            mem.add(f"bob ordered kettle {mem.notepad.sql.max_history_id()}", scope=bob)
        assert mem.notepad.sql.max_history_id() - synced_to < 200
        assert mem.notepad.sql.find_scope(bob.key()) == 1  # the id alice's chunks were under
        assert mem.notepad.text_index.wait_ready(60)
        assert all("hunter2" not in hit.text for hit in mem.search("hunter2 password", scope=bob))
        assert mem.notepad.keyword_search(1, "hunter2 password", limit=10) == []
