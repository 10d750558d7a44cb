"""The notepad's vector search inside one scope, on real parts (SQLite and PostgreSQL, FAISS,
MiniLM vectors of real Loghub messages): the in-memory scope of each indexed vector follows every
change, a filtered search that checks its nearest candidates returns what an exact search over
the filter's chunks returns, and so does one over a kept listing of the filter's ids."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from memsdk.filters import compile_filters
from memsdk.stores.embedder import MiniLMEmbedder
from memsdk.stores.notepad import Notepad
from memsdk.stores.sql import NewChunk

K = 50


@pytest.fixture(scope="module")
def messages(shared) -> tuple[list[str], np.ndarray]:
    """300 distinct real log messages (HDFS, BGL, OpenStack) and their MiniLM vectors."""
    texts: list[str] = []
    for system in ("HDFS", "BGL", "OpenStack"):
        lines = shared("data", "loghub", system, f"{system}_2k.log").read_text(errors="replace")
        found = dict.fromkeys(line.split(": ", 1)[-1][:96] for line in lines.splitlines())
        texts += [m for m in found if m.strip()][:100]
    return texts, MiniLMEmbedder().embed(texts)


def _chunks(texts: list[str], vectors: np.ndarray, kinds: list[str] | None = None) -> list:
    return [
        NewChunk(
            seq,
            0,
            len(text),
            text,
            None,
            hashlib.sha256(text.encode()).hexdigest(),
            {"kind": kinds[seq]} if kinds else {},
            vector.astype(np.float32),
        )
        for seq, (text, vector) in enumerate(zip(texts, vectors, strict=True))
    ]


def _exact(vectors: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    """Exact top-k ids by inner product, ties by id."""
    ranked = sorted(vectors, key=lambda i: (-float(vectors[i] @ query), i))
    return ranked[:k]


def _notepad(path, dim: int) -> Notepad:
    return Notepad(path, database_url=None, embedder_name="test-minilm", dim=dim)


def test_scope_vectors_follow_adds_and_deletes_in_every_scope(messages, tmp_path) -> None:
    texts, vectors = messages
    notepad = _notepad(tmp_path / "memory", vectors.shape[1])
    a = notepad.sql.ensure_scope(("a", "", "", ""))
    b = notepad.sql.ensure_scope(("b", "", "", ""))
    a_ids = notepad.sql.insert_chunks(a, None, _chunks(texts[:150], vectors[:150]))
    held = {a: dict(zip(a_ids, vectors[:150], strict=True)), b: {}}
    query = vectors[140]

    def check() -> None:
        for scope in (a, b):
            got = [i for i, _ in notepad.vector_search(scope, query, k=K)]
            assert got == _exact(held[scope], query, K)

    check()  # the scope map is built here
    # The newest chunks of a go, and b's chunks take ids past the map built for a.
    gone = a_ids[-40:]
    notepad.sql.delete_chunks(a, gone)
    for i in gone:
        del held[a][i]
    b_ids = notepad.sql.insert_chunks(b, None, _chunks(texts[150:300], vectors[150:300]))
    held[b] = dict(zip(b_ids, vectors[150:300], strict=True))
    check()
    more = notepad.sql.insert_chunks(a, None, _chunks(texts[100:140], vectors[100:140] * -1))
    held[a] |= dict(zip(more, vectors[100:140] * -1, strict=True))
    check()
    notepad.close()


def test_a_filtered_search_checking_candidates_equals_the_exact_filtered_search(
    messages, tmp_path
) -> None:
    texts, vectors = messages
    notepad = _notepad(tmp_path / "memory", vectors.shape[1])
    scope = notepad.sql.ensure_scope(("a", "", "", ""))
    other = notepad.sql.ensure_scope(("b", "", "", ""))
    # Most chunks are "common"; a few are "rare", fewer "scarce": the first round of candidates
    # serves the broad filter, the narrow one needs every vector of the scope as a candidate,
    # and the scarce one, seen too seldom in the first round, is listed instead.
    kinds = [
        "rare" if i % 20 == 0 else "scarce" if i % 150 == 1 else "common" for i in range(len(texts))
    ]
    ids = notepad.sql.insert_chunks(scope, None, _chunks(texts, vectors, kinds))
    notepad.sql.insert_chunks(other, None, _chunks(texts[:50], vectors[:50], kinds[:50]))
    for kind in ("common", "rare", "scarce"):
        filters = {"kind": {"eq": kind}}
        where = compile_filters(filters, dialect=notepad.sql.dialect)
        probe = compile_filters(filters, dialect=notepad.sql.dialect, correlated=True)
        kept = {i: v for i, v, x in zip(ids, vectors, kinds, strict=True) if x == kind}
        for query in vectors[::37]:
            got = [i for i, _ in notepad.vector_search(scope, query, k=K, where=where, probe=probe)]
            assert got == _exact(kept, query, K)
            listed = [i for i, _ in notepad.vector_search(scope, query, k=K, where=where)]
            assert listed == got
    assert notepad.filter_ids.listings == 1  # the scarce filter's
    notepad.close()


def test_a_filter_listed_for_the_vector_search_follows_the_scope_changes(
    messages, tmp_path, monkeypatch
) -> None:
    texts, vectors = messages
    # Four candidates only: a narrow filter is listed (stores/filter_ids.py), as at 1M chunks.
    monkeypatch.setattr("memsdk.stores.notepad.FILTER_CANDIDATES", (4,))
    notepad = _notepad(tmp_path / "memory", vectors.shape[1])
    notepad.filter_ids.followed_per_id = 1e9  # followed, never listed again
    rounds: list[int] = []
    checked_candidates = notepad._checked_candidates

    def counting(*args, **kwargs):
        rounds.append(1)
        return checked_candidates(*args, **kwargs)

    monkeypatch.setattr(notepad, "_checked_candidates", counting)
    scope = notepad.sql.ensure_scope(("a", "", "", ""))
    other = notepad.sql.ensure_scope(("b", "", "", ""))
    kinds = ["rare" if i % 20 == 0 else "common" for i in range(200)]
    ids = notepad.sql.insert_chunks(scope, None, _chunks(texts[:200], vectors[:200], kinds))
    held = {i: v for i, v, x in zip(ids, vectors[:200], kinds, strict=True) if x == "rare"}
    filters = {"kind": {"eq": "rare"}}
    where = compile_filters(filters, dialect=notepad.sql.dialect)
    probe = compile_filters(filters, dialect=notepad.sql.dialect, correlated=True)

    def check() -> None:
        for query in vectors[5:300:41]:
            got = [i for i, _ in notepad.vector_search(scope, query, k=K, where=where, probe=probe)]
            assert got == _exact(held, query, K)

    check()
    # Rare chunks join both scopes; a common chunk turns rare; a rare one goes.
    new = notepad.sql.insert_chunks(
        scope, None, _chunks(texts[200:230], vectors[200:230], ["rare"] * 30)
    )
    held |= dict(zip(new, vectors[200:230], strict=True))
    notepad.sql.insert_chunks(other, None, _chunks(texts[230:], vectors[230:], ["rare"] * 70))
    notepad.sql.update_chunk(
        scope, ids[1], text_value=None, content_hash=None, embedding=None,
        metadata={"kind": "rare"},
    )  # fmt: skip
    held[ids[1]] = vectors[1]
    notepad.sql.delete_chunks(scope, [ids[0]])
    del held[ids[0]]
    check()
    # Listed once, after the first search's candidates fell short; the listing served the rest.
    assert notepad.filter_ids.listings == 1 and len(rounds) == 1
    notepad.close()


@pytest.mark.parametrize(
    "asked",
    [
        "every chunk",  # one scan of the whole table
        "most chunks",  # one scan, the others left out
        "a dense run",  # id ranges, the ids between left out
        "sparse ids",  # IN lists
    ],
)
def test_the_scope_of_each_chunk_is_read_for_any_set_of_ids(tmp_path, asked) -> None:
    notepad = _notepad(tmp_path / "memory", 4)
    scopes = [notepad.sql.ensure_scope((f"t{n}", "", "", "")) for n in range(3)]
    texts = [f"line {n}" for n in range(3000)]
    held: dict[int, int] = {}
    for n, scope_id in enumerate(scopes):  # three scopes' chunks, interleaved in id order
        for part in range(n, 30, 3):
            batch = texts[part * 100 : (part + 1) * 100]
            ids = notepad.sql.insert_chunks(scope_id, None, _chunks(batch, np.ones((100, 4))))
            held |= dict.fromkeys((int(i) for i in ids), scope_id)
    every = np.array(sorted(held))
    chosen = {
        "every chunk": every,
        "most chunks": every[every % 7 != 0],
        "a dense run": every[(every > 500) & (every < 1400) & (every % 5 != 0)],
        "sparse ids": every[::97],
    }[asked]
    missing = np.array([every.max() + 5, every.max() + 900])  # no such chunks: left out
    asked_ids = np.concatenate([chosen[::-1], chosen[:10], missing])  # any order, repeats
    ids, found = notepad.sql.chunk_scopes(asked_ids, batch=256)
    assert ids.tolist() == chosen.tolist()
    assert found.tolist() == [held[i] for i in chosen.tolist()]
    notepad.close()
