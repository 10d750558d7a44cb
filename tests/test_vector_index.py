"""The vector index past its IVF threshold, on real parts: FAISS, SQLite, and MiniLM embeddings
of real Loghub log messages (the threshold is set low so the switch happens in seconds).

The IVF index is trained on a background thread. To look at the index while a training runs,
without timing, a test holds the index's lock (reentrant, so the test's own adds, removes and
searches still run): the real training runs meanwhile, but cannot swap its result in before
the test lets go."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid

import faiss
import numpy as np
import pytest

from memsdk import HybridMemory, MemoryConfig
from memsdk.errors import IndexCorruptedError, StorageError
from memsdk.stores.embedder import MiniLMEmbedder
from memsdk.stores.notepad import Notepad
from memsdk.stores.sql import NewChunk
from memsdk.stores.vector_index import (
    _HEADER,
    _IVF_META,
    EXACT_SEARCH_SHARE,
    TARGET_RECALL,
    VectorIndex,
)

THRESHOLD = 600
# The IVF holds float16 vectors: each component within FLOAT16_STEP of itself relative to its
# size (FAISS's rounding may take the next step), so a score of unit vectors within
# FLOAT16_STEP of the float32 one (Cauchy-Schwarz).
FLOAT16_STEP = 2**-10
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
    assert index.wait_for_layout()
    return index, ids


def test_the_write_that_crosses_the_threshold_returns_flat_and_the_ivf_follows(real) -> None:
    """The crossing write only starts the training: the index stays flat, searchable and
    writable until the trained IVF is swapped in; waiting returns it with its recall."""
    vectors = real[1]
    ids = np.arange(len(vectors), dtype=np.int64) + 1
    index = VectorIndex(384, ivf_threshold=THRESHOLD)
    index.add(ids[:THRESHOLD], vectors[:THRESHOLD])
    assert index.kind == "flat" and not index.training and index.recall is None
    with index._lock:
        index.add(ids[THRESHOLD : THRESHOLD + 1], vectors[THRESHOLD : THRESHOLD + 1])
        assert index.kind == "flat" and index.training
        assert index.nprobe is None and index.recall is None and index.trained_on == 0
        for row in (0, 299, THRESHOLD):  # exact search of the flat index meanwhile
            got, _ = index.search(vectors[row], k=1, allowed_ids=ids)
            assert got.tolist() == [ids[row]]
    assert index.wait_for_layout(timeout=300)
    assert index.kind == "ivf" and not index.training and index.dirty
    assert index.trained_on == THRESHOLD + 1
    assert 1 <= index.nprobe <= index.nlist
    assert index.recall >= 0.995  # calibrated with a margin over TARGET_RECALL
    assert index.ids().tolist() == ids[: THRESHOLD + 1].tolist()
    index.add(ids[THRESHOLD + 1 :], vectors[THRESHOLD + 1 :])  # later adds go to its lists
    assert index.kind == "ivf" and len(index) == len(ids) and not index.training


@pytest.mark.parametrize("start", ["flat", "ivf"])
def test_changes_made_during_training_are_in_the_index_swapped_in(real, start) -> None:
    """Adds, replacements and removes made while a training runs (from a flat index past the
    threshold, or an IVF index grown 4x past its training size) are all in the new index:
    each held id has its current vector and is found by it, removed ids never come back."""
    vectors = real[1]
    rows = {}  # id -> row of the vector it should hold
    index = VectorIndex(384, ivf_threshold=THRESHOLD if start == "flat" else 150, exact_limit=0)

    def add(id_rows: range, from_row: int | None = None) -> None:
        ids = np.array(list(id_rows), dtype=np.int64) * 7 + 3
        chosen = np.array(list(id_rows)) if from_row is None else from_row + np.arange(len(ids))
        index.add(ids, vectors[chosen])
        rows.update(zip(ids.tolist(), chosen.tolist(), strict=True))

    def remove(id_rows: range) -> list[int]:
        ids = np.array(list(id_rows), dtype=np.int64) * 7 + 3
        index.remove(ids)
        for i in ids.tolist():
            rows.pop(i, None)
        return ids.tolist()

    if start == "flat":
        add(range(THRESHOLD))
        crossing = range(THRESHOLD, THRESHOLD + 1)
    else:
        add(range(151))  # trained at 151 vectors, retrained past 604
        assert index.wait_for_layout(timeout=300) and index.trained_on == 151
        add(range(151, 604))
        crossing = range(604, 605)
    assert not index.training
    with index._lock:
        add(crossing)
        assert index.training
        trained_at = len(index)
        add(range(crossing.stop, 900))  # added after the snapshot
        add(range(10, 20), from_row=1000)  # replaced: other vectors under the same ids
        gone = remove(range(100, 160)) + remove(range(850, 860))  # old ones and new ones
        add(range(120, 125))  # removed, then added back
        assert index.kind == start  # the old layout serves until the swap
    assert index.wait_for_layout(timeout=300)
    assert index.kind == "ivf" and index.trained_on == trained_at
    want = np.array(sorted(rows), dtype=np.int64)
    assert index.ids().tolist() == want.tolist() and len(index) == len(want)
    held = index._index.reconstruct_batch(want)
    current = vectors[[rows[i] for i in want.tolist()]]
    np.testing.assert_allclose(held, current, rtol=FLOAT16_STEP, atol=1e-7)
    gone = sorted(set(gone) - set(rows))
    for i in want.tolist():
        got, scores = index.search(vectors[rows[i]], k=K, allowed_ids=want)
        assert scores[0] >= 1 - FLOAT16_STEP and i in got.tolist()
    for i in gone:
        row = (i - 3) // 7
        got, _ = index.search(vectors[row], k=K, allowed_ids=np.append(want, gone))
        assert not set(got.tolist()) & set(gone)


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
    assert ivf.wait_for_layout(timeout=300)
    assert flat.kind == "flat" and ivf.kind == "ivf" and ivf.nprobe < ivf.nlist
    hits = 0
    for query in queries:
        _, want_scores = flat.search(query, k=K, allowed_ids=ids)
        got, _ = ivf.search(query, k=K, allowed_ids=ids)
        assert len(got) == K
        # Ties (identical messages) count as hits: the k-th best score is the bar, and each
        # result is scored by its float32 vector (the IVF holds float16 ones).
        hits += int(np.count_nonzero(base[got - 1] @ query >= want_scores[-1] - 1e-5))
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
    np.testing.assert_allclose(
        scores, vectors[np.searchsorted(ids, got)] @ query, rtol=0, atol=FLOAT16_STEP
    )
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
    assert int.from_bytes(path.read_bytes()[8:12], "little") == 4
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


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_the_file_written_in_pieces_is_the_format_older_releases_read(real, tmp_path, kind) -> None:
    """save() lets FAISS write into the file and fills the header in last; the bytes are
    still exactly the documented layout (header, checksum of the payload, the IVF's figures,
    FAISS's serialisation), so a release that reads the file whole reads it too (a flat
    one; an IVF file is version 4, which releases before float16 refuse, naming the rebuild)."""
    n = 900 if kind == "ivf" else 300
    index, _ = _ivf(real, n=n)
    assert index.kind == kind
    index.synced_to, index.memory_id = 42, uuid.uuid4().hex
    path = tmp_path / "notepad.faiss"
    index.save(path)
    payload = faiss.serialize_index(index._index).tobytes()
    version = 2
    if kind == "ivf":
        payload = _IVF_META.pack(index.trained_on, index.recall) + payload
        version = 4
    digest = hashlib.sha256(payload).digest()
    identity = uuid.UUID(hex=index.memory_id).bytes
    assert path.read_bytes() == _HEADER.pack(b"MEMSDKIX", version, 42, digest, identity) + payload
    assert not index.dirty
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_a_float32_ivf_file_of_older_releases_loads_and_is_retrained_into_float16(
    real, tmp_path
) -> None:
    """Older releases wrote an IVF of float32 vectors (format version 3). It loads and
    serves at once, while a background training makes the float16 IVF (half the bytes) that
    the next save writes as version 4."""
    vectors = real[1][:900]
    ids = np.arange(len(vectors), dtype=np.int64) * 7 + 3
    old = faiss.IndexIVFFlat(faiss.IndexFlatIP(384), 384, 20, faiss.METRIC_INNER_PRODUCT)
    old.train(vectors)
    old.set_direct_map_type(faiss.DirectMap.Hashtable)
    old.add_with_ids(vectors, ids)
    old.nprobe = 20
    payload = _IVF_META.pack(900, 0.996) + faiss.serialize_index(old).tobytes()
    digest = hashlib.sha256(payload).digest()
    path = tmp_path / "notepad.faiss"
    path.write_bytes(_HEADER.pack(b"MEMSDKIX", 3, 42, digest, bytes(16)) + payload)

    loaded = VectorIndex.load(path, dim=384, ivf_threshold=THRESHOLD)
    with loaded._lock:  # the float32 index serves until the swap
        assert isinstance(loaded._index, faiss.IndexIVFFlat) and loaded.training
        assert (loaded.kind, loaded.trained_on, loaded.recall) == ("ivf", 900, 0.996)
        got, scores = loaded.search(vectors[5], k=1, allowed_ids=ids)
        assert got.tolist() == [ids[5]] and scores[0] >= 1 - 1e-5
    assert loaded.wait_for_layout(timeout=300)
    assert isinstance(loaded._index, faiss.IndexIVFScalarQuantizer) and loaded.dirty
    assert loaded.ids().tolist() == ids.tolist() and loaded.trained_on == 900
    held = loaded._index.reconstruct_batch(ids)
    np.testing.assert_allclose(held, vectors, rtol=FLOAT16_STEP, atol=1e-7)
    assert loaded.recall >= 0.995 and not loaded.training  # retrained once, not again
    loaded.save(path)
    assert int.from_bytes(path.read_bytes()[8:12], "little") == 4
    again = VectorIndex.load(path, dim=384, ivf_threshold=THRESHOLD)
    assert not again.training and again.ids().tolist() == ids.tolist()


def test_a_save_that_fails_leaves_the_index_to_be_saved_again(real, tmp_path) -> None:
    """The bytes are written, but the rename that makes them the file fails (a directory
    holds the name): the error names the file, no temp file stays, and the index stays dirty,
    so the next save writes it."""
    index, _ = _ivf(real, n=300)
    assert index.dirty
    blocked = tmp_path / "blocked" / "notepad.faiss"
    blocked.mkdir(parents=True)
    (blocked / "something").write_text("a directory where the index file should be")
    with pytest.raises(StorageError, match=r"cannot write .*notepad\.faiss"):
        index.save(blocked)
    assert index.dirty
    assert sorted(p.name for p in blocked.parent.iterdir()) == ["notepad.faiss"]
    index.save(tmp_path / "notepad.faiss")
    assert not index.dirty
    assert len(VectorIndex.load(tmp_path / "notepad.faiss", dim=384)) == 300


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("header cut", "is truncated"),
        ("payload cut", "fails its checksum"),
        ("forged with its checksum", "cannot be read"),
        ("8-bit codes as version 4", "holds a IndexIVFScalarQuantizer"),
        ("float16 codes as version 3", "holds a IndexIVFScalarQuantizer"),
        ("removed", "is missing"),
    ],
)
def test_a_damaged_index_file_is_refused_with_the_rebuild_command(
    real, tmp_path, damage, message
) -> None:
    index, _ = _ivf(real, n=900)
    path = tmp_path / "notepad.faiss"
    index.save(path)
    blob = path.read_bytes()
    if damage == "header cut":
        path.write_bytes(blob[:20])
    elif damage == "payload cut":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "forged with its checksum":
        # Passes the checksum, so it reaches FAISS's reader, which refuses it.
        payload = _IVF_META.pack(900, 0.99) + b"not a FAISS index" * 8
        header = _HEADER.pack(b"MEMSDKIX", 3, 0, hashlib.sha256(payload).digest(), bytes(16))
        path.write_bytes(header + payload)
    elif damage.startswith(("8-bit", "float16")):
        # A well-formed FAISS index of another layout than its version says, checksum right.
        eight_bit = damage.startswith("8-bit")
        other = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(384),
            384,
            20,
            faiss.ScalarQuantizer.QT_8bit if eight_bit else faiss.ScalarQuantizer.QT_fp16,
            faiss.METRIC_INNER_PRODUCT,
            False,
        )
        other.train(real[1][:900])
        payload = _IVF_META.pack(900, 0.99) + faiss.serialize_index(other).tobytes()
        version = 4 if eight_bit else 3
        digest = hashlib.sha256(payload).digest()
        path.write_bytes(_HEADER.pack(b"MEMSDKIX", version, 0, digest, bytes(16)) + payload)
    else:
        path.unlink()
    with pytest.raises(IndexCorruptedError, match=message) as exc:
        VectorIndex.load(path, dim=384)
    assert "memsdk rebuild-index --memory" in str(exc.value)


def test_a_flat_file_past_the_threshold_loads_as_ivf(real, tmp_path) -> None:
    flat = VectorIndex(384, ivf_threshold=10_000)
    ids = np.arange(800, dtype=np.int64) + 1
    flat.add(ids, real[1][:800])
    path = tmp_path / "notepad.faiss"
    flat.save(path)
    assert int.from_bytes(path.read_bytes()[8:12], "little") == 2  # older readers keep it
    loaded = VectorIndex.load(path, dim=384, ivf_threshold=THRESHOLD)
    assert loaded.wait_for_layout(timeout=300)  # the open trains in the background
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
    assert notepad.wait_for_layout(timeout=300)
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
    assert notepad.rebuild_index() == 630  # waits for its training
    assert notepad.index.kind == "ivf" and notepad.index.trained_on == 630
    assert not notepad.index.training and not notepad.index.dirty
    assert notepad.index.recall >= TARGET_RECALL
    assert small_top() == want_small
    assert not {i for i, _ in notepad.vector_search(big, query, k=50)} & set(deleted)
    notepad.close()


def test_the_memory_config_sets_the_threshold_and_stats_show_the_ivf(real, tmp_path) -> None:
    """stats() shows a training while it runs; flush() waits for the one in flight (here a
    retraining, the index grown 4x) and saves the IVF it swapped in."""
    texts, vectors = real
    config = MemoryConfig(weight_memory=False, vector_ivf_threshold=256)
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        assert mem.stats().index_kind == "flat" and mem.stats().index_recall is None
        scope = mem.notepad.sql.ensure_scope(("ops", "", "", ""))
        mem.notepad.sql.insert_chunks(scope, None, _chunks(texts[:257], vectors[:257]))
        with mem.notepad.index._lock:
            mem.notepad.sync()
            stats = mem.stats()
        assert (stats.index_kind, stats.index_training) == ("flat", True)
        assert mem.notepad.wait_for_layout(timeout=300)
        stats = mem.stats()
        assert (stats.index_kind, stats.index_vectors, stats.index_training) == ("ivf", 257, False)
        assert stats.index_recall >= TARGET_RECALL
        assert 1 <= stats.index_nprobe <= stats.index_nlist
        more = _chunks(texts[257:1100], vectors[257:1100])
        mem.notepad.sql.insert_chunks(scope, None, more)
        mem.notepad.sync()  # past 4 x 257: retrained in the background
        mem.flush()
        assert mem.notepad.index.trained_on == 1100 and not mem.stats().index_training
    saved = VectorIndex.load(tmp_path / "m" / "notepad.faiss", dim=384, ivf_threshold=256)
    assert (saved.kind, saved.trained_on, len(saved)) == ("ivf", 1100, 1100)


# Run in a child process, past a generous ceiling: a save or close that waited for the held
# training would never return (the training waits for the lock the caller holds).
SAVE_AND_CLOSE = """
import shutil, sys
from pathlib import Path
import numpy as np
from memsdk.stores.notepad import Notepad
from memsdk.stores.sql import NewChunk
directory, vectors = Path(sys.argv[1]), np.load(sys.argv[2])
notepad = Notepad(directory / "m", database_url=None, embedder_name=sys.argv[3], dim=384,
                  ivf_threshold=int(sys.argv[4]))
