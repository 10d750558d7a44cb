"""Benchmark of micro-TTT persistence: 4-bit Fisher-masked deltas and sessions that remember.

Four parts, on the shipped default model:

- **size**: a delta of the fast weights after a stream, at several kept fractions, against the
  full-precision fast-weight state and the whole model;
- **merge**: latency of merging the default delta into the fast weights (CPU; CUDA too when
  present, with the Triton kernel), and of a 25 MB delta;
- **quality**: held-out bits per byte of the text after a stream under the full-precision state,
  under each restored 4-bit delta, and under the initial weights; and ``fisher_masked`` against
  ``dynamic_mlp`` at equal update budget (the same number of stored entries). The inner learning
  rate of ``fisher_masked`` is tuned on development streams (Loghub Linux, Apache) first;
- **sessions**: a held-out stream split into three sessions, each run in its own process that
  opens the memory, scores the session's text before ingesting it, ingests it and closes the
  memory; against a memory that starts empty each time (the initial weights) and against one
  full-precision state that absorbs the three sessions without ever being saved (what the
  chain of 4-bit deltas should keep).

Held-out streams are never used in training or tuning. One JSON line goes to stdout; ``--out``
receives ``deltas.json`` and ``deltas.png``.

Usage::

    python benchmarks/deltas.py            # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from memsdk.engine import (
    TTTState,
    bits_per_byte,
    load_model,
    make_delta,
    merge_delta,
    read_delta,
    restore_state,
    stream,
)
from memsdk.kernels.delta import merge_delta_, pack_delta

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
HELDOUT = {
    "BGL": "loghub/BGL/BGL_2k.log",
    "HDFS": "loghub/HDFS/HDFS_2k.log",
    "OpenStack": "loghub/OpenStack/OpenStack_2k.log",
    "tickets": "tickets/issues_train.csv",
}
DEVELOPMENT = {"Linux": "loghub/Linux/Linux_2k.log", "Apache": "loghub/Apache/Apache_2k.log"}
KEEPS = (1.0, 0.25, 0.05, 0.01)
LEARNING_RATES = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # 10 and above diverge on the dev streams
TIE = 1.005  # dev scores within 0.5% of the best count as equal


def read(shared: Path, relative: str, size: int) -> bytes:
    data = (shared / "data" / relative).read_bytes()[:size]
    return data[: data.rfind(b"\n") + 1]


def adapted(model, config, data: bytes) -> TTTState:
    state = TTTState(model, config)
    stream(state, data, final=True)
    return state


def candidates(model) -> int:
    """Entries the fisher_masked mode chooses from (every suffix parameter)."""
    return sum(
        w.numel()
        for w in TTTState(
            model, replace(model.default_ttt, fast_params="fisher_masked")
        ).fast_weights.values()
    )


def measure_size(model, state: TTTState) -> dict:
    full = sum(w.numel() * w.element_size() for w in state.fast_weights.values())
    whole = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = {}
    for keep in KEEPS:
        data = make_delta(state, state.initial_weights(), keep=keep)
        rows[str(keep)] = {"bytes": len(data), "kept": read_delta(data).kept}
    return {
        "fast_weight_entries": sum(w.numel() for w in state.fast_weights.values()),
        "full_state_bytes": full,
        "model_bytes": whole,
        "delta": rows,
        "delta_vs_state": {k: r["bytes"] / full for k, r in rows.items()},
        "delta_vs_model": {k: r["bytes"] / whole for k, r in rows.items()},
    }


def latency_ms(fn, repeats: int = 20) -> dict[str, float]:
    """Median and 95th percentile (nearest rank) of ``repeats`` timed calls, in ms, after one
    untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - started))
    times.sort()
    return {
        "median": times[len(times) // 2],
        "p95": times[min(len(times) - 1, -(-95 * len(times) // 100) - 1)],
        "repeats": repeats,
    }


def measure_merge(state: TTTState) -> dict:
    delta = read_delta(make_delta(state, state.initial_weights()))
    weights = {n: w.clone() for n, w in state.initial_weights().items()}
    out = {
        "default_delta_cpu_ms": latency_ms(lambda: merge_delta(weights, delta, model=delta.model))
    }
    # A 25 MB delta: 48M kept entries of a 64M-entry tensor at 4 bits (+ a scale per 64).
    size = 1 << 26
    base = torch.zeros(size)
    generator = torch.Generator().manual_seed(0)
    packed = pack_delta(
        torch.randn(size, generator=generator), torch.rand(size, generator=generator) < 0.75
    )
    megabytes = packed.nbytes / 1e6
    out["large_delta_mb"] = megabytes
    out["large_delta_cpu_ms"] = latency_ms(lambda: merge_delta_(base, packed, backend="torch"), 10)
    if torch.cuda.is_available():
        on_gpu = type(packed)(
            packed.indices.cuda(), packed.codes.cuda(), packed.scales.cuda(), packed.shape
        )
        base_gpu = base.cuda()

        def merge() -> None:
            merge_delta_(base_gpu, on_gpu, backend="triton")
            torch.cuda.synchronize()

        out["large_delta_cuda_ms"] = latency_ms(merge, 20)
        out["cuda_device"] = torch.cuda.get_device_name()
    else:
        out["large_delta_cuda_ms"] = None  # no GPU on this machine: unmeasured
    return out


def tune_fisher_lr(model, shared: Path, fractions: dict[str, float], train: int, test: int) -> dict:
    """The inner learning rate of fisher_masked per mask fraction, chosen on development streams:
    the largest rate within ``TIE`` of the best dev score (the development logs are formats
    the model was trained on, so their scores barely move with small rates; among rates they
    cannot tell apart, the one that adapts most)."""
    chosen = {}
    for label, fraction in fractions.items():
        scores = {}
        for lr in LEARNING_RATES:
            config = replace(
                model.default_ttt, fast_params="fisher_masked", mask_fraction=fraction, inner_lr=lr
            )
            bits = []
            for relative in DEVELOPMENT.values():
                data = read(shared, relative, train + test)
                bits.append(bits_per_byte(adapted(model, config, data[:train]), data[train:]))
            scores[lr] = sum(bits) / len(bits)
        chosen[label] = {
            "fraction": fraction,
            "inner_lr": max(lr for lr, v in scores.items() if v <= min(scores.values()) * TIE),
            "dev_bits_per_byte": scores,
        }
    return chosen


def measure_quality(model, shared: Path, tuned: dict, train: int, test: int) -> dict:
    dynamic = model.default_ttt
    total = candidates(model)
    out = {}
    for name, relative in HELDOUT.items():
        data = read(shared, relative, train + test)
        head, later = data[:train], data[train:]
        state = adapted(model, dynamic, head)
        row = {
            "initial": bits_per_byte(TTTState(model), later),
            "full_precision": bits_per_byte(state, later),
        }
        for keep in KEEPS:
            delta = read_delta(make_delta(state, state.initial_weights(), keep=keep))
            row[f"delta_keep_{keep}"] = bits_per_byte(restore_state(model, [delta]), later)
        # Equal update budget: the same number of stored entries in both modes.
        for label, setting in tuned.items():
            budget = max(1, round(setting["fraction"] * total))
            config = replace(
                dynamic,
                fast_params="fisher_masked",
                mask_fraction=setting["fraction"],
                inner_lr=setting["inner_lr"],
            )
            fisher = adapted(model, config, head)
            fisher_keep = budget / sum(w.numel() for w in fisher.fast_weights.values())
            fisher_delta = read_delta(
                make_delta(fisher, fisher.initial_weights(), keep=min(1.0, fisher_keep))
            )
            dynamic_entries = sum(w.numel() for w in state.fast_weights.values())
            dynamic_delta = read_delta(
                make_delta(state, state.initial_weights(), keep=min(1.0, budget / dynamic_entries))
            )
            row[f"budget_{label}"] = {
                "entries": budget,
                "fisher_masked": bits_per_byte(restore_state(model, [fisher_delta]), later),
                "fisher_masked_kept": fisher_delta.kept,
                "dynamic_mlp": bits_per_byte(restore_state(model, [dynamic_delta]), later),
                "dynamic_mlp_kept": dynamic_delta.kept,
            }
        out[name] = row
    return out


SESSION = """
import json, sys
from memsdk import HybridMemory, Scope
memory, path, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(path, "rb").read()[start:end]
scope = Scope(tenant="bench")
with HybridMemory.open(memory) as mem:
    before = mem.bits_per_byte(text, scope=scope)
    mem.ingest([text], scope=scope, name=f"session-{start}")
    mem.flush()
    w = mem.stats().scopes[0].weights
print(json.dumps({"bits_per_byte": before, "deltas": w.deltas, "delta_bytes": w.delta_bytes}))
"""


def measure_sessions(model, shared: Path, session_bytes: int) -> dict:
    out = {}
    for name, relative in HELDOUT.items():
        data = read(shared, relative, 3 * session_bytes)
        cuts = [0]
        for k in (1, 2, 3):  # whole lines per session
            end = min(len(data), k * session_bytes)
            cuts.append(data.rfind(b"\n", 0, end) + 1 if k < 3 else len(data))
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "stream"
            source.write_bytes(data)
            rows = []
            never_closed = TTTState(model)
            for k in range(3):
                result = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        SESSION,
                        str(Path(tmp) / "memory"),
                        str(source),
                        str(cuts[k]),
                        str(cuts[k + 1]),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                row = json.loads(result.stdout.strip().splitlines()[-1])
                text = data[cuts[k] : cuts[k + 1]]
                row["empty_memory"] = bits_per_byte(TTTState(model), text)
                row["never_closed"] = bits_per_byte(never_closed, text)
                stream(never_closed, text, final=True)  # as the session's flush streams it
                rows.append(row)
        out[name] = rows
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    size = result["size"]
    labels = ["model", "full state", *[f"delta {k}" for k in size["delta"]]]
    values = [
        size["model_bytes"],
        size["full_state_bytes"],
        *[r["bytes"] for r in size["delta"].values()],
    ]
    axes[0].bar(labels, values, color=["grey", "tab:blue", *["tab:green"] * len(size["delta"])])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("bytes")
    axes[0].set_title("size (kept fraction of entries)")
    axes[0].tick_params(axis="x", rotation=30)
    quality = result["quality"]
    keys = ["initial", "full_precision", *[f"delta_keep_{k}" for k in KEEPS]]
    width = 0.8 / len(quality)
    for i, (name, row) in enumerate(quality.items()):
        axes[1].bar(
            [x + i * width for x in range(len(keys))], [row[k] for k in keys], width, label=name
        )
    axes[1].set_xticks([x + 0.4 - width / 2 for x in range(len(keys))])
    axes[1].set_xticklabels(["initial", "fp32", *[f"4-bit {k}" for k in KEEPS]], rotation=30)
    axes[1].set_ylabel("held-out bits per byte")
    axes[1].set_title("quality kept")
    axes[1].legend(fontsize=8)
    for name, rows in result["sessions"].items():
        line = axes[2].plot(
            [1, 2, 3], [r["bits_per_byte"] for r in rows], marker="o", label=f"{name} sessions"
        )
        color = line[0].get_color()
        axes[2].plot([1, 2, 3], [r["empty_memory"] for r in rows], linestyle="--", color=color)
        axes[2].plot([1, 2, 3], [r["never_closed"] for r in rows], linestyle=":", color=color)
    axes[2].set_xticks([1, 2, 3])
    axes[2].set_xlabel("session (solid: deltas, dotted: never closed, dashed: starts empty)")
    axes[2].set_ylabel("bits per byte before ingesting")
    axes[2].set_title("sessions")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train-bytes", type=int, default=64 * 1024)
    parser.add_argument("--test-bytes", type=int, default=16 * 1024)
    parser.add_argument("--session-bytes", type=int, default=24 * 1024)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load_model()[0]
    started = time.perf_counter()
    head = read(args.shared, HELDOUT["HDFS"], args.train_bytes)
    state = adapted(model, model.default_ttt, head)
    total = candidates(model)
    dynamic_entries = sum(w.numel() for w in state.fast_weights.values())
    fractions = {"1%": 0.01, "dynamic_mlp_size": dynamic_entries / total}
    tuned = tune_fisher_lr(model, args.shared, fractions, args.train_bytes, args.test_bytes)
    result = {
        "benchmark": "deltas",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "model": model.card.get("name"),
        "fisher_candidates": total,
        "size": measure_size(model, state),
        "merge": measure_merge(state),
        "fisher_tuning": tuned,
        "quality": measure_quality(model, args.shared, tuned, args.train_bytes, args.test_bytes),
        "sessions": measure_sessions(model, args.shared, args.session_bytes),
    }
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deltas.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "deltas.png")
    print(json.dumps(result))
    return 0 if all(math.isfinite(r["full_precision"]) for r in result["quality"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
