"""Correctness-gated benchmark of the Triton kernels in ``memsdk.kernels``.

Parts (``--parts``, all by default):

- **swa**: ``swa_attention`` forward + backward in bf16, B=1, 8 heads of 64, window 2048, at
  T = 8k, 32k and 128k, against PyTorch FlexAttention (a sliding-window block mask, compiled)
  and full causal ``F.scaled_dot_product_attention``. TFLOP/s count the work each kernel must
  do: only the in-window (query, key) pairs for the windowed kernels, the causal triangle for
  SDPA; the backward counts 2.5 times the forward (FlashAttention-2's convention).
- **fast_mlp**: the fused inner step ``fast_mlp_step_`` (forward on a chunk, weight gradients
  from an upstream gradient, clipped SGD update with decay) at chunks of 1024, 2048 and 4096
  bytes, d = 384 and 1024, h = 4d, bf16, against the same step in eager PyTorch (autograd and
  ``memsdk.engine.ttt.inner_update``); also ``fast_mlp`` forward + backward against eager. The
  fraction of the GPU's dense bf16 peak is reported with the peak figure used.
- **delta**: merging a 25 MB 4-bit delta (``kernels/delta``, as ``benchmarks/deltas.py``) into
  a 64M-entry weight, Triton against the torch reference.
- **ttt_linear**: ``ttt_linear`` forward + backward against flash-linear-attention's
  ``chunk_ttt_linear`` (PyPI ``flash-linear-attention``, carried to the GPU machine as a wheel)
  at the same shapes, from ``benchmarks/ttt_linear_bench.py``.

Every kernel is checked against its reference at the benchmarked shape before it is timed (the
relative RMS of ``memsdk.kernels.dispatch.relative_rms``); attention is checked on query and key
slices, which the sliding window makes exact (a slice of queries needs only the keys of its
windows, a slice of keys only the queries that see it), so the dense reference fits in memory
at 128k. A speed-up is only reported when the check passed; otherwise the record says why.

Without CUDA the script still runs every correctness check, on small shapes in Triton's
interpreter, and records every GPU figure as null ("unmeasured"), never as an estimate.

One JSON line per record goes to stdout; ``--out`` receives ``kernels.json`` (and
``kernels.png`` when something was timed).

Usage::

    python benchmarks/kernels.py                          # every part (GPU: FlexAttention compiles)
    python benchmarks/kernels.py --parts swa --lengths 8192,32768
    python benchmarks/kernels.py --parts fast_mlp,delta   # on CPU: interpreter checks only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

# Without a GPU the Triton kernels run in Triton's interpreter; the variable is read when a
# kernel is decorated, so before memsdk.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton
import triton.testing

from memsdk.engine.ttt import TTTConfig, inner_update
from memsdk.kernels.delta import merge_delta_, pack_delta
from memsdk.kernels.dispatch import interpreting, relative_rms
from memsdk.kernels.fast_mlp import fast_mlp, fast_mlp_step_
from memsdk.kernels.fast_mlp.naive import (
    clipped_sgd_naive_,
    fast_mlp_grads_naive,
    squared_norm_naive,
)
from memsdk.kernels.swa_attention import swa_attention
from memsdk.kernels.swa_attention.naive import swa_attention_naive

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "out"
PARTS = ("swa", "fast_mlp", "delta", "ttt_linear")
# Dense (no sparsity) bf16 tensor-core peaks from the vendor's data sheets, by a substring of
# torch.cuda.get_device_name(). H200 has the H100 SXM's compute (more and faster memory).
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.05}
# Relative-RMS gates against the fp32 references, for bf16 kernels (the tests use the same).
SWA_TOLERANCE = {"out": 2e-2, "grad": 3e-2}
MLP_TOLERANCE = 3e-2
UPDATE_TOLERANCE = 1e-2
DELTA_TOLERANCE = 1e-2  # bf16 weights: the merged value rounds once
UNMEASURED = "unmeasured: no CUDA device on this machine"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def emit(records: list[dict], record: dict) -> None:
    """Keep ``record`` and print it as one JSON line, naming the device of the run (the
    environment record, always first)."""
    if records:
        record = {"device": records[0]["device"], **record}
    records.append(record)
    print(json.dumps(record), flush=True)


def environment() -> dict:
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else None
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if name and k in name), None)
    return {
        "record": "environment",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": name or f"cpu ({platform.machine()}, {os.cpu_count()} cores): {UNMEASURED}",
        "cuda": cuda,
        "interpreter": interpreting(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "bf16_dense_peak_tflops": peak,
        "peak_source": "vendor data sheet, dense bf16 tensor cores (no sparsity)" if peak else None,
    }


def bench_ms(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> dict:
    """Median and 20/80% quantiles of ``fn`` in ms: triton.testing.do_bench warms up, flushes
    the L2 cache between runs and times with CUDA events (synchronised)."""
    torch.cuda.synchronize()
    median, low, high = triton.testing.do_bench(
        fn, warmup=25, rep=200, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]
    )
    torch.cuda.synchronize()
    return {"ms": median, "ms_p20": low, "ms_p80": high}


def unmeasured() -> dict:
    return {"ms": None, "ms_p20": None, "ms_p80": None, "tflops": None, "status": UNMEASURED}


def gate(errors: dict[str, float], tolerances: dict[str, float]) -> dict:
    passed = all(math.isfinite(errors[k]) and errors[k] < tolerances[k] for k in errors)
    return {"passed": passed, "relative_rms": errors, "tolerance": tolerances}


# -- sliding-window attention -------------------------------------------------------------------


def window_pairs(length: int, window: int) -> int:
    """(query, key) pairs inside a causal window of ``window`` over ``length`` positions."""
    inside = min(length, window)
    return inside * (inside + 1) // 2 + (length - inside) * window


def attention_flops(batch: int, heads: int, head_dim: int, pairs: int) -> float:
    """Forward + backward FLOPs: 4 D per pair forward (QK^T and PV), 2.5 times that backward."""
    return 3.5 * 4 * head_dim * pairs * batch * heads


def attention_slices(length: int, window: int, size: int) -> list[tuple[int, int]]:
    starts = sorted({0, max(0, length // 2 - size // 2), max(0, length - size)})
    return [(s, min(length, s + size)) for s in starts]


def check_attention(
    q, k, v, grad, out, dq, dk, dv, window: int, slice_size: int
) -> dict[str, float]:
    """Worst relative RMS over query and key slices against the fp32 dense reference. For
    keys [s, e) the queries that see them are [s, e + window - 1), and those need the keys from
    s - window + 1: on that sub-problem (in the streaming form) the reference's outputs, dq and
    the gradients of keys [s, e) are exactly those of the whole sequence."""
    length = q.shape[2]
    worst = {"out": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0}
    for start, end in attention_slices(length, window, slice_size):
        query_end = min(length, end + window - 1)
        key_start = max(0, start - window + 1)
        leaves = [
            t[:, :, lo:query_end].detach().float().requires_grad_()
            for t, lo in ((q, start), (k, key_start), (v, key_start))
        ]
        ref = swa_attention_naive(*leaves, window=window)
        ref_dq, ref_dk, ref_dv = torch.autograd.grad(
            ref, leaves, grad[:, :, start:query_end].float()
        )
        keys = slice(start - key_start, end - key_start)
        pairs = {
            "out": (out[:, :, start:query_end], ref.detach()),
            "dq": (dq[:, :, start:query_end], ref_dq),
            "dk": (dk[:, :, start:end], ref_dk[:, :, keys]),
            "dv": (dv[:, :, start:end], ref_dv[:, :, keys]),
        }
        for name, (got, expected) in pairs.items():
            worst[name] = max(worst[name], relative_rms(got, expected))
        del ref, ref_dq, ref_dk, ref_dv, leaves
    return worst


def run_attention(fn, q, k, v, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    dq, dk, dv = torch.autograd.grad(out, leaves, grad)
    return out.detach(), dq, dk, dv


def flex_attention_fn(length: int, window: int, device: torch.device):
    """FlexAttention with a sliding-window block mask, compiled once per length."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sliding_window(batch, head, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    mask = create_block_mask(
        sliding_window, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device
    )
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask)


