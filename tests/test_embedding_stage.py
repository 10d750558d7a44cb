"""The background embedding stage (memsdk/embedding_stage.py) on real parts: SQLite, FAISS, the
MiniLM embedder, real Loghub logs, processes sharing one memory, and a writer killed with
SIGKILL while it embeds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memsdk import BusyError, HybridMemory, MemoryConfig, Scope
from memsdk.lease import EMBEDDING_LEASE
from memsdk.stores.vector_backlog import backlog, pending_chunks, store_vectors

CONFIG = MemoryConfig(weight_memory=False)
HDFS_NEEDLE = "blk_1441315972355360459"  # on one line near the end of HDFS_2k.log


def _log_tail(shared, tmp_path, lines: int = 500, system: str = "HDFS"):
    """The last ``lines`` lines of a real Loghub log (of HDFS: 500 make about 170 chunks), as a
    file."""
    path = tmp_path / f"{system}_tail.log"
    text = shared("data", "loghub", system, f"{system}_2k.log").read_bytes()
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


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_deleted_or_rewritten_chunk_never_gets_a_late_vector(tmp_path, request, backend) -> None:
    scope = Scope(tenant="ops")
    lines = [f"job {i} on node-{i % 5} finished with code {i * 7 % 3}\n" for i in range(6)]
    url = request.getfixturevalue("postgres").create() if backend == "postgres" else None
    config = MemoryConfig(
        weight_memory=False, chunk_bytes=64, share_template_vectors=False, database_url=url
    )
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

    config = MemoryConfig(
        weight_memory=False,
        vector_batch_chunks=8,
        share_template_vectors=False,
        weights_lease_s=float(sys.argv[3]),
    )
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


@contextlib.contextmanager
def _embedding_writer(
    memory: Path, path: Path, *, lease_s: int
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process ingesting ``path`` into ``memory`` (KILLED_WRITER), once its embedding stage
    has stored a batch: ``(process, chunks it ingested)``. Killed and reaped on exit."""
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", KILLED_WRITER, str(memory), str(path), str(lease_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        chunks = int(child.stdout.readline().split()[1])
        assert child.stdout.readline().strip() == "embedding", "the stage never stored a batch"
        yield child, chunks
    finally:
        child.kill()
        child.wait(timeout=60)


def test_a_kill_during_background_embedding_loses_nothing(tmp_path, shared, figures):
    path = _log_tail(shared, tmp_path)
    memory = tmp_path / "m"
    with _embedding_writer(memory, path, lease_s=10) as (child, chunks):
        os.kill(child.pid, signal.SIGKILL)
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


# A process sharing a memory with another: both open before either ingests, so that both
# stages see the pending chunks of both.
SHARING_WRITER = textwrap.dedent(
    """
    import json, sys
    from memsdk import HybridMemory, MemoryConfig, Scope
    from memsdk.stores.vector_backlog import backlog

    # A long lease: this test is about which process embeds, not about lapses on a slow day.
    config = MemoryConfig(weight_memory=False, vector_batch_chunks=8, weights_lease_s=600)
    mem = HybridMemory.open(sys.argv[1], config=config)
    print("open", flush=True)
    sys.stdin.readline()
    mem.ingest(sys.argv[2], scope=Scope(tenant="ops"))
    mem.flush()  # the process without the lease waits for the other one
    sql = mem.notepad.sql
    print(json.dumps({
        "embedded": mem.embedding.embedded,
        "pending": sum(b.chunks for b in backlog(sql).values()),
        "index_is_sql": mem.notepad.index.ids().tolist() == sorted(sql.all_chunk_ids().tolist()),
    }), flush=True)
    mem.close()
    """
)


