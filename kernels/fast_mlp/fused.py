"""The dynamic MLP ``y = gelu(x @ up) @ down`` and its inner step, in Triton.

Every product is one tiled GEMM kernel (fp32 accumulation, any strides, so transposes are free)
with a fused epilogue, so no element-wise pass re-reads a (N, h) tensor:

- forward: ``pre = x @ up`` stores ``pre`` and ``act = gelu(pre)`` at once; ``y = act @ down``;
- backward: ``d_pre = (dy @ down^T) * gelu'(pre)`` in one kernel; then ``d_down = act^T @ dy``,
  ``d_up = x^T @ d_pre`` and ``dx = d_pre @ up^T``. The weight-gradient kernels can also write
  each tile's sum of squares, so the clipping norm costs no extra pass over the gradients.

The inner step has two phases so that several dynamic blocks share one global norm:
:func:`fast_mlp_grads` (or :func:`squared_norm` for gradients from elsewhere) gives gradients and
their squared norm; the caller adds the squared norms of every block and calls
:func:`clipped_sgd_` once on all the weights. :func:`fast_mlp_step_` chains both for one block.
Nothing synchronises with the host: a non-finite norm is detected on the device, where the update
kernel then writes nothing.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from memsdk.kernels.dispatch import FLOAT_DTYPES, interpreting, resolve_backend
from memsdk.kernels.fast_mlp.naive import (
    clipped_sgd_naive_,
    fast_mlp_grads_naive,
    fast_mlp_naive,
    squared_norm_naive,
)

__all__ = [
    "ClippedStep",
    "FastMLPGrads",
    "FastMLPStep",
    "clipped_sgd_",
    "fast_mlp",
    "fast_mlp_grads",
    "fast_mlp_step_",
    "squared_norm",
]

PLAIN, GELU, GELU_GRAD = 0, 1, 2  # GEMM epilogues
UPDATE_BLOCK = 1024
SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327


def _scratch(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the kernels write. Tests replace it with a NaN-filled allocation: a kernel
    that leaves an element unwritten then shows up as NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's own matmul setting, so the kernel is no less exact than the
    # torch path it replaces unless the user allowed TF32 there too.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


@functools.lru_cache(maxsize=16)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _gemm_config(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Tiles and launch settings. Small tiles in the interpreter exercise ragged edges on small
    shapes; on a GPU, 128 x 128 tiles unless that leaves streaming multiprocessors idle (the
    weight gradients of a small model are only d x h)."""
    if interpreting():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1, "num_stages": 1}
    block_k = 32 if dtype == torch.float32 else 64
    sms = _multiprocessors(
        device.index if device.index is not None else torch.cuda.current_device()
    )
    if triton.cdiv(rows, 128) * triton.cdiv(cols, 128) >= sms:
        return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": block_k, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": block_k, "num_warps": 4, "num_stages": 4}


@triton.jit
def _gelu(x):
    return 0.5 * x * (1.0 + tl.erf(x * SQRT_HALF))


@triton.jit
def _gelu_grad(x):
    return 0.5 * (1.0 + tl.erf(x * SQRT_HALF)) + x * tl.exp(-0.5 * x * x) * INV_SQRT_2PI


