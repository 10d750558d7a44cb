"""TTT-Linear forward + backward: memsdk's Triton kernel against flash-linear-attention's
``chunk_ttt_linear`` (PyPI ``flash-linear-attention``), on CUDA in bf16, gated by correctness.

:func:`bench_ttt_linear` is called by ``benchmarks/kernels.py``; run alone it prints one JSON
line::

    python benchmarks/ttt_linear_bench.py

Mapping fla's conventions onto memsdk's (``memsdk.kernels.ttt_linear``):

- layouts agree: q, k, v (B, T, H, D); fla's ``w``, ``b`` are the inner LayerNorm's weight and
  bias (memsdk's ``ln_weight``, ``ln_bias``); fla's ``initial_state`` (B, H, D, D) and
  ``initial_state_bias`` (B, H, 1, D) are memsdk's ``initial_state = (W, b[:, :, 0])``;
  ``chunk_size`` is ``mini_batch_size``;
- fla multiplies q by ``scale`` (default 1 / sqrt(D)); the paper does not: fla runs with
  ``scale=1``;
- learning rates: memsdk (as the paper's implementation) weights token j's gradient, as read by
  token i of the same mini-batch, by ``position_scale[i] * eta_j``; fla by ``eta_i`` alone (a
  (B, T, H, 1) tensor, one rate per reading token). They agree when memsdk's ``eta`` is
  constant along the sequence: fla gets ``eta[t] = position_scale[t % 16] * c``. The values
  are chosen exactly representable in bf16 (``c`` a power of two, the scales rounded first) so
  both kernels see the same numbers;
- outputs: memsdk returns the paper's ``q + LN(Zq)`` (``Zq = q W_t + b_t``: the inner model
  ``f(x) = x + LN(x W + b)`` applied to q); fla returns ``Zq + LN(Zq)`` (its residual is the
  linear output, not the query). The common ground is ``LN(Zq)``: memsdk's ``o - q``, and from
  fla's ``o`` with a LayerNorm weight that is one number ``g`` per head (used here),
  ``LN(Zq) = g * standardise(o - bias) + bias`` (``o - bias = Zq + g (Zq - mean) / sigma`` has
  the mean of ``Zq`` and the direction of its centred part; the eps of the LayerNorm moves the
  result by about eps / var). The final states (W, b) are compared directly.

fla keeps the state in fp32 but rounds it, and the inner gradients, to bf16 inside its products;
memsdk works in fp32 throughout. The tolerance (``TOLERANCE``) covers that; the kernel is also
checked against memsdk's fp32 reference on the first ``REFERENCE_TOKENS`` tokens. A speed-up is
reported only when both checks pass; without CUDA every figure is null (unmeasured).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

import torch

from memsdk.kernels.dispatch import relative_rms
from memsdk.kernels.ttt_linear import ttt_linear
from memsdk.kernels.ttt_linear.naive import ttt_linear_naive

__all__ = ["DEFAULT_SHAPES", "bench_ttt_linear"]

DEFAULT_SHAPES = ((1, 8, 2048), (2, 16, 4096), (4, 16, 8192), (8, 16, 16384))  # (B, H, T)
TOLERANCE = 5e-2  # relative RMS of bf16 kernels that round differently inside
REFERENCE_TOKENS = 2048


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu (no CUDA device)"


def _fla() -> tuple[Callable | None, str]:
    try:
        from fla.ops.ttt import chunk_ttt_linear

        version = metadata.version("fla-core")
    except Exception as exc:  # fla or one of its dependencies is missing or broken
        return None, f"flash-linear-attention unavailable: {type(exc).__name__}: {exc}"
    return chunk_ttt_linear, version


def _inputs(batch: int, heads: int, length: int, dim: int, mini_batch: int, dtype, seed, device):
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    q, k, v = (randn(batch, length, heads, dim).div(dim**0.5).to(dtype) for _ in range(3))
    steps = torch.arange(1, mini_batch + 1, device=device, dtype=torch.float32)
    position_scale = (1 / steps).to(dtype).float()
    rate = 2.0 ** -torch.randint(6, 8, (heads,), generator=g, device=device).float()  # c_h
    eta = rate.expand(batch, length, heads).contiguous()
    ln_weight = (1 + 0.25 * torch.rand(heads, 1, generator=g, device=device)).expand(heads, dim)
    ln_weight = ln_weight.to(dtype).float().contiguous()
    ln_bias = (0.1 * randn(heads, dim)).to(dtype).float()
    state_w = 0.02 * randn(batch, heads, dim, dim)
    state_b = 0.02 * randn(batch, heads, dim)
    return q, k, v, eta, ln_weight, ln_bias, state_w, state_b, position_scale


def _fla_eta(eta: torch.Tensor, position_scale: torch.Tensor, dtype) -> torch.Tensor:
    """fla's per-reading-token rate, position_scale[t % m] * c: (B, T, H, 1)."""
    length, mini_batch = eta.shape[1], position_scale.numel()
    scale = position_scale.repeat(-(-length // mini_batch))[:length]
    return (scale[None, :, None] * eta)[..., None].to(dtype)


def _ln_part_of_fla_output(o: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor):
    """LN(Zq) from fla's ``Zq + LN(Zq)``, for a LayerNorm weight constant within each head."""
    shifted = o.float() - ln_bias
    centred = shifted - shifted.mean(-1, keepdim=True)
    standard = centred / centred.pow(2).mean(-1, keepdim=True).sqrt()
    return ln_weight[:, :1] * standard + ln_bias


def _time_ms(step: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _unmeasured(shape: tuple[int, int, int], common: dict, note: str) -> dict:
    batch, heads, length = shape
    return {
        **common,
        "B": batch,
        "H": heads,
        "T": length,
        "memsdk_ms": None,
        "fla_ms": None,
        "speedup": None,
        "check": None,
        "note": note,
    }


def _bench_shape(
    shape: tuple[int, int, int],
    chunk_ttt_linear: Callable | None,
    fla_note: str,
    *,
    head_dim: int,
    mini_batch_size: int,
    warmup: int,
    repeats: int,
    seed: int,
    device: str = "cuda",
) -> dict:
    """One record of :func:`bench_ttt_linear` (timed on CUDA; ``device="cpu"`` runs the same
    logic under the Triton interpreter, for checking this script)."""
    dtype = torch.bfloat16
    batch, heads, length = shape
    tensors = _inputs(batch, heads, length, head_dim, mini_batch_size, dtype, seed, device)
    q, k, v, eta, ln_weight, ln_bias, state_w, state_b, position_scale = tensors
    for t in (q, k, v, eta, ln_weight, ln_bias, state_w, state_b):
        t.requires_grad_(True)
    do = torch.randn_like(q)

    def ours(keep: bool = False):
        o, final = ttt_linear(
            q,
            k,
            v,
            eta,
            ln_weight,
            ln_bias,
            initial_state=(state_w, state_b),
            position_scale=position_scale,
            mini_batch_size=mini_batch_size,
            output_final_state=True,
            backend="triton",
        )
        if keep:
            return o.detach(), tuple(s.detach() for s in final)
        o.backward(do)
        return None

    check: dict = {}
    with torch.no_grad():
        o, (final_w, final_b) = ours(keep=True)
        cut = min(length, REFERENCE_TOKENS)
        expected, _ = ttt_linear_naive(
            *(t[:, :cut] for t in (q, k, v, eta)),
            ln_weight,
            ln_bias,
            initial_state=(state_w, state_b),
            position_scale=position_scale,
            mini_batch_size=mini_batch_size,
        )
        check["reference_output"] = relative_rms(o[:, :cut], expected)
    record = {"B": batch, "H": heads, "T": length, "memsdk_ms": _time_ms(ours, warmup, repeats)}
    if chunk_ttt_linear is None:
        check["passed"] = False
        return {**record, "fla_ms": None, "speedup": None, "check": check, "note": fla_note}

    fla_q, fla_k, fla_v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    fla_eta = _fla_eta(eta.detach(), position_scale, dtype).requires_grad_(True)
    fla_w, fla_b = (t.detach().to(dtype).requires_grad_(True) for t in (ln_weight, ln_bias))
    fla_h0 = state_w.detach().clone().requires_grad_(True)
    fla_hb0 = state_b.detach()[:, :, None].clone().requires_grad_(True)

    def theirs(keep: bool = False):
        o, h, hb = chunk_ttt_linear(
            fla_q,
            fla_k,
            fla_v,
            fla_w,
            fla_b,
            fla_eta,
            scale=1.0,
            chunk_size=mini_batch_size,
            initial_state=fla_h0,
            initial_state_bias=fla_hb0,
            output_final_state=True,
        )
        if keep:
            return o.detach(), h.detach(), hb.detach()
        o.backward(do)
        return None

    with torch.no_grad():
        fla_o, fla_h, fla_hb = theirs(keep=True)
    ln_part = _ln_part_of_fla_output(fla_o, ln_weight.detach(), ln_bias.detach())
    check["fla_output_ln_part"] = relative_rms(o.float() - q.detach().float(), ln_part)
    check["fla_final_W"] = relative_rms(final_w, fla_h)
    check["fla_final_b"] = relative_rms(final_b, fla_hb[:, :, 0])
    check["passed"] = all(value < TOLERANCE for value in check.values())
    fla_ms = _time_ms(theirs, warmup, repeats)
    passed = check["passed"]
    return {
        **record,
        "fla_ms": fla_ms,
        "speedup": fla_ms / record["memsdk_ms"] if passed else None,
        "check": check,
        "note": (
            "compared on LN(Zq) and the final state (see the module docstring)"
            if passed
            else "the check failed: no speed-up reported"
        ),
    }


def bench_ttt_linear(
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    *,
    head_dim: int = 64,
    mini_batch_size: int = 16,
    warmup: int = 3,
    repeats: int = 10,
    seed: int = 0,
) -> list[dict]:
    """Median milliseconds of one forward + backward (gradients of q, k, v, eta, the LayerNorm
    and the initial state) of memsdk's kernel and of fla's ``chunk_ttt_linear``, per shape
    ``(B, H, T)``, in bf16.

    Returns:
        One record per shape: ``device``, ``dtype``, the shape, ``memsdk_ms``, ``fla_ms``,
        ``speedup`` (fla time over memsdk time, only when ``check["passed"]``), ``check``
        (relative RMS of memsdk's output against its fp32 reference, and of the output's common
        part and the final state against fla) and a ``note``. Without CUDA every figure is None:
        unmeasured, never estimated.
    """
    common = {
        "op": "ttt_linear",
        "device": _device_name(),
        "dtype": "bfloat16",
        "D": head_dim,
        "mini_batch": mini_batch_size,
        "tolerance": TOLERANCE,
    }
    if not torch.cuda.is_available():
        note = "unmeasured: no CUDA device (the Triton kernels are timed only on a GPU)"
        return [_unmeasured(shape, {**common, "fla": None}, note) for shape in shapes]
    chunk_ttt_linear, fla_note = _fla()
    common["fla"] = fla_note if chunk_ttt_linear else None
    records = []
    for shape in shapes:
        record = _bench_shape(
            shape,
            chunk_ttt_linear,
            fla_note,
            head_dim=head_dim,
            mini_batch_size=mini_batch_size,
            warmup=warmup,
            repeats=repeats,
            seed=seed,
        )
        records.append({**common, **record})
        torch.cuda.empty_cache()
    return records


def main() -> int:
    print(json.dumps(bench_ttt_linear()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
