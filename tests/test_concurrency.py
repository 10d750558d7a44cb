"""Concurrency: threads of one process and a second process write to and query one memory at
the same time, for a bounded time (on SQLite, and on one PostgreSQL server when the suite has
one). Nothing is lost or stored twice, every query answers, no
writer fails on SQLite's lock, and the scope's weight memory, trained by whichever process holds
its lease, ends up as one consistent lineage: every chunk absorbed once, in id order."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.engine import TTTState, bits_per_byte, load_model, stream
from memsdk.engine.model import START_BYTE

SHARED_SCOPE = Scope(tenant="acme", user="shared")
SECONDS = 6.0
WRITERS, READERS = 3, 2
PROBE = "".join(f"node-{i % 7} kernel: tun{i % 3} state {i * 37 % 101}\n" for i in range(40))

OTHER_PROCESS = """
import json, sys, time
from memsdk import HybridMemory, MemoryConfig, Scope
path, probe, url = sys.argv[1], sys.argv[4], sys.argv[5]
seconds, extra = float(sys.argv[2]), float(sys.argv[3])
shared, own = Scope(tenant="acme", user="shared"), Scope(tenant="acme", user="process-2")
acked, answered, errors = [], 0, []
config = MemoryConfig(weights_save_interval_s=0.5, database_url=url)
with HybridMemory.open(path, config=config) as mem:
    print("ready", flush=True)
    started, i = time.monotonic(), 0
    while time.monotonic() < started + seconds + extra:
        alone = time.monotonic() > started + seconds  # the first process has closed
        try:
            for scope in (shared,) if alone else (shared, own):
                text = f"p2-{i} node-{i % 7} kernel: tun{i % 3} state {i * 37 % 101} from p2\\n"
                acked.append([scope.user, mem.add(text, scope=scope).ids, text])
            mem.search(f"p2-{i // 2}", scope=shared, k=3)
            answered += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        i += 1
    mem.flush()
    in_memory = mem.bits_per_byte(probe, scope=shared)
