"""Benchmark of the weight memory: does test-time training absorb held-out real streams?

Streams are files the models never trained on (the held-out side of the corpus split in
``memsdk.engine.corpus``): the three held-out Loghub systems (logs), held-out Python standard
library modules (code), held-out Linux and Python documentation and man pages (prose), and
the issue-tracker tickets. Each stream (its first ``--stream-bytes`` bytes) is scored
prequentially, chunk by chunk, score then update, by:

- the shipped meta-learned model (``default``) and the same architecture trained without the
  inner loop (``small-plain``, the dynamic-evaluation baseline), each
- frozen (inner learning rate 0) and with test-time training (its tuned inner loop);

beside ``gzip -9``, ``zstd -19 --long`` and ``xz -9e`` on the same bytes, in bits per byte.
A second, clean process measures streaming throughput (bytes/s) and peak resident memory of the
default model on this machine. One JSON line goes to stdout; ``--out`` receives the JSON and a
PNG of bits per byte versus position on each stream.

Usage::

    python benchmarks/weights.py                       # ~6 min on 2 cores
    python benchmarks/weights.py --stream-bytes 32768  # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from memsdk.engine import TTTState, load_model, stream
from memsdk.engine.corpus import HELDOUT_SYSTEMS, read_text, split_files
from memsdk.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
KINDS = {
    "loghub": "logs",
    "stdlib": "code",
    "linux-doc": "prose",
    "python-doc": "prose",
    "man": "prose",
    "tickets": "tickets",
}
COMPRESSORS = {
    "gzip -9": ["gzip", "-9", "-c"],
    "zstd -19 --long": ["zstd", "-19", "--long", "-c", "-q"],
    "xz -9e": ["xz", "-9e", "-c"],
}

# The clean process for throughput and memory: only the engine, the default model, one stream.
_THROUGHPUT = """
import json, resource, sys, time, torch
from memsdk.engine import TTTState, load_model, stream
data = sys.stdin.buffer.read()
model, _, _ = load_model("default")
state = TTTState(model)
stream(state, data[:4096])  # warm-up (allocations, first-call costs)
state.reset()
started = time.perf_counter()
stream(state, data, final=True)
seconds = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"bytes": len(data), "seconds": seconds, "bytes_per_s": len(data) / seconds,
                  "peak_rss_mib": peak_kib / 1024, "threads": torch.get_num_threads()}))
"""


def held_out_streams(shared: Path, size: int) -> dict[str, bytes]:
    """Name -> the first ``size`` bytes of a held-out stream (whole files, concatenated)."""
    split = split_files(shared if shared.exists() else None)
    streams: dict[str, bytes] = {}
    for file in split.heldout:
        if file.source == "loghub":
            system = file.name.split("/")[0]
            assert system in HELDOUT_SYSTEMS
            name = f"logs/{system}"
        else:
            name = f"{KINDS[file.source]}/{file.source}"
        have = streams.get(name, b"")
        if len(have) < size:
            streams[name] = (have + read_text(file))[:size]
    return streams


def compressed_bpb(data: bytes) -> dict[str, float | None]:
    """Bits per byte of each compressor on ``data`` (None where the tool is not installed)."""
    out: dict[str, float | None] = {}
    for name, command in COMPRESSORS.items():
        if shutil.which(command[0]) is None:
            out[name] = None
            continue
        result = subprocess.run(command, input=data, capture_output=True, check=True)
        out[name] = 8 * len(result.stdout) / len(data)
    return out


def prequential(model, data: bytes, inner_lr: float) -> tuple[float, list[float]]:
    state = TTTState(model, replace(model.default_ttt, inner_lr=inner_lr))
    report = stream(state, data, final=True, record_bytes=True)
    return report.bits_per_byte, report.byte_bits.tolist()


def throughput(data: bytes) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _THROUGHPUT], input=data, capture_output=True, check=True
    )
    return json.loads(result.stdout)


def plot(curves: dict, path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for label, (bits, reference) in curves[name].items():
            if reference:
                ax.axhline(bits, linestyle=":", linewidth=1, label=label, color="grey")
                continue
            t = torch.tensor(bits)
            smooth = t.unfold(0, window, window).mean(1) if len(t) >= window else t[None]
            xs = [(i + 0.5) * window / 1024 for i in range(len(smooth))]
            ax.plot(xs, smooth.tolist(), label=label, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("position (KiB)")
        ax.set_ylabel(f"bits per byte (mean of {window} B)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    partial = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(partial, dpi=110)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stream-bytes", type=int, default=128 * 1024)
    parser.add_argument("--throughput-bytes", type=int, default=256 * 1024)
    parser.add_argument("--models", default="default,small-plain")
    args = parser.parse_args(argv)

    streams = held_out_streams(args.shared, args.stream_bytes)
    missing = [f"logs/{x}" for x in HELDOUT_SYSTEMS if f"logs/{x}" not in streams] + [
        f"{kind}/{source}"
        for source, kind in KINDS.items()
        if source != "loghub" and f"{kind}/{source}" not in streams
    ]
    if missing:  # e.g. the documentation packages (engine/weights/README.md) not installed
        print(f"held-out sources not on this machine, skipped: {missing}", file=sys.stderr)
    models = {name: load_model(name)[0] for name in args.models.split(",")}
    results: dict = {}
    curves: dict = {}
    for name, data in streams.items():
        entry = {"bytes": len(data), "compressors": compressed_bpb(data)}
        curves[name] = {}
        for model_name, model in models.items():
            frozen, frozen_bits = prequential(model, data, 0.0)
            ttt, ttt_bits = prequential(model, data, model.default_ttt.inner_lr)
            entry[model_name] = {"frozen": frozen, "ttt": ttt, "gain": frozen - ttt}
            curves[name][f"{model_name} frozen"] = (frozen_bits, False)
            curves[name][f"{model_name} TTT"] = (ttt_bits, False)
            print(f"{name} {model_name}: frozen {frozen:.3f} ttt {ttt:.3f}", file=sys.stderr)
        for label, bpb in entry["compressors"].items():
            if bpb is not None:
                curves[name][label] = (bpb, True)
        results[name] = entry

    sample = b"".join(streams[n] for n in sorted(streams) if n.startswith("logs/"))
    sample = (sample or b"".join(streams.values()))[: args.throughput_bytes]
    speed = throughput(sample)
    default = models[next(iter(models))]
    record = {
        "benchmark": "weights",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "device": "cpu",
        },
        "models": {
            n: {
                "name": m.card.get("name"),
                "parameters": m.num_parameters(),
                "steps": m.card.get("steps"),
                "bytes_seen": m.card.get("bytes_seen"),
                "inner_lr": m.default_ttt.inner_lr,
                "chunk_bytes": m.default_ttt.chunk_bytes,
            }
            for n, m in models.items()
        },
        "streams": results,
        "missing_sources": missing,
        "throughput_cpu": speed,
        "targets": {
            "throughput_bytes_per_s_min": 20_000,
            "peak_rss_mib_max": 2048,
            "throughput_ok": speed["bytes_per_s"] >= 20_000,
            "memory_ok": speed["peak_rss_mib"] < 2048,
        },
        "ttt_beats_frozen_on_logs": {
            name: entry[next(iter(models))]["ttt"] < entry[next(iter(models))]["frozen"]
            for name, entry in results.items()
            if name.startswith("logs/")
        },
        "default_window": default.config.window,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "weights.json", json.dumps(record, indent=1).encode())
    plot(curves, args.out / "weights.png", window=2048)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
