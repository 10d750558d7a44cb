"""Open time and memory of a memory holding many scopes (tenants), each with absorbed weights.

Builds a memory of ``--scopes`` scopes, each with one chunk in SQL and a saved weight delta
(one real delta, trained once through the API and hard-linked for every scope: the cost of
loading a state does not depend on what it holds), then, in a fresh process, opens it and measures:
the open time, the resident memory after open and after an idle poll and a flush (which look
at every scope), and after using one scope. Prints one JSON line.

Before states were loaded lazily, opening materialised every scope's state: 1.7 s and 622 MB
at 300 scopes, 10.4 s and 1,552 MB at 1,500. The figures are also merged into
``benchmarks/out/reliability.json`` (group ``scopes_10k``) for ``scripts/reliability_table.py``.

Usage::

    python -P benchmarks/scopes.py --scopes 10000 [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "out" / "reliability.json"

MEASURE = """
import json, resource, sys, time
started = time.perf_counter()
from memsdk import HybridMemory, Scope
imported = time.perf_counter()

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

before = rss_mb()
t = time.perf_counter()
mem = HybridMemory.open(sys.argv[1])
open_s = time.perf_counter() - t
after_open = rss_mb()
time.sleep(2 * mem.weights.poll_interval_s)  # the worker's first poll and an idle one
t = time.perf_counter()
mem.flush()
flush_s = time.perf_counter() - t
after_flush = rss_mb()
mem.bits_per_byte("tenant 7 note", scope=Scope(tenant="tenant-7"))
after_use = rss_mb()
loaded = len(mem.weights.loaded_scopes())
mem.close()
print(json.dumps({
    "import_s": round(imported - started, 2), "open_s": round(open_s, 3),
    "flush_s": round(flush_s, 2), "rss_before_open_mb": round(before),
    "rss_after_open_mb": round(after_open), "rss_after_flush_mb": round(after_flush),
    "rss_after_one_scope_mb": round(after_use), "loaded_states": loaded,
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
}))
"""


def build(path: Path, scopes: int) -> None:
    """A memory of ``scopes`` scopes, one chunk each, each with a copy of one real delta."""
    from memsdk import HybridMemory, Scope
    from memsdk.engine import make_delta
    from memsdk.stores.sql_records import NewChunk

    with HybridMemory.open(path) as mem:
        mem.add("tenant 0 note: the weight memory of every tenant", scope=Scope(tenant="tenant-0"))
        mem.flush()
        vector = mem.embedder.embed(["a tenant note"])[0]
        sql = mem.notepad.sql
        for i in range(1, scopes):
            scope_id = sql.ensure_scope(Scope(tenant=f"tenant-{i}").key())
            text = f"tenant {i} note"
            digest = hashlib.sha256(text.encode()).hexdigest()
            sql.insert_chunks(
                scope_id, None, [NewChunk(0, 0, len(text), text, None, digest, {}, vector)]
            )
        mem.notepad.sync()
        first = sql.find_scope(Scope(tenant="tenant-0").key())
        newest_ids = sql.newest_chunk_ids()
        newest = max(newest_ids.values())
        # The one trained delta, with a through_chunk_id past every chunk: every scope holds
        # absorbed weights and nothing is left to absorb.
        state = mem.weights.state(first)
        state.extra["through_chunk_id"] = str(newest)
        labels = {"version": "1", "parent": "0"}
        data = make_delta(state, state.initial_weights(), labels=labels)
    # Hard links of one file: the disk holds one delta, each scope its own directory entry.
    deltas_dir = path / "weights"
    source = path.parent / f"{path.name}-delta.safetensors"  # outside the memory
    source.write_bytes(data)
    for scope_id in newest_ids:
        folder = deltas_dir / f"scope-{scope_id}"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("delta-*.safetensors"):
            old.unlink()
        os.link(source, folder / "delta-000001.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scopes", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, help="where to build the memory (default: a temp dir)")
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="memsdk-scopes-"))
    path = root / f"memory-{args.scopes}"
    started = time.perf_counter()
    if not path.exists():
        build(path, args.scopes)
    built_s = time.perf_counter() - started
    done = subprocess.run(
        [sys.executable, "-P", "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )
    if done.returncode:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    figures = {"scopes": args.scopes, **json.loads(done.stdout.strip().splitlines()[-1])}
    print(json.dumps({"build_s": round(built_s, 1), **figures}))
    _record(figures)
    return 0


def _record(figures: dict[str, object]) -> None:
    """Merge the figures into the reliability figures file (atomically)."""
    try:
        merged = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        merged = {}
    merged["scopes_10k"] = {
        **figures,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    tmp = FIGURES.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, FIGURES)


if __name__ == "__main__":
    sys.exit(main())
