"""Benchmark of the vector index: flat against IVF, recall@10 and search latency.

Two parts:

- **real**: 512-byte chunks (the product's chunker) of the Loghub logs in ``../shared`` and of
  the Python standard library's ``.py`` files, interleaved in a seeded order and embedded with
  the project's MiniLM embedder for ``--embed-seconds`` of CPU. 200 chunks are held out as
  queries. The IVF index is the one the product builds past its threshold (``nlist`` about
  4*sqrt(n), ``nprobe`` chosen at training time); recall@10 is against the flat index on the
  held-out queries, every id allowed and probing forced (no exact path).
- **synthetic** (``--synthetic-size``, 1M by default): every real vector repeated with small
  Gaussian noise (per-dimension sigma ``--noise``) and renormalised, to time flat against IVF
  at a size whose embeddings would take days to compute here. Its recall is reported too, but
  the near-copies cluster more tightly than real chunks do: the latency is the point.

Latency is of ``VectorIndex.search`` with every id allowed (the bitmap included, as in a
search of a scope holding the whole index), one query at a time, after warm-up; and of a small
scope (1,000 ids) that takes the exact path. The switch is timed as the product runs it: the
call that crosses the threshold (it copies the vectors and starts the background training),
the flat index's search latency while the training runs, and the time until the IVF is in use.
Then the IVF is saved and loaded as a memory's close and open do, each step's time and how far
the process's resident memory rose above where it started (peak, and what stayed: the loaded
copy), beside the file's size.

One JSON line goes to stdout, progress to stderr; ``--out`` also receives the JSON.

Usage::

    python benchmarks/vector_index.py                          # ~15 min on 2 cores
    python benchmarks/vector_index.py --embed-seconds 60 --synthetic-size 200000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from json_line import emit
from resident import peak_above_start

from memsdk.chunking import chunk_stream
from memsdk.stores.embedder import MiniLMEmbedder
from memsdk.stores.vector_index import VectorIndex

logger = logging.getLogger("benchmarks.vector_index")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out" / "vector_index.json"
REAL_CACHE = REPO / "benchmarks" / "out" / "vector_index_real.npz"
K = 10
SEED = 0


def real_chunks(shared: Path, *, chunk_bytes: int = 512) -> list[tuple[str, str]]:
    """(kind, text) chunks of the Loghub logs and the standard library, interleaved."""
    logs = sorted((shared / "data" / "loghub").glob("*/*.log"))
    if not logs:
        sys.exit(f"no Loghub logs under {shared}/data/loghub: pass --shared")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = sorted(
        p
        for p in stdlib.rglob("*.py")
        if not {"site-packages", "dist-packages", "__pycache__"} & set(p.parts)
    )

    def chunks(kind: str, paths: list[Path]) -> list[tuple[str, str]]:
        out = []
        for path in paths:
            blocks = [path.read_bytes()]
            for chunk in chunk_stream(blocks, chunk_bytes=chunk_bytes, max_line_bytes=1 << 16):
                text = chunk.data.decode("utf-8", errors="replace")
                if text.strip():
                    out.append((kind, text))
        return out

    rng = random.Random(SEED)
    log_chunks, code_chunks = chunks("log", logs), chunks("code", code)
    rng.shuffle(log_chunks)
    rng.shuffle(code_chunks)
    mixed = []
    for pair in zip(log_chunks, code_chunks, strict=False):
        mixed.extend(pair)
    return mixed


def embed_for(
    embedder: MiniLMEmbedder, chunks: list[tuple[str, str]], seconds: float
) -> tuple[np.ndarray, list[str], float]:
    """Embed ``chunks`` in order until ``seconds`` have passed; (n, 384), kinds, seconds."""
    vectors, kinds = [], []
    start = time.perf_counter()
    for at in range(0, len(chunks), 256):
        batch = chunks[at : at + 256]
        vectors.append(embedder.embed([text for _, text in batch]))
        kinds += [kind for kind, _ in batch]
        spent = time.perf_counter() - start
        logger.info("embedded %d chunks in %.0f s", len(kinds), spent)
        if spent >= seconds:
            break
    return np.concatenate(vectors), kinds, time.perf_counter() - start


def latency(index: VectorIndex, queries: np.ndarray, allowed: np.ndarray) -> dict[str, Any]:
    for query in queries[:10]:  # warm-up
        index.search(query, k=K, allowed_ids=allowed)
    ms = []
    for query in queries:
        start = time.perf_counter()
        index.search(query, k=K, allowed_ids=allowed)
        ms.append((time.perf_counter() - start) * 1e3)
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "queries": len(ms),
    }


def latency_while_training(
    index: VectorIndex, queries: np.ndarray, allowed: np.ndarray
) -> dict[str, Any]:
    """Search latency of the flat index while the IVF trains behind it, the queries cycled
    one at a time until the new index is swapped in (what a user searching meanwhile sees)."""
    ms = []
    at = 0
    while index.training:
        start = time.perf_counter()
        index.search(queries[at % len(queries)], k=K, allowed_ids=allowed)
        ms.append((time.perf_counter() - start) * 1e3)
        at += 1
    if not ms:
        return {"queries": 0}
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "max_ms": round(float(np.max(ms)), 3),
        "queries": len(ms),
    }


def top_k(index: VectorIndex, queries: np.ndarray, allowed: np.ndarray) -> list[np.ndarray]:
    return [index.search(query, k=K, allowed_ids=allowed)[0] for query in queries]


def recall(
    base: np.ndarray, queries: np.ndarray, exact: list[np.ndarray], got: list[np.ndarray]
) -> float:
    """Recall@10 with ties counted as hits: a result whose float32 vector (row id - 1 of
    ``base``) scores at least the exact 10th best. The IVF holds float16 vectors, so the
    scores it reports are not the bar's."""
    hits = 0
    for query, want, found in zip(queries, exact, got, strict=True):
        bar = float(np.min(base[want - 1] @ query))
        hits += int(np.count_nonzero(base[found - 1] @ query >= bar - 1e-5))
    return round(hits / (K * len(exact)), 4)