scope = notepad.sql.ensure_scope(("ops", "", "", ""))
chunks = [NewChunk(seq, 0, 9, f"chunk {seq:03d}", None, f"{seq:064x}", {}, vector)
          for seq, vector in enumerate(vectors)]
with notepad.index._lock:
    notepad.sql.insert_chunks(scope, None, chunks)
    notepad.sync()
    assert notepad.index.training and notepad.index.kind == "flat"
    notepad.save_index()
    shutil.copy(notepad.index_path, directory / "during.faiss")
    notepad.close()
    print("closed", flush=True)
"""


def test_save_and_close_during_training_write_the_flat_index_without_waiting(
    real, embedder, tmp_path
) -> None:
    """A save during training writes the flat index, valid and complete; a close abandons the
    training instead of waiting for it (and the process exits cleanly with it in flight);
    the next open trains again. Nothing is lost: until the swap the saved file is flat."""
    n = THRESHOLD + 100
    np.save(tmp_path / "vectors.npy", real[1][:n])
    args = [str(tmp_path), str(tmp_path / "vectors.npy"), embedder.name, str(THRESHOLD)]
    child = subprocess.run(
        [sys.executable, "-P", "-c", SAVE_AND_CLOSE, *args],
        capture_output=True,
        text=True,
        timeout=600,  # importing torch on a loaded machine; the calls take milliseconds
    )
    assert child.returncode == 0 and child.stdout.split() == ["closed"], child.stderr
    for name in ("during.faiss", "m/notepad.faiss"):
        blob = (tmp_path / name).read_bytes()
        assert int.from_bytes(blob[8:12], "little") == 2  # the flat format
        flat = VectorIndex.load(tmp_path / name, dim=384, ivf_threshold=10 * n)
        assert flat.kind == "flat" and len(flat) == n and not flat.training
        got, _ = flat.search(real[1][n - 1], k=1, allowed_ids=flat.ids())
        assert got.tolist() == [flat.ids()[-1]]
    notepad = Notepad(
        tmp_path / "m",
        database_url=None,
        embedder_name=embedder.name,
        dim=384,
        ivf_threshold=THRESHOLD,
    )
    try:
        assert notepad.wait_for_layout(timeout=300)
        assert notepad.index.kind == "ivf" and len(notepad.index) == n
        assert notepad.index.recall >= TARGET_RECALL
    finally:
        notepad.close()


def test_by_default_sets_up_to_a_share_of_the_index_are_searched_exactly(real, monkeypatch) -> None:
    index, ids = _ivf(real, n=900, exact_limit=None)
    limit = int(900 * EXACT_SEARCH_SHARE)
    assert limit >= 2
    exact: list[int] = []
    read_by_id = index._exact

    def counting(query, *, k, ids):
        exact.append(len(ids))
        return read_by_id(query, k=k, ids=ids)

    monkeypatch.setattr(index, "_exact", counting)
    query = real[1][950]
    got, _ = index.search(query, k=K, allowed_ids=ids[:limit])
    assert got.tolist() == _exact_top(real[1][:limit], ids[:limit], query, K).tolist()
    assert exact == [limit]
    got, _ = index.search(query, k=K, allowed_ids=ids[: limit + 1])  # the probed lists
    assert len(got) == limit + 1 and exact == [limit]
    got, _ = index.search(query, k=K, allowed_ids=ids[::2])
    assert len(got) == K and exact == [limit]
