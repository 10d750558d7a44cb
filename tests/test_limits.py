"""Limits and full disks: each limit is a clear error (or a listed skip) that names the setting,
and a write that fails for want of space keeps everything committed before it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import uuid

import pytest
from sqlalchemy import event

from memsdk import HybridMemory, InputError, MemoryConfig, NotFoundError, Scope, StorageError
from memsdk.files import atomic_write_bytes

SCOPE = Scope(tenant="acme")


def _lines(prefix: str, count: int) -> list[str]:
    return [
        f"{prefix}-{i} kernel: tun{i % 5} state {i * 7919 % 10007} {uuid.uuid4()}\n"
        for i in range(count)
    ]


def test_document_size_limit_skips_large_files_and_cuts_long_streams(tmp_path) -> None:
    config = MemoryConfig(max_document_bytes=4096)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "big.log").write_text("".join(_lines("big", 200)))
    (docs / "small.log").write_text("".join(_lines("small", 10)))
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        report = mem.ingest(docs, scope=SCOPE)
        (skip,) = report.skipped
        assert skip.source.endswith("big.log")
        assert "larger than 4096" in skip.reason and "max_document_bytes" in skip.reason
        assert report.documents == 1  # small.log
        report = mem.ingest(_lines("stream", 200), scope=SCOPE, name="stream")
        (skip,) = report.skipped
        assert skip.reason.startswith("cut after its first 4096 bytes")
        assert report.bytes == 4096
        stored = [i.text for i in mem.get_all(scope=SCOPE, limit=1000) if i.source == "stream"]
        assert sum(len(t.encode()) for t in stored) <= 4096


def test_query_size_limits(mem) -> None:
    mem.add("VPN drops after sleep", scope=SCOPE)
    for call in (mem.search, mem.query):
        with pytest.raises(InputError, match=r"at most 8192.*max_query_bytes"):
            call("x" * 8193, scope=SCOPE)
        with pytest.raises(InputError, match="non-empty"):
            call("   ", scope=SCOPE)
    with pytest.raises(InputError, match="add\\(\\) takes at most"):
        HybridMemory.add(mem, "x" * (mem.config.max_text_bytes + 1), scope=SCOPE)


def test_scope_limit(tmp_path) -> None:
    with HybridMemory.open(tmp_path / "m", config=MemoryConfig(max_scopes=3)) as mem:
        for tenant in "abc":
            mem.add(f"note of {tenant}", scope=Scope(tenant=tenant))
        with pytest.raises(InputError, match=r"holds 3 scopes.*max_scopes"):
            mem.add("one too many", scope=Scope(tenant="d"))
        mem.add("an existing scope still takes writes", scope=Scope(tenant="a"))
        assert mem.search("note", scope=Scope(tenant="d")) == []  # reads create nothing
        assert len(mem.stats().scopes) == 3


def test_a_full_database_rolls_back_and_keeps_what_was_committed(tmp_path, database) -> None:
    """SQLite's max_page_count makes the database refuse to grow, as a full disk does."""
    if database != "sqlite":
        pytest.skip("caps a SQLite file's page count (the same test runs on SQLite)")
    config = MemoryConfig(weight_memory=False, embed_batch_chunks=8)
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        kept = mem.ingest(_lines("before", 50), scope=SCOPE, name="before")
        engine = mem.notepad.sql._write_engine
        with engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

        def cap(dbapi_connection, _record) -> None:
            dbapi_connection.execute(f"PRAGMA max_page_count={pages + 4}")

        event.listen(engine, "connect", cap)
        engine.dispose()
        with pytest.raises(StorageError, match=r"rolled back.*free space") as raised:
            mem.ingest(_lines("during", 2000), scope=SCOPE, name="during")
        assert raised.value.errno == errno.ENOSPC
        event.remove(engine, "connect", cap)
        engine.dispose()
        items = mem.get_all(scope=SCOPE, limit=10_000)
        assert len([i for i in items if i.source == "before"]) == kept.chunks
        # With room again, running the ingest again completes it.
        again = mem.ingest(_lines("after", 20), scope=SCOPE, name="after")
        assert again.chunks > 0
    with HybridMemory.open(tmp_path / "m", config=config) as mem:
        sources = {i.source for i in mem.get_all(scope=SCOPE, limit=10_000)}
        assert {"before", "after"} <= sources
        mem.embedding.flush()  # the vectors refused while the disk was full are computed now
        assert set(mem.notepad.sql.all_chunk_ids().tolist()) == set(
            mem.notepad.index.ids().tolist()
        )


def test_a_failing_file_write_is_a_storage_error_and_changes_nothing(tmp_path, monkeypatch) -> None:
    target = tmp_path / "file"
    atomic_write_bytes(target, b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=r"No space left on device.*previous file is unchanged"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]  # no temp file left


@contextlib.contextmanager
def _small_filesystem(path, megabytes: int):
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(
            "mounting a small tmpfs needs root with CAP_SYS_ADMIN (as on CI); "
            f"here: {mounted.stderr.strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8) for a small tmpfs")
