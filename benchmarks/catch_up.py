"""Vector catch-up of a large memory: how fast the background embedding stage stores the
vectors of chunks an ingest acknowledged without them, and what the process holds meanwhile.

`notepad.py --vectors pending` builds a memory of a million chunks whose vectors are still
pending (embedding them would have taken the build hours). This opens such a memory with the
embedded defaults (the weight memory off, so the vectors have the cores), lets the stage
work until every vector is stored and the vector index has its final layout (an IVF past
200,000 vectors, trained in the background), closes it (the index is saved), and reports:

- chunks and text bytes embedded, seconds, MB/s and chunks/s;
- the lag over time (``stats()`` polled every ``--poll-s`` seconds) with the process's
  resident memory at each poll, and its peak (``ru_maxrss``);
- the vector index's layout at the end.

It changes the memory: run it on a copy to keep one with pending vectors.

    cp -r benchmarks/out/notepad-1m benchmarks/out/notepad-1m-vectors
    python benchmarks/catch_up.py --memory benchmarks/out/notepad-1m-vectors   # ~1 h at 1M
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from resident import resident_kb

from memsdk import HybridMemory, MemoryConfig

logger = logging.getLogger("benchmarks.catch_up")


def _lag(mem: HybridMemory) -> tuple[int, int]:
    """(chunks, bytes) still without a vector, over every scope."""
    lags = [s.vectors_lag for s in mem.stats().scopes if s.vectors_lag is not None]
    return sum(lag.pending_chunks for lag in lags), sum(lag.pending_bytes for lag in lags)


def catch_up(memory: Path, poll_s: float) -> dict:
    started = time.perf_counter()
    with HybridMemory.open(memory, config=MemoryConfig(weight_memory=False)) as mem:
        opened_s = time.perf_counter() - started
        chunks, size = _lag(mem)
        logger.info("opened in %.1f s: %d chunks (%.1f MB) pending", opened_s, chunks, size / 1e6)
        polls = []
        while True:
            left_chunks, left_bytes = _lag(mem)
            now = time.perf_counter() - started
            polls.append(
                {
                    "s": round(now, 1),
                    "pending_chunks": left_chunks,
                    "pending_mb": round(left_bytes / 1e6, 2),
                    "rss_mb": resident_kb()["VmRSS"] // 1024,
                    "index": mem.notepad.index.kind,
                }
            )
            logger.info("%s", json.dumps(polls[-1]))
            if left_chunks == 0:
                break
            time.sleep(poll_s)
        embedded_s = time.perf_counter() - started
        mem.flush()
        mem.notepad.index.wait_for_layout()
        settled_s = time.perf_counter() - started
        index = mem.notepad.index
        layout = {"kind": index.kind, "vectors": len(index), "nlist": index.nlist}
        layout |= {"nprobe": index.nprobe, "recall_at_training": index.recall}
    closed_s = time.perf_counter() - started
    return {
        "benchmark": "vector catch-up",
        "memory": str(memory),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "open_s": round(opened_s, 1),
        "pending_at_open": {"chunks": chunks, "mb": round(size / 1e6, 2)},
        "every_vector_stored_s": round(embedded_s, 1),
        "vectors_mb_per_s": round(size / 1e6 / embedded_s, 4),
        "vectors_chunks_per_s": round(chunks / embedded_s, 1),
        "index_final_layout_s": round(settled_s, 1),
        "closed_s": round(closed_s, 1),
        "index": layout,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "polls": polls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=Path, required=True, help="the memory to catch up")
    parser.add_argument("--poll-s", type=float, default=30.0, help="seconds between polls")
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    args = parser.parse_args(argv)
    if not (args.memory / "manifest.json").is_file():
        parser.error(f"{args.memory} is not a memory directory (it has no manifest.json)")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    line = json.dumps(catch_up(args.memory, args.poll_s))
    print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
