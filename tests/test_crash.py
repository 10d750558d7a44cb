"""Crash safety: processes writing to a memory are killed with SIGKILL at random points; after
each kill the memory reopens with every acknowledged write in place, SQL and the vector index
in agreement, and weight deltas that load (the old file or the new one, never a torn one)."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import memsdk
from memsdk import HybridMemory, IndexCorruptedError, NotFoundError, Scope
from memsdk.cli import main as cli_main
from memsdk.engine import read_delta
from memsdk.stores.weights import RouterPolicies, WeightDeltas

SCOPE = Scope(tenant="crash", user="u1")
WORKER = Path(__file__).with_name("crash_worker.py")
MEMORIES = 5
KILLS_PER_MEMORY = 10


class ForkServer:
    """tests/crash_worker.py, driven over its stdin/stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str, answer: str) -> list[str]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline().split()
        assert reply and reply[0] == answer, f"fork server answered {reply!r} to {line!r}"
        return reply[1:]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


class Acknowledged:
    """What the killed processes were told had happened, read from their ack files."""

    def __init__(self) -> None:
        self.adds: dict[int, str] = {}  # memory id -> document name
        self.ingests: dict[str, int] = {}  # document name -> chunks
        self.deleting: set[int] = set()
        self.deleted: set[int] = set()

    def read(self, path: Path) -> None:
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            kind, *rest = line.split()
            if kind == "add":
                self.adds[int(rest[1])] = rest[0]
            elif kind == "ingest":
                self.ingests[rest[0]] = int(rest[1])
            elif kind == "deleting":
                self.deleting.add(int(rest[0]))
            elif kind == "deleted":
                self.deleted.add(int(rest[0]))

    @property
    def documents(self) -> int:
        return len(self.adds) + len(self.ingests)


def _check(memory: Path, acked: Acknowledged, caplog: pytest.LogCaptureFixture) -> int:
    """Reopen the memory and check it against what was acknowledged; returns documents lost."""
    lost = 0
    for scope_dir in WeightDeltas(memory).directory.glob("scope-*"):
        for path in scope_dir.glob("delta-*.safetensors"):
            read_delta(path.read_bytes(), source=str(path))  # never torn
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memsdk"), HybridMemory.open(memory) as mem:
        items = mem.get_all(scope=SCOPE, limit=1_000_000)
        by_id = {item.id: item for item in items}
        chunks = Counter(item.metadata.get("doc") for item in items)
        for memory_id, name in acked.adds.items():
            if memory_id in acked.deleted:
                with pytest.raises(NotFoundError):
                    mem.get(memory_id, scope=SCOPE)
            elif memory_id not in acked.deleting:
                item = by_id.get(memory_id)
                lost += item is None or not item.text.startswith(f"{name} ticket")
        for name, count in acked.ingests.items():
            lost += chunks[name] != count
        mem.embedding.flush()  # vectors a kill left pending are computed after the reopen
        sql_ids = set(mem.notepad.sql.all_chunk_ids().tolist())
        assert sql_ids == set(mem.notepad.index.ids().tolist())
        assert len(sql_ids) == len(items)
        mem.stats()  # loads the scope's weight memory from its deltas
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert not rebuilt, rebuilt
    assert not list(memory.rglob("*.tmp")), "a killed write left a temp file behind"
    return lost


