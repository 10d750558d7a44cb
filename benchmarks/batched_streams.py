"""Many scopes' weight memories at once: ``stream_many`` (one batch per round) against
``stream`` scope after scope, on real log streams.

Each of ``--streams`` scopes gets its own real stream of ``--stream-bytes`` bytes: consecutive
slices of the Loghub 2k logs of every system, concatenated (so neighbouring scopes hold
different systems' logs). For each model and each number of scopes, both ways stream the same
data into fresh states, after an untimed warm-up of the same shape (kernel compilation, caches):

- **serial**: ``stream(state, data)`` for one scope after another, as the memory's weight
  worker absorbed scopes before it batched them;
- **batched**: one ``stream_many(states, data)`` call.

``--thread`` also runs both in a new thread, as the memory's weight worker does: there each
parallel torch operation costs more (on the 2-core development machine, an add of 65,536
floats took 10 us in the first thread of a process that ran torch and about 80 us in a thread
started after it: the CPU build's OpenMP runtime keeps one pool of threads per calling
thread), so one scope's small operations pay more, and batching saves more.

Figures: bytes absorbed per second over all scopes, the speed-up, and the peak device memory of
the batched call (CUDA). A speed-up is only reported when the two agree: the fast weights of
every scope within a relative RMS of ``WEIGHT_TOLERANCE`` and each scope's bits per byte within
``BITS_TOLERANCE`` (float32 summed in another order, and on CUDA Triton's float32 dots against
cuBLAS's).

Models: ``default`` (the shipped model) and ``base`` (``ModelConfig.base()`` with random
weights: the shape a GPU-trained model would have; its figures are speed only).

``--worker-scopes N`` (CPU) also times the memory's own weight worker: a memory of N scopes,
each holding ``--worker-bytes`` of its logs in two documents (two sources), written with the
weight memory off and flushed (every vector embedded), is copied twice and opened with it on;
the time from ``open()`` to the end of ``flush()`` is the time to absorb every scope (plus
the open), once with the worker taking one scope at a time
(``memsdk.consolidation.SCOPES_PER_BATCH = 1``, as before batching) and once as shipped. The
fast weights of every scope must agree between the two.

One JSON line goes to stdout; ``--out`` receives ``batched_streams.json`` and a PNG.

Usage::

    python benchmarks/batched_streams.py --thread --worker-scopes 16      # CPU: default, 1-64
    python benchmarks/batched_streams.py --models default,base --streams 1,16,64,256  # a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from json_line import emit

from memsdk.engine import ByteLM, ModelConfig, TTTState, load_model, stream, stream_many
from memsdk.kernels.dispatch import relative_rms

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
WEIGHT_TOLERANCE = 1e-3
BITS_TOLERANCE = 1e-3


def log_streams(loghub: Path, count: int, size: int) -> list[bytes]:
    """``count`` different real streams of ``size`` bytes: consecutive slices of every Loghub
    system's 2k log, concatenated."""
    files = sorted(loghub.glob("*/*_2k.log"))
    if not files:
        raise SystemExit(
            f"no Loghub logs under {loghub}: pass --loghub DIR (the data/loghub folder)"
        )
    corpus = b"".join(path.read_bytes() for path in files)
    if count * size > len(corpus):
        raise SystemExit(
            f"{count} streams of {size} bytes need {count * size} bytes; the logs hold "
            f"{len(corpus)}: ask for fewer or shorter streams"
        )
    return [corpus[i * size : (i + 1) * size] for i in range(count)]


def build_model(name: str, device: torch.device) -> ByteLM:
    if name == "default":
        model = load_model("default")[0]
    else:
        torch.manual_seed(0)
        model = ByteLM(ModelConfig.preset(name))
        with torch.no_grad():  # fast weights that matter: an untrained down projection is zero
            for block in model.blocks:
                if block.dynamic:
                    block.down0.normal_(0, 0.02)
        model.default_ttt = load_model("default")[0].default_ttt
    return model.eval().requires_grad_(False).to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, run) -> tuple[float, object]:
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


def measure(model: ByteLM, data: list[bytes], device: torch.device) -> dict:
    warm = [item[: 2 * model.default_ttt.chunk_bytes] for item in data]
    for item, state in zip(warm, [TTTState(model) for _ in warm], strict=True):
        stream(state, item)
    stream_many([TTTState(model) for _ in warm], warm)

    serial_states = [TTTState(model) for _ in data]
    serial_s, serial = timed(
        device,
        lambda: [stream(s, item) for s, item in zip(serial_states, data, strict=True)],
    )
    batched_states = [TTTState(model) for _ in data]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batched_s, batched = timed(device, lambda: stream_many(batched_states, data))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None

    weight_error = max(
        relative_rms(a.fast_weights[name], b.fast_weights[name])
        for a, b in zip(batched_states, serial_states, strict=True)
        for name in b.fast_weights
    )
    bits_error = max(
        abs(a.bits_per_byte - b.bits_per_byte) for a, b in zip(batched, serial, strict=True)
    )
    agree = weight_error <= WEIGHT_TOLERANCE and bits_error <= BITS_TOLERANCE
    total = sum(map(len, data))
    return {
        "scopes": len(data),
        "bytes": total,
        "serial_s": round(serial_s, 4),
        "batched_s": round(batched_s, 4),
        "serial_bytes_per_s": round(total / serial_s),
        "batched_bytes_per_s": round(total / batched_s),
        "speedup": round(serial_s / batched_s, 2) if agree else None,
        "weight_relative_rms": weight_error,
        "bits_per_byte_difference": bits_error,
        "agree": agree,
        "steps": sum(s.steps for s in batched_states),
        "rejected_steps": sum(s.rejected_steps for s in batched_states),
        "peak_device_mib": None if peak is None else round(peak, 1),
    }


