"""The background embedding stage (memsdk/embedding_stage.py) on real parts: SQLite, FAISS, the
MiniLM embedder, real Loghub logs, and a writer killed with SIGKILL while it embeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.stores.vector_backlog import backlog, pending_chunks, store_vectors

CONFIG = MemoryConfig(weight_memory=False)
HDFS_NEEDLE = "blk_1441315972355360459"  # on one line near the end of HDFS_2k.log


def _log_tail(shared, tmp_path, lines: int = 500):
    """The last ``lines`` lines of the real HDFS log (about 170 chunks), as a file."""
    path = tmp_path / "HDFS_tail.log"
    text = shared("data", "loghub", "HDFS", "HDFS_2k.log").read_bytes()
    path.write_bytes(b"".join(text.splitlines(keepends=True)[-lines:]))
    return path


def _agree(mem: HybridMemory) -> None:
    """Every chunk in SQL has a stored vector, and the index holds exactly those vectors."""
    sql = mem.notepad.sql
    assert backlog(sql) == {}
    sql_ids = sorted(sql.all_chunk_ids().tolist())
    assert sorted(mem.notepad.index.ids().tolist()) == sql_ids
    assert sorted(i for ids, _ in sql.embeddings() for i in ids.tolist()) == sql_ids


def test_exact_search_finds_a_needle_at_once_and_flush_waits_for_the_vectors(
    tmp_path, shared
) -> None:
    path = _log_tail(shared, tmp_path)
    assert HDFS_NEEDLE in path.read_text().splitlines()[-10]
    scope = Scope(tenant="ops")
    with HybridMemory.open(tmp_path / "m", config=CONFIG) as mem:
        report = mem.ingest(path, scope=scope)
        # Acknowledged before the vectors: the needle's chunk, among the last, is pending.
        (hit,) = mem.search(HDFS_NEEDLE, scope=scope, k=1)
        assert HDFS_NEEDLE in hit.text and hit.exact_match and hit.keyword_rank == 1
        assert hit.vector_pending and hit.vector_rank is None
        assert 0 < hit.vectors_pending <= report.chunks
        lag = mem.stats().scopes[0].vectors_lag
        assert 0 < lag.pending_chunks <= report.chunks and lag.pending_bytes > 0

        mem.flush()
        _agree(mem)
        assert mem.stats().scopes[0].vectors_lag.pending_chunks == 0
        (hit,) = mem.search(HDFS_NEEDLE, scope=scope, k=1)
        assert not hit.vector_pending and hit.vectors_pending == 0
        # The stage's bookkeeping is not part of a memory's history.
        assert [e.event for e in mem.history(hit.id, scope=scope)] == ["ADD"]
        # A vector from the stage is the chunk's own (a meaning query finds it by vector).
        stored = dict(zip(*next(mem.notepad.sql.embeddings(np.array([hit.id]))), strict=True))
        assert float(stored[hit.id] @ mem.embedder.embed([hit.text])[0]) > 0.99


def test_a_deleted_or_rewritten_chunk_never_gets_a_late_vector(tmp_path) -> None:
    scope = Scope(tenant="ops")
    lines = [f"job {i} on node-{i % 5} finished with code {i * 7 % 3}\n" for i in range(6)]
    config = MemoryConfig(weight_memory=False, chunk_bytes=64, share_template_vectors=False)
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        mem.embedding.close()  # the stage stays behind: this test plays a slow one by hand
        mem.ingest(lines, scope=scope, name="jobs")
        sql = mem.notepad.sql
        chunks = pending_chunks(sql, 1, limit=100)  # what a stage read before the changes
        assert len(chunks) == 6
        vectors = mem.embedder.embed([c.text for c in chunks])
        gone, rewritten = chunks[0].id, chunks[1].id
        mem.delete(gone, scope=scope)
        mem.update(rewritten, scope=scope, text="job 1 was rescheduled to node-9")

        assert store_vectors(sql, 1, chunks, vectors) == 4  # the late batch lands
        assert store_vectors(sql, 1, chunks, vectors) == 0  # and only once
        mem.notepad.sync()
        _agree(mem)
        assert gone not in mem.notepad.index.ids().tolist()
        stored = dict(zip(*next(sql.embeddings(np.array([rewritten]))), strict=True))
        own = mem.embedder.embed(["job 1 was rescheduled to node-9"])[0]
        np.testing.assert_allclose(stored[rewritten], own, atol=1e-5)


def test_scopes_embed_apart_and_see_only_their_own_vectors(tmp_path, shared) -> None:
    path = shared("data", "loghub", "HDFS", "HDFS_2k.log")
    lines = path.read_text().splitlines(keepends=True)
    first, second = Scope(tenant="a"), Scope(tenant="b")
    with HybridMemory.open(tmp_path / "m", config=CONFIG) as mem:
        a = mem.ingest(lines[:200], scope=first, name="a").chunks
        b = mem.ingest(lines[200:260], scope=second, name="b").chunks
        lags = {s.scope.tenant: s.vectors_lag.pending_chunks for s in mem.stats().scopes}
        assert lags["a"] <= a and lags["b"] <= b
        mem.flush()
        _agree(mem)
        ids = {s: {i.id for i in mem.get_all(scope=s, limit=10_000)} for s in (first, second)}
        for scope, other in ((first, second), (second, first)):
            hits = mem.search("PacketResponder terminating", scope=scope, k=50)
            assert hits and all(h.id in ids[scope] for h in hits)
            assert not {h.id for h in hits} & ids[other]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from memsdk import HybridMemory, MemoryConfig, Scope
    from memsdk.stores.vector_backlog import backlog

    config = MemoryConfig(weight_memory=False, embed_batch_chunks=8)
    mem = HybridMemory.open(sys.argv[1], config=config)
    report = mem.ingest(sys.argv[2], scope=Scope(tenant="ops"))
    print("ingested", report.chunks, flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        left = backlog(mem.notepad.sql).get(1)
        if left is not None and left.chunks <= report.chunks - 16:
            print("embedding", flush=True)  # some batches stored, most still pending
            break
        time.sleep(0.05)
    else:
        print("no stage at work", flush=True)
    time.sleep(600)
    """
)


def test_a_kill_during_background_embedding_loses_nothing(tmp_path, shared, figures):
    path = _log_tail(shared, tmp_path)
    memory = tmp_path / "m"
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", KILLED_WRITER, str(memory), str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        chunks = int(child.stdout.readline().split()[1])
        assert child.stdout.readline().strip() == "embedding", "the stage never stored a batch"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    with HybridMemory.open(memory, config=CONFIG) as mem:
        left = backlog(mem.notepad.sql)[1].chunks
        assert 0 < left < chunks  # killed mid-stage: some vectors stored, not all
        mem.flush()  # the reopened memory's stage finishes the work
        _agree(mem)
        items = mem.get_all(scope=Scope(tenant="ops"), limit=10_000)
        assert len(items) == chunks
        assert b"".join(i.text.encode() for i in sorted(items, key=lambda i: i.id)) == (
            path.read_bytes()
        )
    figures.record("embedding_kill", chunks=chunks, pending_at_kill=left, lost=0)