def test_a_full_disk_keeps_every_committed_chunk(tmp_path, database, figures) -> None:
    """A real file system that fills up: the memory, its index and its weight deltas share
    a 24 MB tmpfs with a ballast file; writes fail cleanly, and freeing space lets them go on."""
    if database != "sqlite":
        pytest.skip("fills the file system of a SQLite memory (the same test runs on SQLite)")
    with _small_filesystem(tmp_path / "disk", 24) as disk:
        ballast = disk / "ballast"
        config = MemoryConfig(index_save_interval_s=0.0, weights_save_interval_s=0.0)
        with HybridMemory.open(disk / "m", config=config) as mem:
            mem.ingest(_lines("first", 40), scope=SCOPE, name="first")
            mem.flush()
            free = shutil.disk_usage(disk).free
            ballast.write_bytes(b"\0" * (free - 256 * 1024))
            acked = []
            with pytest.raises(StorageError, match="free space"):
                for n in range(10_000):
                    mem.ingest(_lines(f"fill{n}", 20), scope=SCOPE, name=f"fill{n}")
                    acked.append(f"fill{n}")
            ballast.unlink()
            mem.ingest(_lines("last", 20), scope=SCOPE, name="last")
            mem.flush()
        with HybridMemory.open(disk / "m") as mem:
            sources = {i.source for i in mem.get_all(scope=SCOPE, limit=100_000)}
            assert {"first", "last", *acked} <= sources
            assert set(mem.notepad.sql.all_chunk_ids().tolist()) == set(
                mem.notepad.index.ids().tolist()
            )
            weights = mem.stats().scopes[0].weights
            assert weights.bytes_absorbed == mem.stats().scopes[0].bytes
            figures.record(
                "disk_full", documents_acknowledged=len(acked) + 2, lost=0, filesystem_mb=24
            )


def test_close_ends_even_when_the_weights_cannot_be_saved(memory_dir, monkeypatch, caplog) -> None:
    """A full disk at close: close() returns, and the chunks are absorbed after the next open."""
    from memsdk.stores.weights import WeightDeltas

    lines = _lines("close", 30)
    mem = HybridMemory.open(memory_dir)
    mem.ingest(lines, scope=SCOPE, name="close")

    def full(self, scope_id, version, data) -> None:
        raise StorageError(errno.ENOSPC, "cannot write the delta: No space left on device")

    monkeypatch.setattr(WeightDeltas, "write", full)
    with pytest.raises(StorageError, match="No space left"):
        mem.flush()  # absorbed, but the delta cannot be written: flush says so
    mem.close()  # returns: the worker ends although its save failed
    assert "saving the weight memory at close failed" in caplog.text
    monkeypatch.undo()
    with HybridMemory.open(memory_dir) as mem:
        mem.flush()
        (scope,) = mem.stats().scopes
        assert scope.weights.bytes_absorbed == scope.bytes


def test_scoring_calls_take_at_most_max_score_bytes(tmp_path) -> None:
    """surprise, bits_per_byte, complete and a routed query score their text with the weight
    model, whose time grows with it: past max_score_bytes they refuse it before scoring."""
    assert MemoryConfig().max_score_bytes == 64 << 10
    with (
        HybridMemory.open(tmp_path / "default") as mem,
        pytest.raises(InputError, match=r"surprise\(\) scores at most 65536.*max_score_bytes"),
    ):
        mem.surprise("x" * ((64 << 10) + 1), scope=SCOPE)
    with HybridMemory.open(tmp_path / "m", config=MemoryConfig(max_score_bytes=1024)) as mem:
        mem.add("vpn-gw-1 kernel: tun0 down after sleep", scope=SCOPE)
        text = "".join(_lines("score", 40))
        at_limit = text.encode()[:1024].decode("utf-8", "ignore")
        assert len(mem.surprise(at_limit, scope=SCOPE).lines) >= 1
        assert mem.bits_per_byte(at_limit, scope=SCOPE) > 0
        mem.complete(at_limit, scope=SCOPE, max_bytes=4)
        over = text.encode()[:1025]
        for name, call in (
            ("surprise", lambda: mem.surprise(over, scope=SCOPE)),
            ("bits_per_byte", lambda: mem.bits_per_byte(over, scope=SCOPE)),
            ("complete", lambda: mem.complete(over, scope=SCOPE)),
        ):
            with pytest.raises(
                InputError,
                match=rf"is 1025 bytes, {name}\(\) scores at most 1024 in one call "
                r"\(MemoryConfig\.max_score_bytes\)",
            ):
                call()
        with pytest.raises(InputError, match=r"routed query.*at most 1024.*max_score_bytes"):
            mem.query("vpn " * 300, scope=SCOPE)
        assert mem.search("vpn " * 300, scope=SCOPE)  # search scores nothing: max_query_bytes
        assert len(mem.get_all(scope=SCOPE)) == 1


def test_integers_past_64_bits_are_input_errors(mem) -> None:
    (memory_id,) = mem.add("VPN drops after sleep", scope=SCOPE).ids
    for big in (2**63, -(2**63) - 1, 2**70):
        for call in (
            mem.get,
            mem.delete,
            mem.history,
            lambda i, scope: mem.update(i, scope=scope, text="new text"),
        ):
            with pytest.raises(InputError, match=f"memory id {big} does not fit in 64 bits"):
                call(big, scope=SCOPE)
    for missing in (2**31, 2**63 - 1, -(2**63)):  # ids that fit, held by no memory
        for call in (
            mem.get,
            mem.delete,
            mem.history,
            lambda i, scope: mem.update(i, scope=scope, text="new text"),
        ):
            with pytest.raises(NotFoundError):
                call(missing, scope=SCOPE)
    for label in ("limit", "offset"):
        with pytest.raises(InputError, match=rf"{label} is {2**63}, larger than the databases"):
            mem.get_all(scope=SCOPE, **{label: 2**63})
    assert [i.id for i in mem.get_all(scope=SCOPE, limit=2**63 - 1)] == [memory_id]
    assert mem.get_all(scope=SCOPE, offset=2**63 - 1) == []