def bench_swa(args, env: dict, records: list[dict]) -> None:
    if env["cuda"]:
        for length in args.lengths:
            bench_swa_shape(env, records, length, 8, 64, args.window, torch.bfloat16, args.slice)
            torch.cuda.empty_cache()
    else:  # the interpreter: the same checks on a small problem
        for dtype in (torch.float32, torch.bfloat16):
            bench_swa_shape(env, records, 200, 2, 64, 48, dtype, 64)


def bench_swa_shape(
    env: dict,
    records: list[dict],
    length: int,
    heads: int,
    head_dim: int,
    window: int,
    dtype: torch.dtype,
    slice_size: int,
) -> None:
    cuda, device = env["cuda"], DEVICE
    generator = torch.Generator(device=device).manual_seed(length)
    q, k, v, grad = (
        torch.randn(1, heads, length, head_dim, device=device, generator=generator).to(dtype)
        for _ in range(4)
    )
    flops = attention_flops(1, heads, head_dim, window_pairs(length, window))
    base = {
        "part": "swa",
        "dtype": str(dtype).removeprefix("torch."),
        "shape": {"B": 1, "H": heads, "T": length, "D": head_dim, "window": window},
    }
    tolerance = SWA_TOLERANCE if dtype != torch.float32 else {"out": 1e-5, "grad": 1e-5}
    tolerances = {"out": tolerance["out"], **dict.fromkeys(("dq", "dk", "dv"), tolerance["grad"])}

    def kernel(q, k, v):
        return swa_attention(q, k, v, window=window, backend="triton")

    def checked(fn) -> dict:
        started = time.perf_counter()
        result = run_attention(fn, q, k, v, grad)
        check = gate(check_attention(q, k, v, grad, *result, window, slice_size), tolerances)
        check["against"] = "fp32 dense reference on query and key slices"
        check["seconds"] = time.perf_counter() - started
        return check

    record = {**base, "impl": "triton swa_attention", "check": checked(kernel)}
    if not cuda:
        emit(records, {**record, **unmeasured()})
        return
    if not record["check"]["passed"]:
        emit(records, {**record, **unmeasured(), "status": "check failed: not timed"})
        return
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def timed(fn, work: float) -> dict:
        timing = bench_ms(lambda: fn(*leaves).backward(grad), grad_to_none=leaves)
        return {**timing, "tflops": work / timing["ms"] / 1e9, "flops": work}

    ours = {**record, **timed(kernel, flops)}
    baselines = {}
    flex_record = {**base, "impl": "flex_attention (compiled)"}
    try:
        flex = flex_attention_fn(length, window, device)
        flex_record["check"] = checked(flex)
        if flex_record["check"]["passed"]:
            flex_record.update(timed(flex, flops))
            baselines["flex_attention"] = flex_record["ms"]
        else:
            flex_record.update(unmeasured(), status="check failed: not timed")
    except Exception as exc:  # a baseline that fails to build is recorded, not fatal
        flex_record.update(unmeasured(), status=f"failed: {type(exc).__name__}: {exc}"[:500])
    sdpa_record = {
        **base,
        "impl": "scaled_dot_product_attention full causal",
        "check": {"passed": None, "against": "not applicable: another function (no window)"},
    }

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    try:
        sdpa_record.update(
            timed(sdpa, attention_flops(1, heads, head_dim, length * (length + 1) // 2))
        )
        baselines["sdpa_causal"] = sdpa_record["ms"]
    except Exception as exc:
        sdpa_record.update(unmeasured(), status=f"failed: {type(exc).__name__}: {exc}"[:500])
    ours["speedup"] = {name: ms / ours["ms"] for name, ms in baselines.items()}
    for item in (ours, flex_record, sdpa_record):
        emit(records, item)


# -- the dynamic MLP's inner step ---------------------------------------------------------------


def eager_step(x, up, down, grad, up0, down0, config: TTTConfig):
    """The engine's step in eager PyTorch: autograd for the weight gradients, then
    ``inner_update`` (out of place)."""
    fast = {"up": up.detach().requires_grad_(), "down": down.detach().requires_grad_()}
    y = F.gelu(x @ fast["up"]) @ fast["down"]
    grads = torch.autograd.grad(y, list(fast.values()), grad)
    return inner_update(fast, list(grads), {"up": up0, "down": down0}, config)


def check_step(x, up, down, grad, up0, down0, config: TTTConfig) -> dict[str, float]:
    weights = [up.clone(), down.clone()]
    step = fast_mlp_step_(
        x, *weights, grad, lr=config.inner_lr, max_norm=config.max_grad_norm, up0=up0,
        down0=down0, decay=config.decay, backend="triton",
    )  # fmt: skip
    ref_y, ref_up, ref_down, _ = fast_mlp_grads_naive(x, up, down, grad)
    expected = [up.float().clone(), down.float().clone()]
    norm, _, _ = clipped_sgd_naive_(
        expected, [ref_up, ref_down], squared_norm_naive([ref_up, ref_down]),
        lr=config.inner_lr, max_norm=config.max_grad_norm, initial=[up0, down0],
        decay=config.decay,
    )  # fmt: skip
    return {
        "output": relative_rms(step.output, ref_y),
        "grad_up": relative_rms(step.grad_up, ref_up),
        "grad_down": relative_rms(step.grad_down, ref_down),
        "norm": abs(float(step.step.norm) / float(norm) - 1),
        "up": relative_rms(weights[0], expected[0]),
        "down": relative_rms(weights[1], expected[1]),
    }


def bench_fast_mlp(args, env: dict, records: list[dict]) -> None:
    if env["cuda"]:
        for d in args.d_models:
            for chunk in args.chunks:
                bench_fast_mlp_shape(env, records, chunk, d)
    else:  # the interpreter: the same checks on a small problem
        bench_fast_mlp_shape(env, records, 40, 32)


def bench_fast_mlp_shape(env: dict, records: list[dict], chunk: int, d: int) -> None:
    cuda, peak, device = env["cuda"], env["bf16_dense_peak_tflops"], DEVICE
    hidden = 4 * d
    generator = torch.Generator(device=device).manual_seed(chunk + d)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=generator) * scale).bfloat16()

    x, grad = randn(1, chunk, d), randn(1, chunk, d, scale=1e-2)
    up, down = randn(d, hidden, scale=d**-0.5), randn(hidden, d, scale=hidden**-0.5)
    up0, down0 = up.clone(), down.clone()
    config = TTTConfig(inner_lr=1e-3, max_grad_norm=1.0, decay=1e-3)
    base = {
        "part": "fast_mlp",
        "dtype": "bfloat16",
        "shape": {"B": 1, "C": chunk, "d": d, "h": hidden},
    }

    def fraction(tflops: float) -> float | None:
        return tflops / peak if peak else None

    step_errors = check_step(x, up, down, grad, up0, down0, config)
    tolerances = {name: MLP_TOLERANCE for name in step_errors}
    tolerances.update(up=UPDATE_TOLERANCE, down=UPDATE_TOLERANCE)
    step = {**base, "impl": "triton fast_mlp_step_", "check": gate(step_errors, tolerances)}
    step["check"]["against"] = "fp32 reference (naive.py) at this shape"
    leaves = [t.clone().requires_grad_() for t in (x, up, down)]
    y = fast_mlp(*leaves, backend="triton")
    got = torch.autograd.grad(y, leaves, grad)
    ref_y, ref_up, ref_down, ref_dx = fast_mlp_grads_naive(x, up, down, grad)
    mlp_errors = {
        "output": relative_rms(y.detach(), ref_y),
        "dx": relative_rms(got[0], ref_dx),
        "d_up": relative_rms(got[1], ref_up),
        "d_down": relative_rms(got[2], ref_down),
    }
    mlp = {
        **base,
        "impl": "triton fast_mlp forward+backward",
        "check": gate(mlp_errors, dict.fromkeys(mlp_errors, MLP_TOLERANCE)),
    }
    if not cuda:
        emit(records, {**step, **unmeasured(), "fraction_of_peak": None})
        emit(records, {**mlp, **unmeasured(), "fraction_of_peak": None})
        return
    # Two forward GEMMs and three for the weight gradients (d_pre, d_up, d_down).
    step_flops = 10 * chunk * d * hidden
    if step["check"]["passed"]:
        weights = [up.clone(), down.clone()]

        def fused_step():
            fast_mlp_step_(
                x, *weights, grad, lr=config.inner_lr, max_norm=config.max_grad_norm,
                up0=up0, down0=down0, decay=config.decay,
            )  # fmt: skip

        timing = bench_ms(fused_step)
        eager = bench_ms(lambda: eager_step(x, up, down, grad, up0, down0, config))
        tflops = step_flops / timing["ms"] / 1e9
        step.update(timing, tflops=tflops, flops=step_flops, fraction_of_peak=fraction(tflops))
        step["speedup"] = {"eager_pytorch": eager["ms"] / timing["ms"]}
        eager_tflops = step_flops / eager["ms"] / 1e9
        emit(records, step)
        emit(
            records,
            {
                **base,
                "impl": "eager pytorch step (autograd + inner_update)",
                "check": {"passed": None, "against": "not applicable: the baseline"},
                **eager,
                "tflops": eager_tflops,
                "fraction_of_peak": fraction(eager_tflops),
            },
        )
    else:
        emit(records, {**step, **unmeasured(), "status": "check failed: not timed"})
    if mlp["check"]["passed"]:
        flops = 12 * chunk * d * hidden  # two GEMMs forward, four backward (dx included)
        params = [t.clone().requires_grad_() for t in (x, up, down)]

        def eager_mlp():
            (F.gelu(params[0] @ params[1]) @ params[2]).backward(grad)

        def fused_mlp():
            fast_mlp(*params, backend="triton").backward(grad)

        timing = bench_ms(fused_mlp, grad_to_none=params)
        eager = bench_ms(eager_mlp, grad_to_none=params)
        tflops = flops / timing["ms"] / 1e9
        mlp.update(timing, tflops=tflops, flops=flops, fraction_of_peak=fraction(tflops))
        mlp["speedup"] = {"eager_pytorch": eager["ms"] / timing["ms"]}
        mlp["eager_ms"] = eager["ms"]
    else:
        mlp.update(unmeasured(), status="check failed: not timed")
    emit(records, mlp)


