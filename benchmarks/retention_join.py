"""The joining rule of the slots method (:mod:`memsdk.retention`), measured on development text.

A new source joins a trained slot only when the slot spends at least ``JOIN_SAVING`` fewer
bits than fresh weights on the source's first chunk. This script shows what share a slot
saves, on text the model trained on only (never the held-out sources the retention benchmark
scores):

- ``same source``: a Loghub development system's later part after its head (the next file of
  a rotated log), which should join;
- ``same kind``: another Loghub development system (a log of another program), which should
  take a slot of its own, since a shared slot lets the newer source overwrite the older;
- ``other kind``: training-side prose and code (``memsdk.engine.corpus.split_files``) after a
  log, or a log after them, which should take a slot of its own.

Each source's head (``--head-bytes``) is absorbed into a slot of its own in 8 kB batches, as
the consolidator absorbs; then each probe's first chunk is scored by that slot in a fresh
window, and against fresh weights. One JSON line goes to stdout: every saving, and per group its
minimum and maximum. Fresh weights already know development text well, so even a source's own
later part is saved little on it (the rule cannot be calibrated on "same source" here); what it
shows is how little a slot saves on another source's text, the side a wrong join harms.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/retention_join.py
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
from pathlib import Path

import torch

from memsdk.engine import TTTState, load_model
from memsdk.engine.corpus import HELDOUT_SYSTEMS, split_files
from memsdk.retention import JOIN_SAVING, MemoryHistory, RetentionConfig, absorb, join_savings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
PROSE = ("man", "python-doc", "stdlib", "linux-doc")


def _read(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        return (gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f).read(size)


def _from_line(data: bytes, start: int) -> bytes:
    """``data`` from the first whole line at or after ``start``."""
    return data[data.index(b"\n", start) + 1 :] if start else data


def development(shared: Path, size: int) -> dict[str, bytes]:
    """Name -> ``size`` bytes of each development source: the Loghub systems the model trained
    on, and the training side of each prose and code source (files in hash order)."""
    out = {}
    for path in sorted((shared / "data" / "loghub").glob("*/*_2k.log")):
        if path.parent.name not in HELDOUT_SYSTEMS:
            out[f"log/{path.parent.name}"] = path.read_bytes()[:size]
    train = split_files(shared).train
    for source in PROSE:
        files = sorted(
            (f for f in train if f.source == source),
            key=lambda f: hashlib.sha256(f.name.encode()).digest(),
        )
        parts, have = [], 0
        for corpus_file in files:
            if have >= size:
                break
            parts.append(_read(corpus_file.path, size))
            have += len(parts[-1])
        if have >= size:
            out[f"{source}/train"] = b"".join(parts)[:size]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--head-bytes", type=int, default=24576)
    parser.add_argument(
        "--later-at", type=int, default=65536, help="where a log's later part starts"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, _, _ = load_model("default")
    size = args.later_at + 8192
    texts = development(args.shared, size)
    chunk = model.default_ttt.chunk_bytes
    firsts = {name: data[:chunk] for name, data in texts.items()}
    groups: dict[str, dict[str, float]] = {"same source": {}, "same kind": {}, "other kind": {}}
    config = RetentionConfig(method="slots")
    for name, data in texts.items():
        state = TTTState(model, model.default_ttt)
        head = data[: args.head_bytes]
        for start in range(0, len(head), 8192):
            absorb(
                state,
                head[start : start + 8192],
                history=MemoryHistory(),
                config=config,
                rng=random.Random(0),
                source=name,
            )
        probes = dict(firsts)
        probes[name] = None
        if name.startswith("log/") and len(data) > args.later_at:
            probes[name] = _from_line(data, args.later_at)[:chunk]
        for probe, first in probes.items():
            if first is None:
                continue
            if probe == name:
                group = "same source"
            elif probe.startswith("log/") and name.startswith("log/"):
                group = "same kind"
            else:
                group = "other kind"
            groups[group][f"{probe} after {name}"] = join_savings(state, first, [0])[0]
        print(
            name,
            {g: round(min(v.values(), default=0), 2) for g, v in groups.items()},
            file=sys.stderr,
        )
    record = {
        "benchmark": "retention_join",
        "join_saving": JOIN_SAVING,
        "head_bytes": args.head_bytes,
        "sources": list(texts),
        "groups": {
            g: {"min": min(v.values()), "max": max(v.values()), "savings": v}
            for g, v in groups.items()
            if v
        },
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