def compare(base: np.ndarray, queries: np.ndarray, label: str) -> dict[str, Any]:
    """Flat, then the same index turned IVF: recall of IVF against flat and both latencies."""
    n = len(base)
    ids = np.arange(n, dtype=np.int64) + 1
    index = VectorIndex(base.shape[1], ivf_threshold=n + 1, exact_limit=0)
    for at in range(0, n, 100_000):
        index.add(ids[at : at + 100_000], base[at : at + 100_000])
    scope = np.random.default_rng(SEED).choice(ids, size=min(1000, n), replace=False)
    logger.info("%s: flat index of %d vectors; timing", label, n)
    flat = {"all": latency(index, queries, ids), "scope_1000": latency(index, queries, scope)}
    exact = top_k(index, queries, ids)
    start = time.perf_counter()
    index.ivf_threshold = n - 1

    def switch() -> tuple[float, dict[str, Any]]:
        # What the write that crosses the threshold does: copy the vectors, start the training.
        index.choose_layout()
        crossing_s = time.perf_counter() - start
        during = latency_while_training(index, queries, ids)
        index.wait_for_layout()
        return crossing_s, during

    (crossing_s, during), switch_memory = peak_above_start(switch)
    train_s = time.perf_counter() - start
    logger.info(
        "%s: crossing write %.2f s, IVF in use after %.0f s (nprobe %s/%s), flat search "
        "meanwhile p50 %s ms",
        label,
        crossing_s,
        train_s,
        index.nprobe,
        index.nlist,
        during.get("p50_ms"),
    )
    probed = latency(index, queries, ids)
    got = top_k(index, queries, ids)
    logger.info("%s: IVF timed (p50 %.2f ms)", label, probed["p50_ms"])
    index.exact_limit = 50_000
    ivf = {
        "all": probed,
        "scope_1000_exact_path": latency(index, queries, scope),
        "nlist": index.nlist,
        "nprobe": index.nprobe,
        "recall_measured_at_training": round(index.recall, 4),
        "train_and_switch_s": round(train_s, 1),
        "crossing_write_s": round(crossing_s, 3),
        "flat_search_while_training": during,
        "peak_rss_above_start_during_switch_mb": switch_memory["peak_rss_above_start_mb"],
    }
    with tempfile.TemporaryDirectory(prefix="memsdk-vector-bench-") as tmp:
        ivf["disk"] = save_and_load(index, Path(tmp))
    logger.info("%s: saved and loaded: %s", label, ivf["disk"])
    return {
        "vectors": n,
        "flat": flat,
        "ivf": ivf,
        "recall_at_10_vs_flat": recall(base, queries, exact, got),
    }