@triton.jit
def _gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    aux_ptr,
    squares_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    stride_xm,
    stride_xn,
    EPILOGUE: tl.constexpr,
    SQUARES: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """c (M, N) = a (M, K) @ b (K, N), then the epilogue:

    PLAIN: c as is. GELU: aux <- c (the pre-activation), c <- gelu(c). GELU_GRAD: c <- c *
    gelu'(aux). With SQUARES, squares[tile] <- the sum of squares of the stored tile.
    """
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    # Programs that run together share rows of a and columns of b: GROUP_M row tiles are
    # swept column by column so their operands stay in L2.
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % (GROUP_M * tiles_n)) % group_rows
    tile_n = (pid % (GROUP_M * tiles_n)) // group_rows
    rows = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (tile_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    inner = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start_k in range(0, K, BLOCK_K):
        ks = start_k + inner
        a = tl.load(
            a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
            (rows[:, None] < M) & (ks[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
            (ks[:, None] < K) & (cols[None, :] < N),
            other=0.0,
        )
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    live = (rows[:, None] < M) & (cols[None, :] < N)
    aux = aux_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xn
    if EPILOGUE == 1:
        tl.store(aux, acc.to(aux_ptr.dtype.element_ty), live)
        acc = _gelu(acc)
    if EPILOGUE == 2:
        acc = acc * _gelu_grad(tl.load(aux, live, other=0.0).to(tl.float32))
    out = acc.to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn, out, live)
    if SQUARES:
        # The squares of the values as stored (rounded to the weights' dtype), like a norm
        # taken afterwards would see them.
        stored = tl.where(live, out.to(tl.float32), 0.0)
        tl.store(squares_ptr + pid, tl.sum(tl.sum(stored * stored, axis=1), axis=0))


def _gemm(
    a: Tensor,
    b: Tensor,
    *,
    epilogue: int = PLAIN,
    aux: Tensor | None = None,
    squares: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """a (M, K) @ b (K, N) -> (c (M, N) contiguous in a's dtype, per-tile squares or None)."""
    (rows, depth), cols = a.shape, b.shape[1]
    config = _gemm_config(rows, cols, a.dtype, a.device)
    c = _scratch((rows, cols), dtype=a.dtype, device=a.device)
    tiles = triton.cdiv(rows, config["BLOCK_M"]) * triton.cdiv(cols, config["BLOCK_N"])
    partial = _scratch((tiles,), dtype=torch.float32, device=a.device) if squares else None
    aux = c if aux is None else aux
    _gemm_kernel[(tiles,)](
        a, b, c, aux, c if partial is None else partial, rows, cols, depth,
        *a.stride(), *b.stride(), *c.stride(), *aux.stride(),
        EPILOGUE=epilogue, SQUARES=squares,
        UPCAST=interpreting() and a.dtype != torch.float32,
        PRECISION=_dot_precision(a.dtype), GROUP_M=8, **config,
    )  # fmt: skip
    return c, partial


def _forward(rows: Tensor, up: Tensor, down: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """rows (N, d) -> (y (N, d), pre (N, h), act (N, h))."""
    pre = _scratch((rows.shape[0], up.shape[1]), dtype=rows.dtype, device=rows.device)
    act, _ = _gemm(rows, up, epilogue=GELU, aux=pre)
    y, _ = _gemm(act, down)
    return y, pre, act


class FastMLPFunction(torch.autograd.Function):
    """Triton forward and backward of ``gelu(x @ up) @ down`` on rows (N, d). A double backward
    (``create_graph=True``) differentiates through the torch reference instead."""

    @staticmethod
    def forward(ctx, rows: Tensor, up: Tensor, down: Tensor) -> Tensor:
        y, pre, act = _forward(rows, up, down)
        ctx.save_for_backward(rows, up, down, pre, act)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        rows, up, down, pre, act = ctx.saved_tensors
        wanted = ctx.needs_input_grad
        if torch.is_grad_enabled():
            inputs = [t for t, need in zip((rows, up, down), wanted, strict=True) if need]
            out = fast_mlp_naive(rows, up, down)
            grads = iter(torch.autograd.grad(out, inputs, dy.float(), create_graph=True))
            return tuple(
                next(grads).to(t.dtype) if need else None
                for t, need in zip((rows, up, down), wanted, strict=True)
            )
        d_pre, _ = _gemm(dy, down.t(), epilogue=GELU_GRAD, aux=pre)
        dx = _gemm(d_pre, up.t())[0] if wanted[0] else None
        d_up = _gemm(rows.t(), d_pre)[0] if wanted[1] else None
        d_down = _gemm(act.t(), dy)[0] if wanted[2] else None
        return dx, d_up, d_down


def _check_mlp(x: Tensor, up: Tensor, down: Tensor, grad_output: Tensor | None = None) -> None:
    named = [("x", x), ("up", up), ("down", down)]
    if grad_output is not None:
        named.append(("grad_output", grad_output))
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be (B, C, d) or (C, d), got shape {tuple(x.shape)}")
    if up.dim() != 2 or down.dim() != 2:
        raise ValueError(
            f"up must be (d, h) and down (h, d), got {tuple(up.shape)} and {tuple(down.shape)}: "
            "batched fast weights (B, d, h) take the torch path"
        )
    d, h = up.shape
    if x.shape[-1] != d or down.shape != (h, d):
        raise ValueError(
            f"x (..., {x.shape[-1]}), up {tuple(up.shape)} and down {tuple(down.shape)} do not "
            f"chain: expected up (d, h) = ({x.shape[-1]}, h) and down (h, d) = ({h}, {d})"
        )
    if grad_output is not None and grad_output.shape != x.shape:
        raise ValueError(
            f"grad_output must have the shape of the output {tuple(x.shape)}, "
            f"got {tuple(grad_output.shape)}"
        )
    if len({t.dtype for _, t in named}) > 1:
        raise ValueError(
            "x, up, down (and grad_output) must share one dtype, got "
            + ", ".join(f"{name} {t.dtype}" for name, t in named)
        )
    if len({t.device for _, t in named}) > 1:
        raise ValueError(
            "x, up, down (and grad_output) must be on one device, got "
            + ", ".join(f"{name} on {t.device}" for name, t in named)
        )


def fast_mlp(x: Tensor, up: Tensor, down: Tensor, *, backend: str = "auto") -> Tensor:
    """``gelu(x @ up) @ down`` (exact erf GELU), differentiable in x, up and down.

    Args:
        x: (B, C, d) or (C, d).
        up: (d, h), down: (h, d); one dtype (float32, bfloat16, float16) and device with x.
        backend: "auto" (Triton on CUDA, the torch reference on CPU), "triton" or "torch".

    Returns:
        The shape of x, in x's dtype.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: shapes that do not chain, mixed or unsupported dtypes, several devices, or
            a backend that cannot run here.
    """
    _check_mlp(x, up, down)
    if resolve_backend(backend, x, up, down) == "torch" or x.numel() == 0:
        return fast_mlp_naive(x, up, down).to(x.dtype)
    rows = x.reshape(-1, x.shape[-1])
    return FastMLPFunction.apply(rows, up, down).view(x.shape)


@dataclass(frozen=True)
class FastMLPGrads:
    """Phase one of an inner step. ``output`` (the shape of x) is the MLP's output under the
    weights before the step; ``grad_up`` (d, h) and ``grad_down`` (h, d) are in the weights'
    dtype; ``grad_input`` (the shape of x) is None unless asked for; ``squared_norm`` () fp32 is
    the sum of squares of grad_up and grad_down."""

    output: Tensor
    grad_up: Tensor
    grad_down: Tensor
    grad_input: Tensor | None
    squared_norm: Tensor


def fast_mlp_grads(
    x: Tensor,
    up: Tensor,
    down: Tensor,
    grad_output: Tensor,
    *,
    input_grad: bool = False,
    backend: str = "auto",
) -> FastMLPGrads:
    """The forward on a chunk and the gradients of ``<grad_output, gelu(x @ up) @ down>``:
    the weight gradients with their squared norm (fused into the gradient kernels), and the
    input gradient when ``input_grad``. Add the squared norms of every block before
    :func:`clipped_sgd_` to clip by the global norm.

    Args:
        x: (B, C, d) or (C, d); up (d, h); down (h, d); grad_output: the shape of x (the
            gradient of the loss with respect to the MLP's output).

    Raises:
        TypeError: an input is not a tensor.
        ValueError: as :func:`fast_mlp`, or a grad_output of another shape.
    """
    _check_mlp(x, up, down, grad_output)
    if resolve_backend(backend, x, up, down, grad_output) == "torch" or x.numel() == 0:
        y, d_up, d_down, dx = fast_mlp_grads_naive(x, up, down, grad_output)
        d_up, d_down = d_up.to(up.dtype), d_down.to(down.dtype)
        return FastMLPGrads(
            y.to(x.dtype),
            d_up,
            d_down,
            dx.to(x.dtype) if input_grad else None,
            squared_norm_naive([d_up, d_down]),
        )
    rows = x.reshape(-1, x.shape[-1])
    dy = grad_output.reshape(-1, x.shape[-1])
    y, pre, act = _forward(rows, up, down)
    d_pre, _ = _gemm(dy, down.t(), epilogue=GELU_GRAD, aux=pre)
    d_up, up_squares = _gemm(rows.t(), d_pre, squares=True)
    d_down, down_squares = _gemm(act.t(), dy, squares=True)
    dx = _gemm(d_pre, up.t())[0].view(x.shape) if input_grad else None
    squared = up_squares.sum() + down_squares.sum()
    return FastMLPGrads(y.view(x.shape), d_up, d_down, dx, squared)


@triton.jit
def _squares_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets, offsets < numel, other=0.0).to(tl.float32)
    tl.store(out_ptr + tl.program_id(0), tl.sum(x * x, axis=0))


def squared_norm(tensors: list[Tensor], *, backend: str = "auto") -> Tensor:
    """The sum of squares of every entry of ``tensors``, fp32 () on their device: phase one of
    :func:`clipped_sgd_` for gradients that come from elsewhere (e.g. autograd). Deterministic:
    per-block partial sums, then one sum.

    Raises:
        ValueError: no tensors, a non-float tensor, or tensors on several devices.
    """
    _check_list("tensors", tensors)
    if resolve_backend(backend, *tensors) == "torch":
        return squared_norm_naive(tensors)
    partials = []
    for t in tensors:
        flat = t.contiguous().view(-1)
        blocks = triton.cdiv(flat.numel(), UPDATE_BLOCK)
        if not blocks:
            continue
        partial = _scratch((blocks,), dtype=torch.float32, device=t.device)
        _squares_kernel[(blocks,)](flat, partial, flat.numel(), BLOCK=UPDATE_BLOCK)
        partials.append(partial)
    if not partials:
        return torch.zeros((), dtype=torch.float32, device=tensors[0].device)
    return torch.cat(partials).sum()


@triton.jit
def _sgd_kernel(
    w_ptr,
    g_ptr,
    w0_ptr,
    squares_ptr,
    numel,
    lr,
    max_norm,
    decay,
    DECAY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    norm = tl.sqrt_rn(tl.load(squares_ptr))
    accepted = (norm == norm) & (norm != float("inf"))  # NaN is the only value unequal to itself
    factor = tl.minimum(tl.div_rn(max_norm, norm + 1e-6), 1.0)
    live = offsets < numel
    w = tl.load(w_ptr + offsets, live, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offsets, live, other=0.0).to(tl.float32)
    new = w - (lr * factor) * g
    if DECAY:
        new = new - decay * (w - tl.load(w0_ptr + offsets, live, other=0.0).to(tl.float32))
    # A rejected step writes nothing: no element is below a limit of 0.
    limit = tl.where(accepted, numel, 0)
    tl.store(w_ptr + offsets, new.to(w_ptr.dtype.element_ty), offsets < limit)


@dataclass(frozen=True)
class ClippedStep:
    """What :func:`clipped_sgd_` did, as 0-d tensors on the weights' device (no host
    synchronisation; ``bool(step.accepted)`` synchronises): the global gradient ``norm``, the
    clip ``factor`` min(1, max_norm / (norm + 1e-6)), and whether the step was ``accepted``
    (False when the norm was not finite: then no weight was written)."""

    norm: Tensor
    factor: Tensor
    accepted: Tensor


def _check_list(name: str, tensors: list[Tensor]) -> None:
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise ValueError(f"{name} must be a non-empty list of tensors")
    for t in tensors:
        if not isinstance(t, Tensor) or t.dtype not in FLOAT_DTYPES:
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must hold float32, bfloat16 or float16 tensors, got {got}")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{name} must be on one device, got {sorted(map(str, devices))}")


def clipped_sgd_(
    weights: list[Tensor],
    grads: list[Tensor],
    squared_norm: Tensor,
    *,
    lr: float,
    max_norm: float,
    initial: list[Tensor] | None = None,
    decay: float = 0.0,
    backend: str = "auto",
) -> ClippedStep:
    """Phase two of an inner step: the clipped SGD step of ``inner_update`` in place,
    ``w <- w - lr * factor * g - decay * (w - w0)`` with ``factor = min(1, max_norm / (norm +
    1e-6))`` and ``norm = sqrt(squared_norm)`` (the decay term uses w from before the step).
    Arithmetic in fp32, one rounding to each weight's dtype. A non-finite norm writes nothing.

    Args:
        weights: the fast weights, contiguous, updated in place.
        grads: one gradient per weight, of its shape.
        squared_norm: () the sum of squares of all the gradients (of every block sharing the
            clip), e.g. the sum of :attr:`FastMLPGrads.squared_norm` or :func:`squared_norm`.
        lr, max_norm: the inner learning rate (>= 0) and the clipping norm (> 0).
        initial: the weights to decay toward, one per weight; needed when ``decay`` > 0.
        decay: the fraction of (w - w0) removed per step, in [0, 1).

    Raises:
        ValueError: lists of other lengths or shapes, weights that are not contiguous, tensors
            on several devices, a missing ``initial`` with decay, or a bad lr, max_norm or decay.
    """
    _check_list("weights", weights)
    _check_list("grads", grads)
    everything = [*weights, *grads, squared_norm]
    if decay:
        if initial is None:
            raise ValueError("decay > 0 needs initial: the weights to decay toward")
        _check_list("initial", initial)
        everything += initial
    if len(grads) != len(weights) or (decay and len(initial) != len(weights)):
        raise ValueError(
            f"one gradient (and one initial weight) per weight: got {len(weights)} weights, "
            f"{len(grads)} grads" + (f", {len(initial)} initial" if decay else "")
        )
    for i, (weight, grad) in enumerate(zip(weights, grads, strict=True)):
        if grad.shape != weight.shape or (decay and initial[i].shape != weight.shape):
            raise ValueError(
                f"weight {i} has shape {tuple(weight.shape)} but its gradient (or initial "
                f"weight) has shape {tuple(grad.shape)}"
                + (f" ({tuple(initial[i].shape)})" if decay else "")
            )
        if not weight.is_contiguous():
            raise ValueError(f"weight {i} must be contiguous: update weight.contiguous() instead")
    if not isinstance(squared_norm, Tensor) or squared_norm.numel() != 1:
        raise ValueError("squared_norm must be a one-element tensor (the sum of squares)")
    if len({t.device for t in everything}) > 1:
        raise ValueError(
            "weights, grads, squared_norm and initial must be on one device, got "
            f"{sorted({str(t.device) for t in everything})}"
        )
    if not (math.isfinite(lr) and lr >= 0) or not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"lr must be >= 0 and max_norm > 0, got lr={lr}, max_norm={max_norm}")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if resolve_backend(backend, *everything) == "torch":
        return ClippedStep(
            *clipped_sgd_naive_(
                weights, grads, squared_norm, lr=lr, max_norm=max_norm, initial=initial,
                decay=decay,
            )
        )  # fmt: skip
    squares = squared_norm.reshape(1).float()
    for i, (weight, grad) in enumerate(zip(weights, grads, strict=True)):
        if not weight.numel():
            continue
        start = initial[i].contiguous() if decay else weight
        _sgd_kernel[(triton.cdiv(weight.numel(), UPDATE_BLOCK),)](
            weight, grad.contiguous(), start, squares, weight.numel(), float(lr),
            float(max_norm), float(decay), DECAY=bool(decay), BLOCK=UPDATE_BLOCK,
        )  # fmt: skip
    norm = squares[0].sqrt()
    return ClippedStep(norm, (max_norm / (norm + 1e-6)).clamp(max=1.0), torch.isfinite(norm))


@dataclass(frozen=True)
class FastMLPStep:
    """What :func:`fast_mlp_step_` did: ``output`` under the weights before the step, the
    gradients it applied, and the :class:`ClippedStep`."""

    output: Tensor
    grad_up: Tensor
    grad_down: Tensor
    step: ClippedStep


def fast_mlp_step_(
    x: Tensor,
    up: Tensor,
    down: Tensor,
    grad_output: Tensor,
    *,
    lr: float,
    max_norm: float,
    up0: Tensor | None = None,
    down0: Tensor | None = None,
    decay: float = 0.0,
    backend: str = "auto",
) -> FastMLPStep:
    """One inner step of a single dynamic MLP, clipped by its own gradient norm: the forward on
    the chunk, the weight gradients from ``grad_output`` and the update of ``up`` and ``down``
    in place (:func:`fast_mlp_grads` then :func:`clipped_sgd_`). For several blocks sharing one
    norm, call those two yourself.

    Args:
        x: (B, C, d) or (C, d); up (d, h) and down (h, d), contiguous; grad_output: the shape
            of x.
        lr, max_norm, decay: as :func:`clipped_sgd_`; up0 and down0 are the initial weights,
            needed when decay > 0.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: as :func:`fast_mlp_grads` and :func:`clipped_sgd_`.
    """
    grads = fast_mlp_grads(x, up, down, grad_output, backend=backend)
    initial = None if up0 is None and down0 is None else [up0, down0]
    step = clipped_sgd_(
        [up, down],
        [grads.grad_up, grads.grad_down],
        grads.squared_norm,
        lr=lr,
        max_norm=max_norm,
        initial=initial,
        decay=decay,
        backend=backend,
    )
    return FastMLPStep(grads.output, grads.grad_up, grads.grad_down, step)