# -- delta merge --------------------------------------------------------------------------------


def bench_delta(args, env: dict, records: list[dict]) -> None:
    """A 25 MB delta: 48M kept entries of a 64M-entry tensor at 4 bits (+ a scale per 64),
    the size of benchmarks/deltas.py's measure_merge."""
    cuda, device = env["cuda"], DEVICE
    size = 1 << 26 if cuda else 1 << 12
    generator = torch.Generator(device=device).manual_seed(0)
    values = torch.randn(size, device=device, generator=generator)
    mask = torch.rand(size, device=device, generator=generator) < 0.75
    packed = pack_delta(values, mask, backend="triton")
    records_base = {"part": "delta", "shape": {"entries": size, "kept": int(mask.sum())}}
    records_base["delta_mb"] = packed.nbytes / 1e6
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):
        base = torch.randn(size, device=device, generator=generator).to(dtype)
        expected = merge_delta_(base.clone(), packed, backend="torch")
        got = merge_delta_(base.clone(), packed, backend="triton")
        errors[str(dtype).removeprefix("torch.")] = relative_rms(got - base, expected - base)
    check = gate(errors, {"float32": 1e-6, "bfloat16": DELTA_TOLERANCE})
    check["against"] = "the torch reference (naive.py) at this size"
    record = {**records_base, "impl": "triton merge_delta_", "dtype": "float32", "check": check}
    if not cuda:
        emit(records, {**record, **unmeasured()})
        return
    if not check["passed"]:
        emit(records, {**record, **unmeasured(), "status": "check failed: not timed"})
        return
    weight = torch.zeros(size, device=device)
    timing = bench_ms(lambda: merge_delta_(weight, packed, backend="triton"))
    reference = bench_ms(lambda: merge_delta_(weight, packed, backend="torch"))
    record.update(timing, speedup={"torch_reference_on_gpu": reference["ms"] / timing["ms"]})
    # Codes, fp32 scales and int64 indices read; each kept fp32 weight read and written.
    traffic = packed.codes.numel() + 4 * packed.scales.numel() + 16 * packed.indices.numel()
    record["effective_gb_per_s"] = traffic / timing["ms"] / 1e6
    emit(records, record)