def test_two_processes_sharing_a_memory_embed_each_chunk_once(tmp_path, shared, figures) -> None:
    """Two processes ingest real logs into one memory at once: only the holder of the
    embedding lease embeds, so the chunks the two embedded add up to the memory's chunks (each
    once); both flushes return with every vector stored and in their own index."""
    memory = tmp_path / "m"
    HybridMemory.open(memory, config=CONFIG).close()  # made before two processes open it
    paths = [_log_tail(shared, tmp_path, 300, system) for system in ("HDFS", "BGL")]
    children = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", SHARING_WRITER, str(memory), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for path in paths
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "open"
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [json.loads(child.stdout.readline()) for child in children]
        assert [child.wait(timeout=120) for child in children] == [0, 0]
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=60)
    assert all(r["pending"] == 0 and r["index_is_sql"] for r in results), results
    with HybridMemory.open(memory, config=CONFIG) as mem:
        _agree(mem)
        chunks = len(mem.notepad.sql.all_chunk_ids())
        assert mem.stats().embedding_holder is None  # given up when idle and at close
    assert sum(r["embedded"] for r in results) == chunks, results
    figures.record(
        "embedding_shared",
        chunks=chunks,
        embedded_by_first=results[0]["embedded"],
        embedded_by_second=results[1]["embedded"],
    )


def test_a_process_waiting_for_the_embedding_lease_takes_over_from_a_killed_holder(
    tmp_path, shared, figures
) -> None:
    """A process that opened the memory while another embeds it does not embed; once the
    holder is killed with SIGKILL it takes over at once (the lease would last an hour: the
    holder is known gone because it was a process of this machine), and every vector gets
    stored, SQL and index in agreement."""
    path = _log_tail(shared, tmp_path, 700)
    memory = tmp_path / "m"
    config = MemoryConfig(weight_memory=False, weights_lease_s=3600)
    with (
        _embedding_writer(memory, path, lease_s=3600) as (child, chunks),
        HybridMemory.open(memory, config=config) as mem,
    ):
        holder = mem.stats().embedding_holder
        assert holder is not None and holder.split(":")[1] == str(child.pid)
        before = backlog(mem.notepad.sql)[1].chunks  # the holder goes on until the kill
        assert mem.embedding.embedded == 0  # this process waits while the holder runs
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        left = backlog(mem.notepad.sql)[1].chunks
        assert 0 < left <= before < chunks, "the holder finished before it was killed"
        mem.flush()
        _agree(mem)
        assert 0 < mem.embedding.embedded <= before  # what the holder left, not more
        assert mem.stats().embedding_holder is None
        embedded = mem.embedding.embedded
    assert child.returncode == -signal.SIGKILL
    figures.record(
        "embedding_takeover", chunks=chunks, pending_at_kill=left, embedded=embedded, lost=0
    )


def test_a_flush_waiting_for_a_holder_that_makes_no_progress_names_it(tmp_path) -> None:
    """Another live process holds the embedding lease and stores nothing: flush() gives up
    after the stage's wait with a BusyError naming the holder and what to do."""
    lines = [f"job {i} on node-{i % 5} finished\n" for i in range(40)]
    with HybridMemory.open(tmp_path / "m", config=CONFIG) as mem:
        # A holder of this machine that still runs (this process, under another name), its
        # lease good for an hour.
        other = f"{socket.gethostname()}:{os.getpid()}:stalled"
        assert mem.notepad.sql.acquire_lease(EMBEDDING_LEASE, other, ttl_s=3600)
        mem.embedding.wait_s = 0.5
        mem.ingest(lines, scope=Scope(tenant="ops"), name="jobs")
        with pytest.raises(BusyError, match=f"computed by another process \\({other}\\)") as exc:
            mem.flush()
        assert "flush again once that process is idle or closed" in str(exc.value)
        assert "MemoryConfig.weights_lease_s, 10 s" in str(exc.value)
        assert mem.embedding.embedded == 0 and mem.stats().embedding_holder == other
        mem.notepad.sql.release_lease(EMBEDDING_LEASE, other)  # the holder closes
        mem.flush()
        _agree(mem)
        assert mem.embedding.embedded > 0


