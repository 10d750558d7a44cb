"""Memory of the vector index's background trainings: the switch from flat to IVF, and the
retraining of an IVF grown past 4 times its training size, as the product runs them.

The vectors are SYNTHETIC: 4,000 Gaussian cluster centres in 384 dimensions, each vector a
centre plus noise (sigma 0.6 per dimension), renormalised; seeded. Their recall says little (see
``vector_index.py`` for real vectors); the point is what the process holds. The index is filled
in batches of 8,192 through ``VectorIndex.add``: the batch that crosses the threshold starts
the first training, the one that crosses 4 times its size the retraining, and each is timed
from that add until the new index is in use. For each: the vectors held, the process's
resident memory just before, how far it rose above that at its peak (``VmHWM``, reset through
``/proc/self/clear_refs``) and where it ended.

One JSON line goes to stdout, progress to stderr; ``--out`` also receives the JSON.

Usage::

    python benchmarks/retraining.py                    # 860,000 vectors, ~9 min on 2 cores
    python benchmarks/retraining.py --vectors 300000 --threshold 50000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from json_line import emit
from resident import peak_above_start, resident_kb

from memsdk.stores.vector_index import VectorIndex

logger = logging.getLogger("benchmarks.retraining")

DIM = 384
BATCH = 8192
SEED = 0


def cluster_centres(rng: np.random.Generator) -> np.ndarray:
    """The 4,000 Gaussian centres of the synthetic vectors."""
    return rng.standard_normal((4000, DIM)).astype(np.float32)


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """(n, DIM) synthetic unit vectors: each a random centre plus noise (sigma 0.6)."""
    rows = centres[rng.integers(0, len(centres), n)]
    rows = rows + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def batches(total: int) -> Any:
    """(ids, vectors) batches of the synthetic vectors, ids 0..total-1."""
    rng = np.random.default_rng(SEED)
    centres = cluster_centres(rng)
    for at in range(0, total, BATCH):
        n = min(BATCH, total - at)
        yield np.arange(at, at + n, dtype=np.int64), clustered(rng, centres, n)


def run(total: int, threshold: int) -> list[dict[str, Any]]:
    index = VectorIndex(DIM, ivf_threshold=threshold)
    trainings = []
    for ids, vectors in batches(total):

        def add_and_wait(ids: np.ndarray = ids, vectors: np.ndarray = vectors) -> None:
            index.add(ids, vectors)
            index.wait_for_layout()

        layout, trained_on = index.kind, index.trained_on
        before_mb = resident_kb()["VmRSS"] // 1024
        _, memory = peak_above_start(add_and_wait)
        if index.trained_on != trained_on:
            trainings.append(
                {
                    "from": layout,
                    "vectors": index.trained_on,
                    "s": memory["s"],
                    "rss_before_mb": before_mb,
                    "peak_rss_above_start_mb": memory["peak_rss_above_start_mb"],
                    "rss_above_start_at_end_mb": memory["rss_above_start_at_end_mb"],
                    "nlist": index.nlist,
                    "nprobe": index.nprobe,
                    "recall_at_training": round(index.recall, 4),
                }
            )
            logger.info("%s", json.dumps(trainings[-1]))
    return trainings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=860_000, help="vectors added in all")
    parser.add_argument(
        "--threshold", type=int, default=200_000, help="the flat index's IVF threshold"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    if args.vectors <= 4 * (args.threshold + BATCH):
        parser.error("--vectors must exceed 4 times --threshold (plus a batch) to retrain")
    started = time.perf_counter()
    trainings = run(args.vectors, args.threshold)
    result = {
        "benchmark": "retraining",
        "source": "SYNTHETIC: clustered Gaussian vectors (4,000 centres, sigma 0.6), renormalised",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vectors": args.vectors,
        "threshold": args.threshold,
        "trainings": trainings,
        "total_s": round(time.perf_counter() - started, 1),
        "faiss": faiss.__version__,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