def save_and_load(index: VectorIndex, directory: Path) -> dict[str, Any]:
    """The index written to disk and read back as a memory's open does, each step's time and
    resident memory."""
    path = directory / "notepad.faiss"
    index.dirty = True
    _, save = peak_above_start(lambda: index.save(path))
    loaded, load = peak_above_start(
        lambda: VectorIndex.load(path, dim=index.dim, ivf_threshold=index.ivf_threshold)
    )
    file_mb = round(path.stat().st_size / 2**20)
    assert len(loaded) == len(index)
    del loaded
    path.unlink()
    return {"file_mb": file_mb, "save": save, "load": load}


def synthetic(real: np.ndarray, size: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    out = np.empty((size, real.shape[1]), np.float32)
    for at in range(0, size, 100_000):
        rows = real[np.arange(at, min(size, at + 100_000)) % len(real)]
        rows = rows + rng.normal(0, noise, rows.shape).astype(np.float32)
        out[at : at + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--embed-seconds", type=float, default=600)
    parser.add_argument("--synthetic-size", type=int, default=1_000_000)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--reuse-embeddings",
        action="store_true",
        help=f"read the real vectors an earlier run saved in {REAL_CACHE.name}",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    if args.reuse_embeddings and REAL_CACHE.exists():
        # Saved by an earlier run (npy, no pickle): the index side can be rerun without
        # spending the embedding time again.
        with np.load(REAL_CACHE, allow_pickle=False) as saved:
            vectors, kinds = saved["vectors"], saved["kinds"].tolist()
            embed_s = float(saved["embed_s"])
    else:
        embedder = MiniLMEmbedder()
        chunks = real_chunks(args.shared)
        vectors, kinds, embed_s = embed_for(embedder, chunks, args.embed_seconds)
        REAL_CACHE.parent.mkdir(parents=True, exist_ok=True)
        np.savez(REAL_CACHE, vectors=vectors, kinds=np.array(kinds), embed_s=embed_s)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(vectors))
    held, kept = order[: args.queries], np.sort(order[args.queries :])
    queries, base = vectors[held], vectors[kept]
    result: dict[str, Any] = {
        "benchmark": "vector_index",
        "real": {
            "source": "512-byte chunks of ../shared Loghub logs and the Python standard "
            "library, MiniLM embeddings",
            "chunks_embedded": len(vectors),
            "log_chunks": kinds.count("log"),
            "code_chunks": kinds.count("code"),
            "embed_s": round(embed_s, 1),
            "held_out_queries": len(queries),
            **compare(base, queries, "real"),
        },
    }
    if args.synthetic_size:
        noisy = synthetic(base, args.synthetic_size, args.noise)
        result["synthetic"] = {
            "source": f"SYNTHETIC: the real vectors repeated with Gaussian noise (sigma "
            f"{args.noise} per dimension) and renormalised; queries are the held-out real "
            "chunks",
            **compare(noisy, queries, "synthetic"),
        }
    result["machine"] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
