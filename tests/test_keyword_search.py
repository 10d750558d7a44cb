"""The full-text ranking does not score every chunk holding a common word (issue 18).

A real SQLite store (FTS5, triggers) holds 1,600 chunks, each with the common word "alpha";
most also hold "beta" and "gamma". No vectors are needed: the keyword side is SQL alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import text

from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_keywords import (
    MIN_COMMON_DOCS,
    DocCounts,
    fts_doc_count,
    fts_match,
    fts_rows,
    is_identifier,
    query_phrases,
)
from memsdk.stores.sql_records import NewChunk

CHUNKS = 1600
BETA = 1100  # chunks 0..1099 hold "beta"
GAMMA = 1200  # chunks 0..1199 hold "gamma"
RARE = 77  # the only chunk holding "zyxwvut" and the id blk_-1608999687919862906
IDENTIFIER = "blk_-1608999687919862906"
OTHER_RARE = 3  # the only chunk holding "qwertyuiop"


def chunk_text(i: int) -> str:
    words = [f"alpha line {i} filler{i}"]
    if i < BETA:
        words.append("beta")
    if i < GAMMA:
        words.append("gamma")
    if i == RARE:
        words.append(f"zyxwvut {IDENTIFIER}")
    if i == OTHER_RARE:
        words.append("qwertyuiop")
    return " ".join(words)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[tuple[SQLStore, int, list[int]]]:
    """The store, the scope's id, and chunk i's id at position i."""
    assert CHUNKS > GAMMA > BETA > MIN_COMMON_DOCS  # all three words are common here
    path = tmp_path_factory.mktemp("keyword") / "memory.db"
    sql = SQLStore(f"sqlite:///{path}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    rows = []
    for i in range(CHUNKS):
        text = chunk_text(i)
        digest = hashlib.sha256(text.encode()).hexdigest()
        rows.append(NewChunk(i, 0, len(text), text, None, digest, {}, np.empty(0, np.float32)))
    ids = [int(cid) for cid in sql.insert_chunks(scope_id, None, rows) if cid is not None]
    assert len(ids) == CHUNKS
    other = sql.ensure_scope(("acme", "u2", "", ""))  # holds alpha, never zyxwvut
    text = "alpha in another scope"
    digest = hashlib.sha256(text.encode()).hexdigest()
    sql.insert_chunks(other, None, [NewChunk(0, 0, 4, text, None, digest, {}, np.empty(0))])
    yield sql, scope_id, ids
    sql.close()


def test_a_rare_word_ranks_its_chunk_and_common_words_only_score(store):
    sql, scope_id, ids = store
    query = "alpha gamma zyxwvut"
    selecting, scoring_only = sql.keyword_phrases(query)
    assert selecting == [["zyxwvut"]]
    assert scoring_only == [["alpha"], ["gamma"]]
    hits = sql.keyword_search(scope_id, query, limit=CHUNKS)
    # Only the rare word's chunk is scored, where every chunk holding alpha was before.
    assert [cid for cid, _ in hits] == [ids[RARE]]


def test_an_identifier_phrase_always_selects(store):
    sql, scope_id, ids = store
    query = f"what happened to {IDENTIFIER} alpha beta"
    selecting, scoring_only = sql.keyword_phrases(query)
    assert ["blk", "1608999687919862906"] in selecting
    assert ["alpha"] in scoring_only and ["beta"] in scoring_only
    hits = sql.keyword_search(scope_id, query, limit=CHUNKS)
    assert hits and hits[0][0] == ids[RARE]
    assert len(hits) == 1


def test_when_every_word_is_common_the_two_rarest_select(store):
    sql, scope_id, ids = store
    selecting, scoring_only = sql.keyword_phrases("alpha gamma beta")
    assert selecting == [["gamma"], ["beta"]] and scoring_only == [["alpha"]]
    hits = sql.keyword_search(scope_id, "alpha gamma beta", limit=CHUNKS)
    # The rows holding beta or gamma (0..1199), not the 400 holding alpha alone; the 1,100
    # holding all three rank above the 100 holding gamma and alpha only.
    position = {cid: i for i, cid in enumerate(ids)}
    ranked = [position[cid] for cid, _ in hits]
    assert sorted(ranked) == list(range(GAMMA))
    assert set(ranked[:BETA]) == set(range(BETA))


def test_common_words_select_when_nothing_rarer_matches_in_the_scope(store):
    sql, scope_id, _ = store
    other = sql.ensure_scope(("acme", "u2", "", ""))
    assert sql.keyword_phrases("alpha zyxwvut")[1] == [["alpha"]]
    hits, selecting = sql.keyword_ranking(other, "alpha zyxwvut", limit=CHUNKS)
    assert len(hits) == 1 and hits[0][0] not in sql.chunk_ids(scope_id)
    assert selecting == [["alpha"], ["zyxwvut"]]


def test_the_share_counts_every_indexed_chunk(store):
    """The cutoff's base, read from FTS5's averages record, is the number of indexed chunks."""
    sql, _, _ = store
    with sql.reading() as s:
        assert fts_rows(s) == CHUNKS + 1  # and the other scope's chunk


def test_words_below_the_cutoff_all_select(store):
    sql, _, _ = store
    query = "qwertyuiop zyxwvut"
    assert sql.keyword_phrases(query) == (query_phrases(query), [])


def test_an_identifier_selects_alone_and_the_other_words_only_score(store):
    sql, scope_id, ids = store
    query = "alpha filler5 zyxwvut"  # "filler5" holds a digit: chunk 5's identifier
    assert sql.keyword_phrases(query) == ([["filler5"]], [["alpha"], ["zyxwvut"]])
    rows, selecting = sql.keyword_ranking(scope_id, query, limit=CHUNKS)
    assert [cid for cid, _ in rows] == [ids[5]] and selecting == [["filler5"]]
    # No chunk of the scope holds the identifier: every word selects again, and the ranking
    # says so (the search then looks the identifier up on its own).
    found, selecting = sql.keyword_ranking(scope_id, "filler99999 zyxwvut", limit=CHUNKS)
    assert [cid for cid, _ in found] == [ids[RARE]]
    assert selecting == [["filler99999"], ["zyxwvut"]]
    assert sql.keyword_search(scope_id, "filler99999 zyxwvut", limit=CHUNKS) == found


@pytest.mark.parametrize(
    ("words", "identifier"),
    [
        (["blk", "1608999687919862906"], True),
        (["10", "251", "197", "226"], True),
        (["sha256"], True),
        (["5k"], True),
        (["1445144423722"], True),
        (["2023"], False),  # a year in a question is mostly a date, not stored text
        (["13"], False),
        (["alpha"], False),
    ],
)
def test_what_reads_as_an_identifier(words, identifier):
    assert is_identifier(words) is identifier


def test_document_counts_are_read_once_while_the_index_keeps_its_size(store, monkeypatch):
    sql, _, _ = store
    counted: list[tuple[str, int]] = []

    def counting(s, word: str, limit: int) -> int:
        counted.append((word, limit))
        return fts_doc_count(s, word, limit)

    monkeypatch.setattr("memsdk.stores.sql_keywords.fts_doc_count", counting)
    counts = DocCounts()
    with sql.reading() as s:
        assert counts.count(s, "beta", 10_000, indexed=CHUNKS) == BETA
        assert counts.count(s, "beta", 500, indexed=CHUNKS) == 500  # exact: any limit
        assert counts.count(s, "gamma", 100, indexed=CHUNKS) == 100
        assert counts.count(s, "gamma", 50, indexed=CHUNKS) == 50  # read far enough
        assert counted == [("beta", 10_000), ("gamma", 100)]
        assert counts.count(s, "gamma", 10_000, indexed=CHUNKS) == GAMMA  # read further
        # The index grew by more than DRIFT since: counted again.
        grown = int(CHUNKS * (1 + DocCounts.DRIFT)) + 1
        assert counts.count(s, "beta", 10_000, indexed=grown) == BETA
    assert counted[2:] == [("gamma", 10_000), ("beta", 10_000)]


def test_match_expression_scores_common_words_inside_the_rare_rows():
    assert fts_match([["a"]]) == '"a"'
    assert fts_match([["a", "b"]], [["c"]]) == '("a b") AND ("a b" OR "c")'


@pytest.mark.parametrize("probe_rows", [0, 20_000])
def test_a_filter_checked_row_by_row_keeps_the_same_rows(tmp_path, monkeypatch, probe_rows):
    """A filtered query whose selecting words match few chunks checks the filter on each of
    them (EXISTS), one matching many lists the filter's chunks (IN): the same rows either way,
    equal to the rows holding the word that pass the filter."""
    from memsdk.filters import compile_filters
    from memsdk.stores import sql as sql_module

    monkeypatch.setattr(sql_module, "PROBE_ROWS", probe_rows)
    sql = SQLStore(f"sqlite:///{tmp_path / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    colours = ["red", "green", "blue"]
    rows = []
    for i in range(300):
        text = f"event {i} {'disk' if i % 2 else 'network'} fault"
        meta = {"colour": colours[i % 3], "n": i}
        digest = hashlib.sha256(text.encode()).hexdigest()
        rows.append(NewChunk(i, 0, len(text), text, None, digest, meta, np.empty(0, np.float32)))
    ids = sql.insert_chunks(scope_id, None, rows)
    filters = [
        {"colour": {"eq": "red"}},
        {"colour": {"in": ["green", "blue"]}, "n": {"gte": 100}},
        {"OR": [{"n": {"lt": 10}}, {"colour": {"ne": "red"}}]},
    ]
    for f in filters:
        where, probe = compile_filters(f), compile_filters(f, correlated=True)
        kept = {int(i) for i in sql.chunk_ids(scope_id, where)}
        for word, parity in (("disk", 1), ("network", 0)):
            want = {int(ids[i]) for i in range(300) if i % 2 == parity} & kept
            got = sql.keyword_search(scope_id, word, limit=500, where=where, probe=probe)
            assert {cid for cid, _ in got} == want
            assert got == sql.keyword_search(scope_id, word, limit=500, where=where)
    sql.close()


def _store_with(
    url, texts: list[str], contexts: list[str | None] | None = None
) -> tuple[SQLStore, int, list[int]]:
    """A store at ``url`` (a SQLite path, or a database URL) holding ``texts`` in one scope."""
    sql = SQLStore(url if isinstance(url, str) else f"sqlite:///{url}")
    sql.create_schema()
    scope_id = sql.ensure_scope(("acme", "u1", "", ""))
    contexts = contexts or [None] * len(texts)
    rows = [
        NewChunk(i, 0, len(t), t, None, hashlib.sha256(t.encode()).hexdigest(), {}, np.empty(0), c)
        for i, (t, c) in enumerate(zip(texts, contexts, strict=True))
    ]
    return sql, scope_id, [int(c) for c in sql.insert_chunks(scope_id, None, rows)]


STEMMED = ["Caroline painted a sunrise last week", "the datanode received blk_-42 twice"]


def test_words_match_their_other_forms_and_identifiers_stay_exact(tmp_path):
    sql, scope_id, ids = _store_with(tmp_path / "memory.db", STEMMED)
    assert [c for c, _ in sql.keyword_search(scope_id, "paintings", limit=5)] == [ids[0]]
    assert [c for c, _ in sql.keyword_search(scope_id, "receiving", limit=5)] == [ids[1]]
    assert [c for c, _ in sql.keyword_search(scope_id, "blk_-42", limit=5)] == [ids[1]]
    assert sql.keyword_search(scope_id, "blk_-421", limit=5) == []
    sql.close()


# A turn that means little alone, stored with the turn before it as its context.
TURNS = ["Caroline: Yes, last weekend!", "Melanie: I love hiking", "Caroline: I painted a lake"]
CONTEXTS = ["Melanie: Did you go hiking in the mountains?", None, "Melanie: what is new?"]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'memory.db'}"
    return request.getfixturevalue("postgres").create()


def test_a_word_of_the_context_finds_the_chunk_below_one_of_its_text(database_url):
    sql, scope_id, (weekend, hiking, lake) = _store_with(database_url, TURNS, CONTEXTS)

    def found(query: str, **kwargs: float) -> list[int]:
        return [c for c, _ in sql.keyword_search(scope_id, query, limit=5, **kwargs)]

    assert found("hiking") == [hiking, weekend]
    assert found("mountains") == [weekend]
    assert found("hiking", context_weight=0) == [hiking]
    assert found("mountains", context_weight=0) == []
    assert found("new") == [lake]
    sql.delete_chunks(scope_id, [weekend])
    assert found("mountains") == []
    assert found("hiking") == [hiking]
    if sql.is_sqlite:
        with sql.writing() as s:  # the triggers removed the context's entries too
            s.execute(text("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')"))
    sql.close()


def test_a_memory_indexed_without_stemming_is_reindexed_once_on_open(tmp_path):
    import sqlite3

    path = tmp_path / "memory.db"
    sql, scope_id, ids = _store_with(path, STEMMED)
    sql.close()
    # The full-text index as memories were made before stemming and before the context
    # column: one indexed column, its triggers, and no context in the chunks table.
    con = sqlite3.connect(path)
    for trigger in ("chunks_fts_insert", "chunks_fts_delete", "chunks_fts_update"):
        con.execute(f"DROP TRIGGER {trigger}")
    con.execute("DROP TABLE chunks_fts")
    con.execute("ALTER TABLE chunks DROP COLUMN context")
    con.execute(
        "CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', "
        "content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
    )
    old_insert = "INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text)"
    old_delete = (
        "INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text)"
    )
    for trigger, event, body in (
        ("chunks_fts_insert", "INSERT", old_insert),
        ("chunks_fts_delete", "DELETE", old_delete),
        ("chunks_fts_update", "UPDATE OF text", f"{old_delete}; {old_insert}"),
    ):
        con.execute(f"CREATE TRIGGER {trigger} AFTER {event} ON chunks BEGIN {body}; END")
    con.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
    con.commit()
    con.close()
    old = SQLStore(f"sqlite:///{path}")  # not migrated until create_schema runs
    assert old.keyword_search(scope_id, "paintings", limit=5) == []
    old.close()
    sql = SQLStore(f"sqlite:///{path}")
    sql.create_schema()
    assert [c for c, _ in sql.keyword_search(scope_id, "paintings", limit=5)] == [ids[0]]
    assert [c for c, _ in sql.keyword_search(scope_id, "blk_-42", limit=5)] == [ids[1]]
    assert fts_rows_of(sql) == len(STEMMED)
    # The new column and triggers: a chunk is found by its context, and deleting it or an
    # old chunk (no context) keeps the index whole.
    turn = "Caroline: Yes, last weekend!"
    digest = hashlib.sha256(turn.encode()).hexdigest()
    (new,) = sql.insert_chunks(
        scope_id, None, [NewChunk(0, 0, 1, turn, None, digest, {}, np.empty(0), CONTEXTS[0])]
    )
    assert [c for c, _ in sql.keyword_search(scope_id, "mountains", limit=5)] == [new]
    sql.delete_chunks(scope_id, [ids[0], new])
    assert sql.keyword_search(scope_id, "mountains", limit=5) == []
    with sql.writing() as s:
        s.execute(text("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')"))
    assert fts_rows_of(sql) == len(STEMMED) - 1
    sql.close()


def fts_rows_of(sql: SQLStore) -> int:
    with sql.reading() as s:
        return fts_rows(s)
