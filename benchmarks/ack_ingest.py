"""Acknowledged ingest of real logs: how fast `ingest` returns, and when exact search finds it.

`HybridMemory.ingest` returns once SQL holds each batch with its full-text entry; the vectors
(the background embedding stage) and the weight memory follow. This measures, on a fresh
memory with the embedded defaults (SQLite, FAISS):

- the acknowledged rate: bytes of real Loghub logs (four systems' samples, after any replayed
  logs or prose and code the options add) over the wall time of the `ingest` calls, with the
  stages running behind it on the same cores;
- the delay until an exact search finds an identifier from the last lines ingested;
- with `--catch-up`, the time until each stage (vectors, weights) has nothing left, polled
  through `stats()`: the stages' own pace, which is the lag they report at this volume;
- with `--weights-alone`, the weight memory's pace on its own: the same logs ingested with the
  weight memory off and every vector stored, then the memory reopened with it and flushed (a
  busy scope's lag once its vectors are in).

    python benchmarks/ack_ingest.py                     # weights on and off, ~1 MB of logs
    python benchmarks/ack_ingest.py --catch-up          # also waits for the stages (minutes)
    python benchmarks/ack_ingest.py --weights-alone --weight-memory off   # ~3 min
    python benchmarks/ack_ingest.py --catch-up --replay-mb 100 --weight-memory off
        # 100 MB of SYNTHETIC replayed logs (notepad_corpus.py) before the four, ~25 min
    python benchmarks/ack_ingest.py --catch-up --prose-mb 20 --weight-memory off
        # the first 20 MB of the standard library's code and text before them, ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import tempfile
import time
from pathlib import Path

from notepad_corpus import prose_sources, replay_sources

from memsdk import HybridMemory, MemoryConfig, Scope

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SYSTEMS = ("HDFS", "BGL", "Linux", "Mac")  # four systems' 2k-line samples, about 1.1 MB
BLOCK_ID = re.compile(rb"blk_-?\d+")
SCOPE = Scope(tenant="ack", user="logs")


def corpus(shared: Path, replay_mb: int, prose_mb: int) -> tuple[list[tuple[str, bytes]], int]:
    """(name, bytes) of every file in ingest order, the four samples last; the bytes of prose
    and code among them."""
    files = [(s, (shared / "data/loghub" / s / f"{s}_2k.log").read_bytes()) for s in SYSTEMS]
    for source in replay_sources(shared, replay_mb):  # ingested first: the needle stays last
        source.materialise()
        files.insert(-len(SYSTEMS), (source.path.name, source.path.read_bytes()))
    prose = 0
    for source in prose_sources():
        if prose >= prose_mb * 1_000_000:
            break
        data = source.path.read_bytes()
        files.insert(-len(SYSTEMS), (str(source.path), data))
        prose += len(data)
    return files, prose


def ingest_all(mem: HybridMemory, files: list[tuple[str, bytes]]) -> None:
    for name, data in files:
        mem.ingest([data], scope=SCOPE, name=name if name not in SYSTEMS else f"{name}_2k.log")


def run(shared: Path, weights: bool, catch_up: bool, replay_mb: int = 0, prose_mb: int = 0) -> dict:
    files, prose = corpus(shared, replay_mb, prose_mb)
    # An identifier from the last HDFS lines: exact search must find it once acknowledged.
    needle = BLOCK_ID.findall(dict(files)["HDFS"][-2000:])[-1].decode()
    total = sum(len(data) for _, data in files)
    config = MemoryConfig(weight_memory=weights)
    with tempfile.TemporaryDirectory() as folder, HybridMemory.open(folder, config=config) as mem:
        started = time.perf_counter()
        ingest_all(mem, files)
        acknowledged = time.perf_counter() - started
        hits = mem.search(needle, scope=SCOPE, k=1)
        found = time.perf_counter() - started - acknowledged
        result = {
            "weight_memory": weights,
            "replayed_mb": replay_mb,
            "prose_and_code_bytes": prose,
            "bytes": total,
            "acknowledged_s": round(acknowledged, 3),
            "acknowledged_mb_per_s": round(total / acknowledged / 1e6, 3),
            "needle": needle,
            "needle_found": bool(hits) and needle in hits[0].text,
            "needle_search_s": round(found, 3),
            "needle_vector_pending": bool(hits) and hits[0].vector_pending,
            "scope_vectors_pending_at_search": hits[0].vectors_pending if hits else None,
        }
        if catch_up:
            result |= catch_up_times(mem, started)
    # The process's peak so far: with --weight-memory both, the second run's includes the first's.
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def weights_alone(shared: Path, replay_mb: int = 0, prose_mb: int = 0) -> dict:
    """Seconds the weight memory takes to absorb the corpus with the cores to itself: ingested
    with the weight memory off and every vector stored, then reopened with it (the default
    config) and flushed, timed from the open."""
    files, _ = corpus(shared, replay_mb, prose_mb)
    total = sum(len(data) for _, data in files)
    with tempfile.TemporaryDirectory() as folder:
        with HybridMemory.open(folder, config=MemoryConfig(weight_memory=False)) as mem:
            ingest_all(mem, files)
            mem.flush()
        started = time.perf_counter()
        with HybridMemory.open(folder) as mem:
            mem.flush()
            seconds = time.perf_counter() - started
    return {
        "bytes": total,
        "weights_alone_s": round(seconds, 1),
        "weights_alone_kb_per_s": round(total / seconds / 1e3, 1),
    }


def catch_up_times(mem: HybridMemory, started: float) -> dict:
    """Seconds from the first ingest until each stage had nothing left (polled through
    ``stats()`` every half second), with the stage's rate over the ingested bytes."""
    done: dict[str, float | None] = {}
    while True:
        (scope,) = mem.stats().scopes  # the benchmark's one scope
        now = time.perf_counter() - started
        lags = {"vectors": scope.vectors_lag, "weights": scope.weights_lag}
        for stage, lag in lags.items():
            if stage not in done and (lag is None or lag.pending_chunks == 0):
                done[stage] = None if lag is None else now  # None: no such stage
        if len(done) == len(lags):
            break
        time.sleep(0.5)
    mem.flush()
    return {
        f"{stage}_caught_up_s": None if seconds is None else round(seconds, 1)
        for stage, seconds in done.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--catch-up", action="store_true", help="also time flush()")
    parser.add_argument(
        "--weights-alone",
        action="store_true",
        help="also time the weight memory absorbing the corpus after its vectors (see above)",
    )
    parser.add_argument(
        "--replay-mb",
        type=int,
        default=0,
        help="MB of SYNTHETIC replayed logs (notepad_corpus.py, written under "
        "benchmarks/out/log-replay on first use) ingested before the four samples (default: 0)",
    )
    parser.add_argument(
        "--prose-mb",
        type=int,
        default=0,
        help="MB of the standard library's code and text (then /usr/share/doc), in "
        "notepad.py's order, ingested before the four samples (default: 0)",
    )
    parser.add_argument(
        "--weight-memory",
        choices=("both", "off", "on"),
        default="both",
        help="run without the weight memory, with it, or both (default: both)",
    )
    args = parser.parse_args(argv)
    choices = {"both": (False, True), "off": (False,), "on": (True,)}[args.weight_memory]
    runs = [
        run(args.shared, weights, args.catch_up, args.replay_mb, args.prose_mb)
        for weights in choices
    ]
    print(
        json.dumps(
            {
                "benchmark": "acknowledged ingest",
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "runs": runs,
                "weights_alone": (
                    weights_alone(args.shared, args.replay_mb, args.prose_mb)
                    if args.weights_alone
                    else None
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