def test_a_holder_that_loses_the_lease_inside_a_batch_stores_none_of_it(tmp_path) -> None:
    """The holder stalls inside a batch past ``lease_s`` and another process takes the lease
    over: at its next forward pass the holder stops and stores none of the batch (the new
    holder embeds those chunks), rather than writing vectors another process computes too."""
    lines = [f"job {i} on node-{i % 5} finished with code {i * 7 % 3}\n" for i in range(80)]
    config = MemoryConfig(
        weight_memory=False, chunk_bytes=64, share_template_vectors=False, weights_lease_s=0.5
    )
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        sql, stage = mem.notepad.sql, mem.embedding
        other = f"{socket.gethostname()}:{os.getpid()}:took-over"
        embed, stopped = stage.embed, threading.Event()

        def stalling(texts: list[str], *, between) -> np.ndarray:
            def stall_then_renew() -> None:
                time.sleep(0.6)  # past lease_s, and the other process takes the lease
                assert sql.acquire_lease(EMBEDDING_LEASE, other, ttl_s=3600)
                try:
                    between()
                finally:
                    stopped.set()

            return embed(texts, between=stall_then_renew)

        stage.embed = stalling
        mem.ingest(lines, scope=Scope(tenant="ops"), name="jobs")
        assert stopped.wait(60)
        time.sleep(0.2)  # what the stage does after the lost renewal
        assert stage.embedded == 0
        assert sum(b.chunks for b in backlog(sql).values()) == len(sql.all_chunk_ids())
        stage.embed = embed
        sql.release_lease(EMBEDDING_LEASE, other)  # the new holder is done
        mem.flush()
        _agree(mem)


def test_a_close_drops_the_batch_in_flight_at_its_next_forward_pass(tmp_path, shared) -> None:
    """A close does not wait for the stage's whole batch (512 chunks by default, seconds of
    embedding): it stops at the next forward pass, stores none of the batch, and the next
    open embeds every chunk."""
    path = _log_tail(shared, tmp_path, 1000)
    config = MemoryConfig(weight_memory=False, share_template_vectors=False)
    mem = HybridMemory.open(tmp_path / "m", config=config)
    stage, passes, first_pass = mem.embedding, [], threading.Event()
    embed = stage.embed

    def counting(texts: list[str], *, between) -> np.ndarray:
        def counted() -> None:
            passes.append(len(texts))
            first_pass.set()
            between()

        return embed(texts, between=counted)

    stage.embed = counting
    chunks = mem.ingest(path, scope=Scope(tenant="ops")).chunks
    assert chunks > 64  # the batch holds several forward passes
    assert first_pass.wait(120)
    mem.close()
    assert stage.embedded == 0  # the first batch was dropped, not finished
    assert len(passes) <= 4, passes  # the close was seen at the next pass or so
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        assert backlog(mem.notepad.sql)[1].chunks == chunks
        mem.flush()
        _agree(mem)


def test_a_memory_embeds_in_the_precision_it_is_configured_with(tmp_path) -> None:
    """``embedding_precision`` picks the stored vectors' precision; the two stay within the
    promised cosine of each other."""
    text = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 terminating"
    stored = {}
    for precision in ("float32", "bfloat16"):
        config = MemoryConfig(weight_memory=False, embedding_precision=precision)
        with HybridMemory.open(tmp_path / precision, config=config) as mem:
            assert mem.embedder.precision == precision
            (cid,) = mem.add(text, scope=Scope(tenant="ops")).ids
            stored[precision] = dict(
                zip(*next(mem.notepad.sql.embeddings(np.array([cid]))), strict=True)
            )[cid]
            np.testing.assert_allclose(stored[precision], mem.embedder.embed([text])[0], atol=1e-6)
    assert np.abs(stored["float32"] - stored["bfloat16"]).max() > 0
    assert float(stored["float32"] @ stored["bfloat16"]) > 0.999
    assert MemoryConfig().embedding_precision == "auto"
    with pytest.raises(ValueError, match="embedding_precision"):
        MemoryConfig(embedding_precision="int8")
