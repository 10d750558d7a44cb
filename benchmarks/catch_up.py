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

``--real-between A:B`` is for a machine that embeds too slowly to reach a million vectors in the
time at hand (one without bfloat16 instructions embeds about 30 chunks a second): the stage's
vectors are real only while the index holds A to B vectors, and SYNTHETIC elsewhere (clustered
unit vectors as in ``retraining.py``, no forward pass). The index, SQL and the trainings then
do all their work at full size, so the resident memory at the retraining near 800,000 is
measured with the embedder warm and working; the vectors' values (hence recall) mean nothing
outside A:B. The output counts both kinds.

It changes the memory: run it on a copy to keep one with pending vectors.

    cp -r benchmarks/out/notepad-1m benchmarks/out/notepad-1m-vectors
    python benchmarks/catch_up.py --memory benchmarks/out/notepad-1m-vectors   # ~1 h at 1M
    python benchmarks/catch_up.py --memory benchmarks/out/notepad-1m-vectors \
        --real-between 770000:825000                       # real across the retraining only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from json_line import emit
from resident import resident_kb
from retraining import cluster_centres, clustered

from memsdk import HybridMemory, MemoryConfig
from memsdk.stores.embedder import MiniLMEmbedder

logger = logging.getLogger("benchmarks.catch_up")


def _lag(mem: HybridMemory) -> tuple[int, int]:
    """(chunks, bytes) still without a vector, over every scope."""
    lags = [s.vectors_lag for s in mem.stats().scopes if s.vectors_lag is not None]
    return sum(lag.pending_chunks for lag in lags), sum(lag.pending_bytes for lag in lags)


@contextmanager
def mixed_vectors(
    real_between: tuple[int, int], index_size: Callable[[], int]
) -> Iterator[dict[str, int]]:
    """Within it, ``MiniLMEmbedder.embed`` returns SYNTHETIC vectors unless the vector index
    holds ``real_between[0]`` to ``real_between[1]`` vectors. Yields the counts of both."""
    real_embed = MiniLMEmbedder.embed
    counts = {"real": 0, "synthetic": 0}
    rng = np.random.default_rng(0)
    centres = cluster_centres(rng)

    def embed(self: MiniLMEmbedder, texts: Any, **kwargs: Any) -> np.ndarray:
        if real_between[0] <= index_size() < real_between[1]:
            counts["real"] += len(texts)
            return real_embed(self, texts, **kwargs)
        if kwargs.get("between") is not None:
            kwargs["between"]()  # the stage renews its lease and sees a close there
        counts["synthetic"] += len(texts)
        return clustered(rng, centres, len(texts))

    MiniLMEmbedder.embed = embed  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        MiniLMEmbedder.embed = real_embed  # type: ignore[method-assign]


def catch_up(memory: Path, poll_s: float, real_between: tuple[int, int] | None = None) -> dict:
    if real_between is None:
        return _catch_up(memory, poll_s) | {"vectors": "real"}
    opened: list[HybridMemory] = []

    def index_size() -> int:
        return len(opened[0].notepad.index) if opened else 0

    with mixed_vectors(real_between, index_size) as counts:
        out = _catch_up(memory, poll_s, opened)
    del out["vectors_mb_per_s"], out["vectors_chunks_per_s"]  # mostly no forward pass
    return out | {
        "vectors": f"real while the index held {real_between[0]} to {real_between[1]}, "
        "SYNTHETIC elsewhere",
        "embedded_real": counts["real"],
        "embedded_synthetic": counts["synthetic"],
    }


def _catch_up(memory: Path, poll_s: float, opened: list[HybridMemory] | None = None) -> dict:
    started = time.perf_counter()
    with HybridMemory.open(memory, config=MemoryConfig(weight_memory=False)) as mem:
        if opened is not None:
            opened.append(mem)
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
                    "vectors": len(mem.notepad.index),
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
    parser.add_argument(
        "--real-between",
        metavar="A:B",
        help="real vectors only while the index holds A to B vectors, SYNTHETIC elsewhere",
    )
    args = parser.parse_args(argv)
    if not (args.memory / "manifest.json").is_file():
        parser.error(f"{args.memory} is not a memory directory (it has no manifest.json)")
    real_between = None
    if args.real_between is not None:
        try:
            low, high = (int(x) for x in args.real_between.split(":"))
        except ValueError:
            parser.error(f"--real-between takes A:B, two vector counts; got {args.real_between!r}")
        if not 0 <= low < high:
            parser.error(f"--real-between needs 0 <= A < B; got {args.real_between!r}")
        real_between = (low, high)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    emit(catch_up(args.memory, args.poll_s, real_between), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
