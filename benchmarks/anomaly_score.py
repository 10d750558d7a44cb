"""Which per-line score of the weight memory ranks log alerts best: the choice of `novelty`.

BGL (`../shared/data/loghub/BGL`) is the one log with per-line alert labels. Its 2,000 lines
are split by content into a development part and the issue's held-out protocol:

- development: a scope absorbs lines 500-1,000 (2 alerts), then lines 0-500 (94 alerts) are
  scored;
- held out: a scope absorbs lines 0-1,000, then lines 1,000-2,000 (47 alerts) are scored, as
  in `memory_bench.py` and `retention.py`.

Each candidate turns a line's per-byte bits (one pass of `memsdk.engine.byte_losses`, nothing
learned from the scored text) into one score; the AUROC of each is printed for both parts.
The rule: ship the candidate with the best development AUROC; the held-out figures are
reported, never used to choose.

    python benchmarks/anomaly_score.py     # about a minute
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from memory_bench import DEFAULT_SHARED, auroc

from memsdk import HybridMemory, Scope
from memsdk.engine import byte_losses
from memsdk.files import atomic_write_bytes
from memsdk.reading import letter_mask

DEFAULT_OUT = Path(__file__).with_name("out")
PARTS = {"development": ((500, 1000), (0, 500)), "held_out": ((0, 1000), (1000, 2000))}


def _digits(raw: bytes) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8)
    return (b >= ord("0")) & (b <= ord("9"))


def _top(bits: np.ndarray, n: int) -> float:
    return float(np.sort(bits)[-n:].mean())


def _over(bits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return bits[mask] if mask.any() else bits


# name -> score of one line from (its bits, its initial-weight bits, its bytes)
CANDIDATES: dict[str, Callable[[np.ndarray, np.ndarray, bytes], float]] = {
    "mean over every byte (bits_per_byte)": lambda b, i, r: float(b.mean()),
    "mean over letters (novelty)": lambda b, i, r: float(_over(b, letter_mask(r)).mean()),
    "mean over non-digits": lambda b, i, r: float(_over(b, ~_digits(r)).mean()),
    "bits per word": lambda b, i, r: float(b.sum() / max(1, len(r.split()))),
    "top 8 bytes": lambda b, i, r: _top(b, 8),
    "top 16 bytes": lambda b, i, r: _top(b, 16),
    "top 16 non-digit bytes": lambda b, i, r: _top(_over(b, ~_digits(r)), 16),
    "max byte": lambda b, i, r: float(b.max()),
    "mean minus half the initial weights' mean": lambda b, i, r: float(b.mean() - 0.5 * i.mean()),
}


def line_scores(bits: np.ndarray, initial: np.ndarray, data: bytes) -> dict[str, list[float]]:
    scores: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    start = 0
    for raw in data.splitlines(keepends=True):
        end = start + len(raw)
        for name, score in CANDIDATES.items():
            scores[name].append(score(bits[start:end], initial[start:end], raw))
        start = end
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    folder = args.shared / "data" / "loghub" / "BGL"
    log = (folder / "BGL_2k.log").read_text(encoding="utf-8").splitlines(keepends=True)
    with open(folder / "BGL_2k.log_structured.csv", newline="", encoding="utf-8") as f:
        labels = [row["Label"] != "-" for row in csv.DictReader(f)]
    started = time.perf_counter()
    result: dict = {"benchmark": "anomaly line score (BGL alerts)", "parts": {}}
    with tempfile.TemporaryDirectory() as tmp, HybridMemory.open(tmp) as mem:
        assert mem.weights is not None
        for part, ((a_lo, a_hi), (s_lo, s_hi)) in PARTS.items():
            scope = Scope(tenant="anomaly", user=part)
            mem.ingest(log[a_lo:a_hi], scope=scope, name=f"BGL lines {a_lo}-{a_hi}")
            mem.flush()
            data = "".join(log[s_lo:s_hi]).encode()
            scope_id = mem.notepad.sql.find_scope(scope.key())
            bits = byte_losses(mem.weights.state(scope_id), data).numpy()
            initial = byte_losses(mem.weights.initial_state(), data).numpy()
            scores = line_scores(bits, initial, data)
            result["parts"][part] = {
                "absorbed_lines": [a_lo, a_hi],
                "scored_lines": [s_lo, s_hi],
                "alerts": sum(labels[s_lo:s_hi]),
                "auroc": {n: round(auroc(v, labels[s_lo:s_hi]), 4) for n, v in scores.items()},
            }
    dev = result["parts"]["development"]["auroc"]
    result["chosen"] = max(dev, key=dev.__getitem__)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "anomaly_score.json", json.dumps(result, indent=1).encode())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