print(json.dumps({"acked": acked, "answered": answered, "errors": errors, "bits": in_memory}))
"""


def _line(worker: str, i: int) -> str:
    return f"{worker}-{i} node-{i % 7} kernel: tun{i % 3} state {i * 37 % 101} from {worker}\n"


@pytest.mark.slow
def test_threads_and_a_second_process_share_one_memory(
    memory_dir, figures, database, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="memsdk")  # take-overs and rebuilds, for a failure
    config = MemoryConfig(weights_save_interval_s=0.5)
    errors: list[str] = []
    acked: list[tuple[str, list[int], str]] = []  # (scope user, ids, text)
    queries = Counter()
    with HybridMemory.open(memory_dir, config=config) as mem:
        # A first delta on disk: the other process's session builds on it, so a save that
        # ignored the lease would pull the chain's base from under the other process.
        acked.append(("shared", mem.add(_line("w0", -1), scope=SHARED_SCOPE).ids, _line("w0", -1)))
        mem.flush()
        url = mem.notepad.sql.url  # SQLite, or the PostgreSQL database both processes share
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER_PROCESS, str(memory_dir), str(SECONDS), "3", PROBE, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + SECONDS
        lock = threading.Lock()

        def write(worker: str) -> None:
            own = Scope(tenant="acme", user=worker)
            i = 0
            while time.monotonic() < deadline:
                try:
                    for scope in (SHARED_SCOPE, own):
                        text = _line(worker, i)
                        ids = mem.add(text, scope=scope).ids
                        with lock:
                            acked.append((scope.user or "", ids, text))
                except Exception as exc:
                    with lock:
                        errors.append(f"{worker}: {type(exc).__name__}: {exc}")
                i += 1

        def read(reader: str) -> None:
            i = 0
            while time.monotonic() < deadline:
                try:
                    mem.search(f"w0-{i} state", scope=SHARED_SCOPE, k=5)
                    mem.get_all(scope=SHARED_SCOPE, limit=20)
                    answer = mem.query("node-3 kernel: tun0", scope=SHARED_SCOPE, max_bytes=8)
                    assert answer.route.reason
                    with lock:
                        queries["answered"] += 3
                except Exception as exc:
                    with lock:
                        errors.append(f"{reader}: {type(exc).__name__}: {exc}")
                i += 1

        threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(WRITERS)]
        threads += [threading.Thread(target=read, args=(f"r{n}",)) for n in range(READERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # Closed while the other process goes on writing to the shared scope, takes the scope's
    # lease, absorbs everything and saves last.
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    acked += [tuple(row) for row in result["acked"]]
    errors += result["errors"]
    queries["answered"] += result["answered"]
    assert not errors, errors[:5]

    with HybridMemory.open(memory_dir) as mem:
        # Every acknowledged write is stored exactly once, in its own scope.
        for user in {user for user, _, _ in acked}:
            scope = Scope(tenant="acme", user=user)
            stored = [item.text for item in mem.get_all(scope=scope, limit=100_000)]
            assert sorted(stored) == sorted(text for u, _, text in acked if u == user), user
        ids = [i for _, row_ids, _ in acked for i in row_ids]
        assert len(ids) == len(set(ids))
        assert set(mem.notepad.sql.all_chunk_ids().tolist()) == set(
            mem.notepad.index.ids().tolist()
        )
        (shared,) = [s for s in mem.stats().scopes if s.scope == SHARED_SCOPE]
        assert shared.weights.bytes_absorbed == shared.bytes
        assert shared.weights.through_chunk_id == max(
            i for u, row_ids, _ in acked if u == "shared" for i in row_ids
        )
        on_disk = mem.bits_per_byte(PROBE, scope=SHARED_SCOPE)
        shared_id = mem.notepad.sql.find_scope(SHARED_SCOPE.key())
        chunks = [data for _, data in mem.notepad.sql.chunk_bytes_after(shared_id, 0, 10**6)]
        newest = b"".join(chunks[-4:]).decode()  # what the weights learned last
        lineage = mem.bits_per_byte(newest, scope=SHARED_SCOPE)
        # The window saved with the weights holds the input bytes of the newest chunks
        # absorbed: exactly the stream's last bytes, in id order, each once.
        saved = mem.weights.state(shared_id)
        window = saved.recent_inputs
        stream_inputs = (bytes([START_BYTE]) + b"".join(chunks))[:-1]
        assert len(window) == min(len(stream_inputs), load_model()[0].config.window)
        assert window == stream_inputs[-len(window) :]
    # The saved chain merges into what the last holder had in memory (one 4-bit delta apart),
    # and into about what one process streaming every chunk in id order would have learned.
    # Timing sets where the holders' flushes and take-overs fall, and a state read while its
    # chain is being saved over can be rebuilt from the notepad with other chunk boundaries; in a
    # replay such a rebuild put the weights up to 0.19 of the way from that stream to one that
    # absorbed the chunks twice or reversed, and moved bits on the newest lines by 0.1 (0.22 in
    # CI, where the cause was not logged: the warnings of both processes now come with a
    # failure). Absorbing the chunks twice or reversed goes the whole way, and the initial
    # weights are about 3 bits off.
    assert on_disk == pytest.approx(result["bits"], abs=0.02)
    model = load_model()[0]

    def streamed(order: list[bytes]) -> TTTState:
        state = TTTState(model)
        stream(state, order[0], final=True)  # the first flush streamed a short chunk
        stream(state, b"".join(order[1:]), final=True)
        return state

    def along(state: TTTState, start: TTTState, end: TTTState) -> float:
        """Where ``state`` projects on the line from ``start`` (0) to ``end`` (1)."""
        dot = norm = 0.0
        for name, weight in start.fast_weights.items():
            offset = (state.fast_weights[name] - weight).double()
            direction = (end.fast_weights[name] - weight).double()
            dot += float((offset * direction).sum())
            norm += float((direction * direction).sum())
        return dot / norm

    right, initial = streamed(chunks), TTTState(model)
    warnings = [r.getMessage() for r in caplog.records] + err.splitlines()[-20:]
    why = (shared.weights, warnings)
    for text, saved_bits in ((newest, lineage), (PROBE, on_disk)):
        right_bits = bits_per_byte(right, text)
        gap = bits_per_byte(initial, text) - right_bits
        assert abs(saved_bits - right_bits) < 0.25 * gap, why
    for mistake in (chunks + chunks[1:], chunks[:1] + chunks[:0:-1]):  # twice; reversed
        assert abs(along(saved, right, streamed(mistake))) < 0.5, why
    figures.record(
        f"concurrency_{database}",
        threads=WRITERS + READERS,
        processes=2,
        seconds=SECONDS,
        writes=len(acked),
        queries=queries["answered"],
        errors=len(errors),
    )
