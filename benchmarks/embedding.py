"""Embedding throughput of stored chunks, in float32 and in bfloat16, on real text.

The embedding stage computes a vector for every stored chunk; on a CPU its speed is the
encoder's matrix products. This measures :meth:`MiniLMEmbedder.embed` on the chunks `ingest`
makes (the default chunk size) of:

- logs: the Loghub 2k-line samples of ``../shared/data/loghub``, every system, the first
  ``--log-kb`` of each; also with template-shared vectors (``memsdk/templates.py``), as the
  embedding stage runs on logs;
- prose and code: every ``--every``-th file of the standard library and ``/usr/share/doc``
  (the notepad benchmark's plan), up to ``--prose-kb``.

For each precision: kB/s and tokens/s, and for bfloat16 the cosine of each vector to the
float32 one (the issue's bound is 0.99 on real chunks). One JSON line on stdout; also written
to ``--out``.

    python benchmarks/embedding.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from json_line import emit
from notepad_corpus import prose_sources
from notepad_report import load_average, machine_info

from memsdk import MemoryConfig
from memsdk.chunking import chunk_stream, decode_chunk
from memsdk.stores.embedder import MiniLMEmbedder, native_bfloat16
from memsdk.templates import TemplateVectors

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def chunks_of(data: bytes) -> list[str]:
    """``data`` cut as ``ingest`` cuts it, each chunk as the text the stage embeds."""
    config = MemoryConfig()
    raw = chunk_stream([data], chunk_bytes=config.chunk_bytes, max_line_bytes=config.max_line_bytes)
    return [decode_chunk(c.data)[0] for c in raw]


def corpus(shared: Path, log_kb: int, prose_kb: int, every: int) -> dict[str, list[str]]:
    logs = []
    for path in sorted((shared / "data" / "loghub").glob("*/*_2k.log")):
        logs += chunks_of(path.read_bytes()[: log_kb * 1024])
    prose: list[str] = []
    size = 0
    for source in prose_sources()[::every]:
        if size >= prose_kb * 1024:
            break
        data = source.path.read_bytes()[: 64 * 1024]
        prose += chunks_of(data)
        size += len(data)
    return {"logs": logs, "prose_code": prose}


def nbytes(texts: list[str]) -> int:
    return sum(len(t.encode()) for t in texts)


def timed(embed: Any, texts: list[str], *, warm: bool = True) -> tuple[np.ndarray, float]:
    if warm:
        embed(texts[:16])  # the kernels' first call
    started = time.perf_counter()
    vectors = embed(texts)
    return vectors, time.perf_counter() - started


def measure(embedder: MiniLMEmbedder, texts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    vectors, seconds = timed(embedder.embed, texts)
    tokens = sum(min(embedder.count_tokens(t), embedder.max_tokens) for t in texts)
    return vectors, {
        "seconds": round(seconds, 2),
        "kB_per_s": round(nbytes(texts) / seconds / 1e3, 1),
        "tokens_per_s": round(tokens / seconds),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    texts = corpus(args.shared, args.log_kb, args.prose_kb, args.every)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "native_bfloat16": native_bfloat16(),
        "corpus": {kind: {"chunks": len(t), "bytes": nbytes(t)} for kind, t in texts.items()},
        "precisions": {},
    }
    reference: dict[str, np.ndarray] = {}
    for precision in ("float32", "bfloat16"):
        embedder = MiniLMEmbedder(precision=precision)
        row: dict[str, Any] = {}
        for kind, chunks in texts.items():
            vectors, row[kind] = measure(embedder, chunks)
            if precision == "float32":
                reference[kind] = vectors
            else:
                cosine = (vectors * reference[kind]).sum(axis=1)
                row[kind]["cosine_to_float32"] = {
                    "min": round(float(cosine.min()), 6),
                    "p1": round(float(np.percentile(cosine, 1)), 6),
                    "mean": round(float(cosine.mean()), 6),
                }
        shared = TemplateVectors(embedder.embed)
        _, seconds = timed(shared.vectors, texts["logs"], warm=False)  # warm already
        row["logs_templates_shared"] = {
            "seconds": round(seconds, 2),
            "kB_per_s": round(nbytes(texts["logs"]) / seconds / 1e3, 1),
            "embedded_share": round(shared.embedded / max(shared.chunks, 1), 3),
        }
        result["precisions"][precision] = row
    result["load_average_at_end"] = load_average()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--log-kb", type=int, default=128, help="KB of each Loghub sample")
    parser.add_argument("--prose-kb", type=int, default=1024, help="KB of prose and code")
    parser.add_argument("--every", type=int, default=40, help="take every n-th prose file")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "out" / "embedding.json"
    )
    args = parser.parse_args()
    result = run(args)
    emit(result, args.out)


if __name__ == "__main__":
    main()