# -- ttt_linear ---------------------------------------------------------------------------------


def bench_ttt_linear(args, env: dict, records: list[dict]) -> None:
    """``memsdk.kernels.ttt_linear`` forward + backward against flash-linear-attention's
    ``chunk_ttt_linear`` at the same shapes (``benchmarks/ttt_linear_bench.py`` maps the two
    conventions, checks the outputs' common part and the final states, and reports a speed-up
    only when that check passed)."""
    from ttt_linear_bench import bench_ttt_linear as compare_with_fla

    for row in compare_with_fla():
        emit(records, {"part": "ttt_linear", "impl": "triton ttt_linear vs fla", **row})


# -- report -------------------------------------------------------------------------------------


def plot(records: list[dict], path: Path) -> bool:
    timed = [r for r in records if r.get("ms") is not None]
    if not timed:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for part, axis, key, label in (
        ("swa", axes[0], "T", "sequence length T"),
        ("fast_mlp", axes[1], "C", "chunk C"),
    ):
        rows = [r for r in timed if r["part"] == part]
        for impl in dict.fromkeys(r["impl"] for r in rows):
            mine = [r for r in rows if r["impl"] == impl]
            for d in sorted({r["shape"].get("d", 0) for r in mine}):
                series = [r for r in mine if r["shape"].get("d", 0) == d]
                name = impl if not d else f"{impl}, d={d}"
                axis.plot([r["shape"][key] for r in series], [r["ms"] for r in series],
                          marker="o", label=name)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("ms (median), forward + backward" if part == "swa" else "ms (median)")
        axis.set_title("sliding-window attention" if part == "swa" else "dynamic MLP")
        if rows:
            axis.legend(fontsize=7)
    fig.suptitle(timed[0].get("device", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {PARTS}")
    parser.add_argument("--lengths", type=_ints, default=[8192, 32768, 131072])
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--slice", type=int, default=1024, help="query slice of the check")
    parser.add_argument("--chunks", type=_ints, default=[1024, 2048, 4096])
    parser.add_argument("--d-models", type=_ints, default=[384, 1024])
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}: choose from {PARTS}")
    torch.manual_seed(0)
    env = environment()
    records: list[dict] = []
    emit(records, env)
    benches = {
        "swa": bench_swa,
        "fast_mlp": bench_fast_mlp,
        "delta": bench_delta,
        "ttt_linear": bench_ttt_linear,
    }
    for part in parts:
        benches[part](args, env, records)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "kernels", "environment": env, "records": records[1:]}
    (args.out / "kernels.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(records[1:], args.out / "kernels.png")
    failed = [r for r in records[1:] if (r.get("check") or {}).get("passed") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