@pytest.mark.slow
def test_sigkill_at_random_points_loses_no_acknowledged_write(tmp_path, caplog, figures):
    server = ForkServer()
    rng = random.Random(20261201)
    kills = lost = 0
    documents = 0
    try:
        for m in range(MEMORIES):
            memory = tmp_path / f"memory-{m}"
            acked = Acknowledged()
            for k in range(KILLS_PER_MEMORY):
                ack = tmp_path / f"ack-{m}-{k}"
                (pid,) = server.ask(f"run {memory} {ack} {1000 * m + k}", "pid")
                time.sleep(rng.uniform(0.3, 2.0))
                os.kill(int(pid), signal.SIGKILL)
                _, status = server.ask(f"reap {pid}", "exit")
                assert os.WIFSIGNALED(int(status)), f"child {pid} ended before the kill"
                kills += 1
                acked.read(ack)
                lost += _check(memory, acked, caplog)
            documents += acked.documents
    finally:
        server.close()
    figures.record(
        "crash", kills=kills, memories=MEMORIES, documents_acknowledged=documents, lost=lost
    )
    assert kills >= 50
    assert documents > 100  # the kills landed after real work
    assert lost == 0


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_rebuild_index_recovers_a_lost_index_file(memory_dir, damage, capsys) -> None:
    lines = [f"host-{i} kernel: link {i} up\n" for i in range(200)]
    with HybridMemory.open(memory_dir) as mem:
        mem.ingest(lines, scope=SCOPE, name="log")
        expected = set(mem.notepad.sql.all_chunk_ids().tolist())
    index = memory_dir / "notepad.faiss"
    if damage == "delete":
        index.unlink()
    else:
        index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    with pytest.raises(IndexCorruptedError, match="memsdk rebuild-index --memory"):
        HybridMemory.open(memory_dir)
    assert cli_main(["rebuild-index", "--memory", str(memory_dir)]) == 0
    with HybridMemory.open(memory_dir) as mem:
        mem.flush()  # chunks still without a vector at the close are embedded after the open
        assert set(mem.notepad.index.ids().tolist()) == expected
        assert "host-17 kernel" in mem.search("host-17", scope=SCOPE, k=1)[0].text


# Opens the memory, then deletes the victim's scope and kills itself with SIGKILL as soon as the
# SQL transaction of the delete has committed: before the index, weights or router are touched.
KILL_AFTER_DELETE_COMMIT = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.orm import Session
from memsdk import HybridMemory, Scope

mem = HybridMemory.open(sys.argv[1])
write_engine = mem.notepad.sql._write_engine

@event.listens_for(Session, "after_commit")
def die(session):
    if session.get_bind() is write_engine:
        os.kill(os.getpid(), signal.SIGKILL)

mem.delete_all(scope=Scope(tenant="victim"))
"""


def test_sigkill_right_after_delete_all_commits_still_resets_the_weights(tmp_path, figures):
    """A delete_all killed after its SQL commit: the next open finishes the reset it owed,
    so the victim's weights complete and score like an empty scope's, and its router policy
    file is gone."""
    memory = tmp_path / "m"
    victim, bystander, empty = Scope(tenant="victim"), Scope(tenant="bystander"), Scope(tenant="x")
    secret = "".join(f"victim card {1900 + n}: PIN {79900 + n} expires 0/29\n" for n in range(60))
    with HybridMemory.open(memory) as mem:
        mem.add(secret, scope=victim)
        mem.add("bystander notes: the VPN drops after sleep\n" * 3, scope=bystander)
        mem.flush()
    with HybridMemory.open(memory) as mem:  # the weights as saved (4-bit deltas)
        victim_id = mem.notepad.sql.find_scope(victim.key())
        RouterPolicies(memory).write(
            victim_id, (Path(memsdk.__file__).parent / "router_default.json").read_bytes()
        )
        learned = mem.bits_per_byte(secret, scope=victim)
        blank = mem.bits_per_byte(secret, scope=empty)
        assert learned < 0.8 * blank  # the weights did learn the secret
        kept = mem.bits_per_byte("bystander notes: the VPN", scope=bystander)
    child = subprocess.run(
        [sys.executable, "-P", "-c", KILL_AFTER_DELETE_COMMIT, str(memory)],
        capture_output=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    with HybridMemory.open(memory) as mem:
        mem.flush()
        assert mem.get_all(scope=victim) == []
        after = mem.bits_per_byte(secret, scope=victim)
        assert after == blank
        prompt = "victim card 1999: PIN"
        assert mem.complete(prompt, scope=victim) == mem.complete(prompt, scope=empty)
        assert not RouterPolicies(memory).path(victim_id).exists()
        assert mem.notepad.sql.owed_resets() == []
        assert mem.bits_per_byte("bystander notes: the VPN", scope=bystander) == kept
    figures.record("delete_all_kill", learned_bits=learned, after_bits=after, blank_bits=blank)
