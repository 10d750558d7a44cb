"""The vector index past its IVF threshold, on real parts: FAISS, SQLite, and MiniLM embeddings
of real Loghub log messages (the threshold is set low so the switch happens in seconds)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from memsdk import HybridMemory, MemoryConfig
from memsdk.errors import IndexCorruptedError
from memsdk.stores.embedder import MiniLMEmbedder
from memsdk.stores.notepad import Notepad
from memsdk.stores.sql import NewChunk
from memsdk.stores.vector_index import TARGET_RECALL, VectorIndex

THRESHOLD = 600
K = 10
SYSTEMS = ["Android", "Apache", "BGL", "HDFS", "HPC", "Hadoop", "HealthApp", "Linux", "Mac"]
SYSTEMS += ["OpenStack", "Proxifier", "Windows"]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture(scope="module")
def real(shared, embedder) -> tuple[list[str], np.ndarray]:
    """About 1,100 distinct real log messages (each Loghub line after its first ": ", which ends
    the timestamp and process header in most formats, cut at 96 characters to keep embedding
    quick) and their MiniLM vectors, (n, 384) unit rows."""
    texts: list[str] = []
    for system in SYSTEMS:
        lines = shared("data", "loghub", system, f"{system}_2k.log").read_text(errors="replace")
        messages = dict.fromkeys(line.split(": ", 1)[-1][:96] for line in lines.splitlines())
        texts += [m for m in messages if m.strip()][:95]
    return texts, embedder.embed(texts)


def _exact_top(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    return ids[np.argsort(-scores, kind="stable")[:k]]


def _ivf(real, *, n: int, exact_limit: int = 50_000) -> tuple[VectorIndex, np.ndarray]:
    """An index holding the first ``n`` real vectors under sparse ids (not positions)."""
    vectors = real[1][:n]
    ids = np.arange(n, dtype=np.int64) * 7 + 3
    index = VectorIndex(384, ivf_threshold=THRESHOLD, exact_limit=exact_limit)
    index.add(ids, vectors)
    return index, ids


def test_the_index_turns_into_ivf_past_the_threshold_and_records_its_recall(real) -> None:
    vectors = real[1]
    ids = np.arange(len(vectors), dtype=np.int64) + 1
    index = VectorIndex(384, ivf_threshold=THRESHOLD)
    index.add(ids[:THRESHOLD], vectors[:THRESHOLD])
    assert index.kind == "flat" and index.nprobe is None and index.recall is None
    index.add(ids[THRESHOLD : THRESHOLD + 1], vectors[THRESHOLD : THRESHOLD + 1])
    assert index.kind == "ivf"
    assert index.trained_on == THRESHOLD + 1
    assert 1 <= index.nprobe <= index.nlist
    assert index.recall >= TARGET_RECALL
    assert index.ids().tolist() == ids[: THRESHOLD + 1].tolist()
    index.add(ids[THRESHOLD + 1 :], vectors[THRESHOLD + 1 :])  # later adds go to its lists
    assert index.kind == "ivf" and len(index) == len(ids)


def test_ivf_recall_against_flat_search_on_real_vectors(real) -> None:
    """Held-out real messages as queries, every id allowed and probing forced (no exact
    path): recall@10 against the flat index is at least the target."""
    vectors = real[1]
    held_out = 150
    base, queries = vectors[:-held_out], vectors[-held_out:]
    ids = np.arange(len(base), dtype=np.int64) + 1
    flat = VectorIndex(384, ivf_threshold=len(base) + 1)
    flat.add(ids, base)
    ivf = VectorIndex(384, ivf_threshold=THRESHOLD, exact_limit=0)
    ivf.add(ids, base)
    assert flat.kind == "flat" and ivf.kind == "ivf" and ivf.nprobe < ivf.nlist
    hits = 0
    for query in queries:
        _, want_scores = flat.search(query, k=K, allowed_ids=ids)
        got, got_scores = ivf.search(query, k=K, allowed_ids=ids)
        assert len(got) == K
        # Ties (identical messages) count as hits: the k-th best score is the bar.
        hits += int(np.count_nonzero(got_scores >= want_scores[-1] - 1e-5))
    assert hits / (K * len(queries)) >= TARGET_RECALL


def test_a_small_allowed_set_is_searched_exactly(real) -> None:
    """A small scope whose vectors are the ones least like the query sits in lists a probe
    would skip; its top k must still be its exact top k. Ids without a vector (chunks still
    waiting for theirs) are ignored."""
    index, ids = _ivf(real, n=900)
    vectors = real[1][:900]
    query = vectors[0]
    far = np.argsort(vectors @ query)[:40]  # the 40 least similar
    pending = np.array([10_000_001, 10_000_002], dtype=np.int64)
    allowed = np.concatenate([ids[far], pending])
    got, scores = index.search(query, k=K, allowed_ids=allowed)
    want = _exact_top(vectors[far], ids[far], query, K)
    assert got.tolist() == want.tolist()
    np.testing.assert_allclose(scores, vectors[np.searchsorted(ids, got)] @ query, atol=1e-6)
    got_all, _ = index.search(query, k=3, allowed_ids=pending)
    assert got_all.size == 0


def test_deleted_ids_never_come_back(real) -> None:
    for exact_limit in (50_000, 0):  # the exact path and the probed lists
        index, ids = _ivf(real, n=900, exact_limit=exact_limit)
        vectors = real[1][:900]
        gone = ids[::2]
        assert index.remove(gone) == len(gone)
        assert index.remove(gone) == 0
        assert len(index) == len(ids) - len(gone)
        assert index.ids().tolist() == ids[1::2].tolist()
        for row in range(0, 900, 45):
            got, _ = index.search(vectors[row], k=K, allowed_ids=ids)
            assert not set(got.tolist()) & set(gone.tolist())
            assert len(got) == K
        # Added again (a re-embedded chunk): one copy, found, and removable.
        index.replace(gone[:1], gone[:1], vectors[:1])
        got, _ = index.search(vectors[0], k=2, allowed_ids=ids)
        assert got[0] == gone[0] and got[1] != gone[0]
        assert index.remove(gone[:1]) == 1
        got, _ = index.search(vectors[0], k=K, allowed_ids=ids)
        assert gone[0] not in got


def test_save_and_load_keep_the_ivf_index_and_its_measurement(real, tmp_path) -> None:
    index, ids = _ivf(real, n=900)
    index.synced_to = 42
    path = tmp_path / "notepad.faiss"
    index.save(path)
    assert int.from_bytes(path.read_bytes()[8:12], "little") == 3
    loaded = VectorIndex.load(path, dim=384, ivf_threshold=THRESHOLD)
    assert (loaded.kind, loaded.nprobe, loaded.nlist) == ("ivf", index.nprobe, index.nlist)
    assert (loaded.recall, loaded.trained_on, loaded.synced_to) == (index.recall, 900, 42)
    assert not loaded.dirty
    assert loaded.ids().tolist() == ids.tolist()
    query = real[1][950]
    for limit in (50_000, 0):
        index.exact_limit = loaded.exact_limit = limit
        want = index.search(query, k=K, allowed_ids=ids)
        got = loaded.search(query, k=K, allowed_ids=ids)
        assert got[0].tolist() == want[0].tolist()
    # The recall measurement is covered by the checksum.
    blob = bytearray(path.read_bytes())
    blob[100] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(IndexCorruptedError, match="fails its checksum"):
        VectorIndex.load(path, dim=384)


def test_a_flat_file_past_the_threshold_loads_as_ivf(real, tmp_path) -> None:
    flat = VectorIndex(384, ivf_threshold=10_000)
    ids = np.arange(800, dtype=np.int64) + 1
    flat.add(ids, real[1][:800])
    path = tmp_path / "notepad.faiss"
    flat.save(path)
    assert int.from_bytes(path.read_bytes()[8:12], "little") == 2  # older readers keep it
    loaded = VectorIndex.load(path, dim=384, ivf_threshold=THRESHOLD)
    assert loaded.kind == "ivf" and loaded.dirty and loaded.recall >= TARGET_RECALL
    assert loaded.ids().tolist() == ids.tolist()


def _chunks(texts: list[str], vectors: np.ndarray) -> list[NewChunk]:
    return [
        NewChunk(
            seq, 0, len(text), text, None, hashlib.sha256(text.encode()).hexdigest(), {}, vector
        )
        for seq, (text, vector) in enumerate(zip(texts, vectors, strict=True))
    ]


def test_the_notepad_syncs_deletes_reopens_and_rebuilds_an_ivf_index(
    real, embedder, tmp_path
) -> None:
    texts, vectors = real
    directory = tmp_path / "memory"

    def open_notepad(**kwargs) -> Notepad:
        return Notepad(
            directory,
            database_url=None,
            embedder_name=embedder.name,
            dim=embedder.dim,
            ivf_threshold=THRESHOLD,
            **kwargs,
        )

    notepad = open_notepad()
    big = notepad.sql.ensure_scope(("ops", "", "", ""))
    small = notepad.sql.ensure_scope(("audit", "", "", ""))
    big_ids = notepad.sql.insert_chunks(big, None, _chunks(texts[:900], vectors[:900]))
    small_ids = notepad.sql.insert_chunks(small, None, _chunks(texts[900:930], vectors[900:930]))
    notepad.sync()
    assert notepad.index.kind == "ivf" and len(notepad.index) == 930
    query = vectors[0]  # a message of the big scope: the small one is far from it

    def small_top() -> list[int]:
        return [i for i, _ in notepad.vector_search(small, query, k=K)]

    want_small = _exact_top(vectors[900:930], np.array(small_ids), query, K).tolist()
    assert small_top() == want_small
    deleted = notepad.sql.delete_chunks(big, big_ids[:300])
    assert len(deleted) == 300
    found = {i for i, _ in notepad.vector_search(big, query, k=50)}
    assert found and not found & set(deleted)
    assert len(notepad.index) == 630
    notepad.close()

    notepad = open_notepad()  # the saved IVF index, loaded
    assert notepad.index.kind == "ivf" and len(notepad.index) == 630
    assert small_top() == want_small
    assert notepad.rebuild_index() == 630
    assert notepad.index.kind == "ivf" and notepad.index.trained_on == 630
    assert notepad.index.recall >= TARGET_RECALL
    assert small_top() == want_small
    assert not {i for i, _ in notepad.vector_search(big, query, k=50)} & set(deleted)
    notepad.close()


def test_the_memory_config_sets_the_threshold_and_stats_show_the_ivf(real, tmp_path) -> None:
    texts, vectors = real
    config = MemoryConfig(weight_memory=False, vector_ivf_threshold=300)
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        assert mem.stats().index_kind == "flat" and mem.stats().index_recall is None
        scope = mem.notepad.sql.ensure_scope(("ops", "", "", ""))
        mem.notepad.sql.insert_chunks(scope, None, _chunks(texts[:301], vectors[:301]))
        mem.notepad.sync()
        stats = mem.stats()
    assert (stats.index_kind, stats.index_vectors) == ("ivf", 301)
    assert stats.index_recall >= TARGET_RECALL and 1 <= stats.index_nprobe <= stats.index_nlist