def measure_worker(streams: list[bytes]) -> dict:
    """Time ``flush()`` absorbing every scope of a fresh memory, one scope at a time and as
    shipped (see the module docstring)."""
    import memsdk.consolidation as consolidation
    from memsdk import HybridMemory, MemoryConfig, Scope

    shipped = consolidation.SCOPES_PER_BATCH
    scopes = [Scope(tenant=f"tenant-{i}") for i in range(len(streams))]
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp, "built")
        with HybridMemory.open(built, config=MemoryConfig(weight_memory=False)) as mem:
            for scope, data in zip(scopes, streams, strict=True):
                half = len(data) // 2
                mem.ingest([data[:half]], scope=scope, name="first.log")
                mem.ingest([data[half:]], scope=scope, name="second.log")
            mem.flush()
        row, weights = {"scopes": len(streams), "bytes": sum(map(len, streams))}, {}
        for label, per_batch in (("one_by_one", 1), ("batched", shipped)):
            copy = Path(tmp, label)
            shutil.copytree(built, copy)
            consolidation.SCOPES_PER_BATCH = per_batch
            try:
                started = time.perf_counter()  # the worker starts absorbing in open()
                with HybridMemory.open(copy) as mem:
                    opened = time.perf_counter()
                    mem.flush()
                    row[f"{label}_s"] = round(time.perf_counter() - started, 3)
                    row[f"{label}_open_s"] = round(opened - started, 3)
                    ids = [mem.notepad.sql.find_scope(scope.key()) for scope in scopes]
                    weights[label] = [mem.weights.state(i).fast_weights for i in ids]
            finally:
                consolidation.SCOPES_PER_BATCH = shipped
        row["scopes_per_batch"] = shipped
        row["speedup"] = round(row["one_by_one_s"] / row["batched_s"], 2)
        row["weight_relative_rms"] = max(
            relative_rms(got[name], want[name])
            for got, want in zip(weights["batched"], weights["one_by_one"], strict=True)
            for name in want
        )
        row["agree"] = row["weight_relative_rms"] <= WEIGHT_TOLERANCE
        if not row["agree"]:
            row["speedup"] = None
    return row


def in_thread(function, *args):
    """``function(*args)`` run in a new thread (not the main one); its result."""
    out = []
    thread = threading.Thread(target=lambda: out.append(function(*args)))
    thread.start()
    thread.join()
    return out[0]


def plot(results: dict[str, list[dict]], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (model, rows) in zip(axes[0], results.items(), strict=True):
        scopes = [row["scopes"] for row in rows]
        for key, label in (
            ("serial_bytes_per_s", "stream, one scope after another"),
            ("batched_bytes_per_s", "stream_many, one batch"),
        ):
            ax.plot(scopes, [row[key] / 1e3 for row in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("scopes streaming at once")
        ax.set_ylabel("kB/s absorbed, all scopes")
        ax.set_ylim(bottom=0)
        ax.set_title(f"model {model}: {device}", fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--models", default="default,base" if cuda else "default")
    parser.add_argument("--streams", default="1,4,16,64,256" if cuda else "1,4,16,64")
    parser.add_argument("--stream-bytes", type=int, default=8192)
    parser.add_argument("--loghub", type=Path, default=DEFAULT_SHARED / "data" / "loghub")
    parser.add_argument("--thread", action="store_true", help="also in a non-main thread")
    parser.add_argument("--worker-scopes", type=int, default=0, help="also time the worker")
    parser.add_argument("--worker-bytes", type=int, default=32768)
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON and PNG")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    counts = [int(n) for n in args.streams.split(",")]
    streams = log_streams(args.loghub, max(counts), args.stream_bytes)
    worker = None
    if args.worker_scopes:
        worker = measure_worker(log_streams(args.loghub, args.worker_scopes, args.worker_bytes))
        print(f"# worker {worker}", flush=True)
    results: dict[str, list[dict]] = {}
    for name in args.models.split(","):
        model = build_model(name, device)
        for thread in (False, True) if args.thread else (False,):
            key = f"{name}, non-main thread" if thread else name
            results[key] = []
            for count in counts:
                if thread:
                    row = in_thread(measure, model, streams[:count], device)
                else:
                    row = measure(model, streams[:count], device)
                results[key].append(row)
                print(f"# {key} {row}", flush=True)
    device_name = (
        torch.cuda.get_device_name()
        if cuda
        else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    )
    result = {
        "benchmark": "batched_streams",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name,
        "torch": torch.__version__,
        "stream_bytes": args.stream_bytes,
        "weight_tolerance": WEIGHT_TOLERANCE,
        "bits_tolerance": BITS_TOLERANCE,
        "results": results,
        "worker": worker,
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(results, args.out / "batched_streams.png", device_name)
    emit(result, None if args.out is None else args.out / "batched_streams.json")


if __name__ == "__main__":
    main()
