"""TTT-Linear in Triton: the chunked (mini-batch) dual form, forward and backward.

The math is that of :mod:`.naive`. One program owns one (sequence, head) and scans its
mini-batches in order, holding the state ``(W, b)`` in fp32 registers: the update of a mini-batch
depends on the state through a LayerNorm, so mini-batches cannot be combined associatively and
the scan is sequential (parallelism comes from batch x heads; inside a mini-batch everything is
matrix products).

Dual form of one mini-batch (rows i, j = 0..n-1; K, Q, V (n, D); c the per-token rates, s the
position scales; ``G`` (n, D) the inner gradients d loss_j / d z_j at the state ``(W, b)``):

    Z     = K W + b,    G = LN-backward(Z, target V - K)
    P     = tril(s_i c_j * (q_i . k_j + 1))                  (n, n)
    Zq    = Q W + b - P G                                    = q_i W_i + b_i, without any W_i
    O     = Q + LN(Zq)
    W'    = W - s_last K^T (c * G),   b' = b - s_last sum_j c_j g_j

The forward saves the state each mini-batch starts from (B, H, NT, D, D); the backward is a
reverse scan over mini-batches that recomputes each one from its saved state and carries the
gradient of the state backwards, ending with the gradient of the initial state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from memsdk.kernels.dispatch import FLOAT_DTYPES, resolve_backend
from memsdk.kernels.ttt_linear.naive import ttt_linear_naive

__all__ = ["MAX_HEAD_DIM", "MAX_MINI_BATCH", "ttt_linear"]

MAX_HEAD_DIM = 128  # the state and its gradient live in registers: D x D fp32 each
MAX_MINI_BATCH = 64


@triton.jit
def _ln_rows(z, col, D: tl.constexpr, eps):
    """Row-wise LayerNorm statistics of z (BT, BD) over its first D columns: the normalised
    rows (zero in padding columns) and 1 / sigma (BT,)."""
    mean = tl.sum(z, axis=1) / D
    centered = tl.where(col[None, :], z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / D + eps)
    return centered * rstd[:, None], rstd


@triton.jit
def _ln_backward(dx, x, rstd, col, D: tl.constexpr):
    """d/dz of a LayerNorm's normalised rows x (BT, BD), given d/dx: the part through x only."""
    mean_dx = tl.sum(dx, axis=1) / D
    mean_dxx = tl.sum(dx * x, axis=1) / D
    dz = (dx - mean_dx[:, None] - x * mean_dxx[:, None]) * rstd[:, None]
    return tl.where(col[None, :], dz, 0.0)


@triton.jit
def _ttt_linear_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    eta_ptr,
    scale_ptr,
    lnw_ptr,
    lnb_ptr,
    w0_ptr,
    b0_ptr,
    o_ptr,
    states_w_ptr,
    states_b_ptr,
    final_w_ptr,
    final_b_ptr,
    T,
    eps,
    H: tl.constexpr,
    D: tl.constexpr,
    MB: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    SAVE_STATES: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid.to(tl.int64)
    batch, head = bh // H, bh % H
    r = tl.arange(0, BT)
    d = tl.arange(0, BD)
    col = d < D
    square = (d[:, None] * D + d[None, :]).to(tl.int64)
    square_mask = col[:, None] & col[None, :]
    state_w = tl.load(w0_ptr + bh * D * D + square, mask=square_mask, other=0.0).to(tl.float32)
    state_b = tl.load(b0_ptr + bh * D + d, mask=col, other=0.0).to(tl.float32)
    lnw = tl.load(lnw_ptr + head * D + d, mask=col, other=0.0).to(tl.float32)
    lnb = tl.load(lnb_ptr + head * D + d, mask=col, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + r, mask=r < MB, other=0.0)
    causal = r[:, None] >= r[None, :]
    nt = tl.cdiv(T, MB)
    for n in range(nt):
        rows = n * MB + r
        live = (r < MB) & (rows < T)
        tile = live[:, None] & col[None, :]
        offs = ((batch * T + rows.to(tl.int64)) * H + head)[:, None] * D + d[None, :]
        q = tl.load(q_ptr + offs, mask=tile, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + offs, mask=tile, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=tile, other=0.0).to(tl.float32)
        rate = tl.load(eta_ptr + (batch * T + rows) * H + head, mask=live, other=0.0)
        if SAVE_STATES:
            slot = bh * nt + n
            tl.store(states_w_ptr + slot * D * D + square, state_w, mask=square_mask)
            tl.store(states_b_ptr + slot * D + d, state_b, mask=col)
        z = tl.dot(k, state_w, input_precision=PRECISION) + state_b[None, :]
        x, rstd = _ln_rows(z, col, D, eps)
        g = lnw[None, :] * (lnw[None, :] * x + lnb[None, :] - v + k)
        grad = _ln_backward(g, x, rstd, col, D)  # (BT, BD) d loss_j / d z_j
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) + 1.0
        mix = tl.where(causal, scale[:, None] * rate[None, :] * scores, 0.0)
        zq = (
            tl.dot(q, state_w, input_precision=PRECISION)
            + state_b[None, :]
            - tl.dot(mix, grad, input_precision=PRECISION)
        )
        xq, _ = _ln_rows(zq, col, D, eps)
        out = q + lnw[None, :] * xq + lnb[None, :]
        tl.store(o_ptr + offs, out.to(o_ptr.dtype.element_ty), mask=tile)
        last = tl.minimum(MB, T - n * MB) - 1
        step = tl.sum(tl.where(r == last, scale, 0.0)) * rate  # (BT,) s_last * c_j
        state_w -= tl.dot(tl.trans(k * step[:, None]), grad, input_precision=PRECISION)
        state_b -= tl.sum(step[:, None] * grad, axis=0)
    tl.store(final_w_ptr + bh * D * D + square, state_w, mask=square_mask)
    tl.store(final_b_ptr + bh * D + d, state_b, mask=col)


@triton.jit
def _ttt_linear_bwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    eta_ptr,
    scale_ptr,
    lnw_ptr,
    lnb_ptr,
    states_w_ptr,
    states_b_ptr,
    do_ptr,
    dfinal_w_ptr,
    dfinal_b_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    deta_ptr,
    dscale_ptr,
    dlnw_ptr,
    dlnb_ptr,
    dw0_ptr,
    db0_ptr,
    T,
    eps,
    H: tl.constexpr,
    D: tl.constexpr,
    MB: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    HAS_DFINAL: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid.to(tl.int64)
    batch, head = bh // H, bh % H
    r = tl.arange(0, BT)
    d = tl.arange(0, BD)
    col = d < D
    square = (d[:, None] * D + d[None, :]).to(tl.int64)
    square_mask = col[:, None] & col[None, :]
    lnw = tl.load(lnw_ptr + head * D + d, mask=col, other=0.0).to(tl.float32)
    lnb = tl.load(lnb_ptr + head * D + d, mask=col, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + r, mask=r < MB, other=0.0)
    causal = r[:, None] >= r[None, :]
    # The gradient of the state after the current mini-batch, carried backwards.
    if HAS_DFINAL:
        dstate_w = tl.load(dfinal_w_ptr + bh * D * D + square, mask=square_mask, other=0.0)
        dstate_b = tl.load(dfinal_b_ptr + bh * D + d, mask=col, other=0.0)
    else:
        dstate_w = tl.zeros((BD, BD), dtype=tl.float32)
        dstate_b = tl.zeros((BD,), dtype=tl.float32)
    dlnw = tl.zeros((BD,), dtype=tl.float32)
    dlnb = tl.zeros((BD,), dtype=tl.float32)
    nt = tl.cdiv(T, MB)
    for back in range(nt):
        n = nt - 1 - back
        rows = n * MB + r
        live = (r < MB) & (rows < T)
        tile = live[:, None] & col[None, :]
        offs = ((batch * T + rows.to(tl.int64)) * H + head)[:, None] * D + d[None, :]
        q = tl.load(q_ptr + offs, mask=tile, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + offs, mask=tile, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=tile, other=0.0).to(tl.float32)
        do = tl.load(do_ptr + offs, mask=tile, other=0.0).to(tl.float32)
        rate_offs = (batch * T + rows) * H + head
        rate = tl.load(eta_ptr + rate_offs, mask=live, other=0.0)
        slot = bh * nt + n
        state_w = tl.load(states_w_ptr + slot * D * D + square, mask=square_mask, other=0.0)
        state_b = tl.load(states_b_ptr + slot * D + d, mask=col, other=0.0)

        # Recompute the mini-batch's forward pass from the state it started from.
        z = tl.dot(k, state_w, input_precision=PRECISION) + state_b[None, :]
        x, rstd = _ln_rows(z, col, D, eps)
        err = lnw[None, :] * x + lnb[None, :] - v + k  # LN(z) - (v - k)
        g = lnw[None, :] * err
        grad = _ln_backward(g, x, rstd, col, D)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) + 1.0
        pos_rate = scale[:, None] * rate[None, :]  # s_i c_j
        mix = tl.where(causal, pos_rate * scores, 0.0)
        zq = (
            tl.dot(q, state_w, input_precision=PRECISION)
            + state_b[None, :]
            - tl.dot(mix, grad, input_precision=PRECISION)
        )
        xq, rstd_q = _ln_rows(zq, col, D, eps)
        last = tl.minimum(MB, T - n * MB) - 1
        scale_last = tl.sum(tl.where(r == last, scale, 0.0))
        step = scale_last * rate

        # O = Q + LN(Zq)
        dq = do
        dlnw += tl.sum(do * xq, axis=0)
        dlnb += tl.sum(do, axis=0)
        dzq = _ln_backward(lnw[None, :] * do, xq, rstd_q, col, D)

        # W' = W - K^T (step * G), b' = b - sum_j step_j g_j
        k_dstate = tl.dot(k, dstate_w, input_precision=PRECISION)  # (BT, BD)
        dgrad = -step[:, None] * (k_dstate + dstate_b[None, :])
        dk = -step[:, None] * tl.dot(grad, tl.trans(dstate_w), input_precision=PRECISION)
        dstep = -tl.sum((k_dstate + dstate_b[None, :]) * grad, axis=1)  # (BT,)

        # Zq = Q W + b - P G
        dq += tl.dot(dzq, tl.trans(state_w), input_precision=PRECISION)
        dstate_w += tl.dot(tl.trans(q), dzq, input_precision=PRECISION)
        dstate_b += tl.sum(dzq, axis=0)
        dmix = tl.where(causal, -tl.dot(dzq, tl.trans(grad), input_precision=PRECISION), 0.0)
        dgrad -= tl.dot(tl.trans(mix), dzq, input_precision=PRECISION)

        # P = tril(s_i c_j (q_i . k_j + 1))
        dpos_rate = dmix * scores
        dscores = dmix * pos_rate
        dq += tl.dot(dscores, k, input_precision=PRECISION)
        dk += tl.dot(tl.trans(dscores), q, input_precision=PRECISION)
        drate = tl.sum(dpos_rate * scale[:, None], axis=0) + dstep * scale_last
        dscale = tl.sum(dpos_rate * rate[None, :], axis=1)
        dscale += tl.where(r == last, tl.sum(dstep * rate), 0.0)

        # G = (g - mean(g) - x mean(g x)) / sigma, with g = lnw * err and x = (z - mean) / sigma
        mean_gx = tl.sum(g * x, axis=1) / D
        dsigma = -tl.sum(dgrad * grad, axis=1) * rstd
        mean_dgrad = tl.sum(dgrad, axis=1) * rstd / D
        mean_dgrad_x = tl.sum(dgrad * x, axis=1) * rstd / D
        dg = dgrad * rstd[:, None] - mean_dgrad[:, None] - x * mean_dgrad_x[:, None]
        dg = tl.where(col[None, :], dg, 0.0)
        dx = -(mean_gx * rstd)[:, None] * dgrad - g * mean_dgrad_x[:, None]
        derr = lnw[None, :] * dg
        dlnw += tl.sum(dg * err + derr * x, axis=0)
        dlnb += tl.sum(derr, axis=0)
        dx += lnw[None, :] * derr
        dv = -derr
        dk += derr
        dz = _ln_backward(dx, x, rstd, col, D) + dsigma[:, None] * x / D

        # Z = K W + b
        dk += tl.dot(dz, tl.trans(state_w), input_precision=PRECISION)
        dstate_w += tl.dot(tl.trans(k), dz, input_precision=PRECISION)
        dstate_b += tl.sum(dz, axis=0)

        tl.store(dq_ptr + offs, dq.to(dq_ptr.dtype.element_ty), mask=tile)
        tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=tile)
        tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=tile)
        tl.store(deta_ptr + rate_offs, drate, mask=live)
        tl.store(dscale_ptr + rate_offs, dscale, mask=live)
    tl.store(dw0_ptr + bh * D * D + square, dstate_w, mask=square_mask)
    tl.store(db0_ptr + bh * D + d, dstate_b, mask=col)
    tl.store(dlnw_ptr + bh * D + d, dlnw, mask=col)
    tl.store(dlnb_ptr + bh * D + d, dlnb, mask=col)


def _blocks(mini_batch_size: int, dim: int) -> tuple[int, int]:
    # tl.dot needs every side to be at least 16.
    return max(16, triton.next_power_of_2(mini_batch_size)), max(16, triton.next_power_of_2(dim))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products; half-precision inputs carry more rounding than TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _num_warps(dim: int) -> int:
    return 4 if dim <= 32 else 8


def _empty(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Every buffer the launchers allocate (tests swap in NaN-filled ones)."""
    return torch.empty(shape, device=like.device, dtype=like.dtype if dtype is None else dtype)


def ttt_linear_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    scale: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    state_w: Tensor,
    state_b: Tensor,
    *,
    mini_batch_size: int,
    eps: float,
    save_states: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Launch the forward kernel on contiguous inputs (q, k, v (B, T, H, D); eta (B, T, H)
    fp32; scale (mini_batch_size,) fp32; state (B, H, D, D), (B, H, D) fp32).

    Returns o (B, T, H, D) in q's dtype, the final state, and when ``save_states`` the state
    each mini-batch started from: (B, H, NT, D, D) and (B, H, NT, D) fp32.
    """
    batch, length, heads, dim = q.shape
    chunks = triton.cdiv(length, mini_batch_size)
    o = _empty(q.shape, q)
    final_w = _empty((batch, heads, dim, dim), q, torch.float32)
    final_b = _empty((batch, heads, dim), q, torch.float32)
    if save_states:
        states_w = _empty((batch, heads, chunks, dim, dim), q, torch.float32)
        states_b = _empty((batch, heads, chunks, dim), q, torch.float32)
    else:
        states_w = states_b = final_w  # never written: SAVE_STATES is off
    block_t, block_d = _blocks(mini_batch_size, dim)
    _ttt_linear_fwd_kernel[(batch * heads,)](
        q,
        k,
        v,
        eta,
        scale,
        ln_weight,
        ln_bias,
        state_w,
        state_b,
        o,
        states_w,
        states_b,
        final_w,
        final_b,
        length,
        eps,
        H=heads,
        D=dim,
        MB=mini_batch_size,
        BT=block_t,
        BD=block_d,
        SAVE_STATES=save_states,
        PRECISION=_precision(q.dtype),
        num_warps=_num_warps(dim),
    )
    if not save_states:
        return o, final_w, final_b, None, None
    return o, final_w, final_b, states_w, states_b


def ttt_linear_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    scale: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    states_w: Tensor,
    states_b: Tensor,
    do: Tensor,
    dfinal_w: Tensor | None,
    dfinal_b: Tensor | None,
    *,
    mini_batch_size: int,
    eps: float,
) -> tuple[Tensor, ...]:
    """Launch the backward kernel. Returns dq, dk, dv (B, T, H, D) in q's dtype, deta (B, T, H)
    and dscale (mini_batch_size,) fp32, dln_weight, dln_bias (H, D) and the gradient of the
    initial state (B, H, D, D), (B, H, D), fp32."""
    batch, length, heads, dim = q.shape
    dq, dk, dv = (_empty(q.shape, q) for _ in range(3))
    deta, dscale_tokens = _empty(eta.shape, eta), _empty(eta.shape, eta)
    dlnw, dlnb = (_empty((batch, heads, dim), q, torch.float32) for _ in range(2))
    dw0 = _empty((batch, heads, dim, dim), q, torch.float32)
    db0 = _empty((batch, heads, dim), q, torch.float32)
    has_dfinal = dfinal_w is not None
    if has_dfinal:
        dfinal_w, dfinal_b = dfinal_w.float().contiguous(), dfinal_b.float().contiguous()
    block_t, block_d = _blocks(mini_batch_size, dim)
    _ttt_linear_bwd_kernel[(batch * heads,)](
        q,
        k,
        v,
        eta,
        scale,
        ln_weight,
        ln_bias,
        states_w,
        states_b,
        do,
        dfinal_w if has_dfinal else dw0,
        dfinal_b if has_dfinal else db0,
        dq,
        dk,
        dv,
        deta,
        dscale_tokens,
        dlnw,
        dlnb,
        dw0,
        db0,
        length,
        eps,
        H=heads,
        D=dim,
        MB=mini_batch_size,
        BT=block_t,
        BD=block_d,
        HAS_DFINAL=has_dfinal,
        PRECISION=_precision(q.dtype),
        num_warps=_num_warps(dim),
    )
    # Position i's scale is shared by token i of every mini-batch, sequence and head.
    chunks = triton.cdiv(length, mini_batch_size)
    padded = torch.nn.functional.pad(dscale_tokens, (0, 0, 0, chunks * mini_batch_size - length))
    dscale = padded.view(batch, chunks, mini_batch_size, heads).sum(dim=(0, 1, 3))
    return dq, dk, dv, deta, dscale, dlnw.sum(0), dlnb.sum(0), dw0, db0


class TTTLinearFunction(torch.autograd.Function):
    """Autograd around the two kernels; the backward never calls autograd of the reference."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        eta: Tensor,
        scale: Tensor,
        ln_weight: Tensor,
        ln_bias: Tensor,
        state_w: Tensor,
        state_b: Tensor,
        mini_batch_size: int,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        inputs = (q, k, v, eta, scale, ln_weight, ln_bias, state_w, state_b)
        dtypes = [t.dtype for t in inputs]
        q, k, v = (t.contiguous() for t in (q, k, v))
        eta, scale, ln_weight, ln_bias, state_w, state_b = (
            t.float().contiguous() for t in (eta, scale, ln_weight, ln_bias, state_w, state_b)
        )
        save = any(ctx.needs_input_grad)
        o, final_w, final_b, states_w, states_b = ttt_linear_fwd(
            q,
            k,
            v,
            eta,
            scale,
            ln_weight,
            ln_bias,
            state_w,
            state_b,
            mini_batch_size=mini_batch_size,
            eps=eps,
            save_states=save,
        )
        if save:
            ctx.save_for_backward(q, k, v, eta, scale, ln_weight, ln_bias, states_w, states_b)
        ctx.mini_batch_size, ctx.eps, ctx.dtypes = mini_batch_size, eps, dtypes
        ctx.set_materialize_grads(False)
        return o, final_w, final_b

    @staticmethod
    def backward(ctx, do: Tensor | None, dfinal_w: Tensor | None, dfinal_b: Tensor | None):
        q, k, v, eta, scale, ln_weight, ln_bias, states_w, states_b = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(q)
        if (dfinal_w is None) != (dfinal_b is None):
            dfinal_w = torch.zeros_like(states_w[:, :, 0]) if dfinal_w is None else dfinal_w
            dfinal_b = torch.zeros_like(states_b[:, :, 0]) if dfinal_b is None else dfinal_b
        grads = ttt_linear_bwd(
            q,
            k,
            v,
            eta,
            scale,
            ln_weight,
            ln_bias,
            states_w,
            states_b,
            do.contiguous(),
            dfinal_w,
            dfinal_b,
            mini_batch_size=ctx.mini_batch_size,
            eps=ctx.eps,
        )
        cast = [
            g.to(dtype) if needed else None
            for g, dtype, needed in zip(grads, ctx.dtypes, ctx.needs_input_grad, strict=False)
        ]
        return (*cast, None, None)


def _check(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    initial_state: tuple[Tensor, Tensor] | None,
    position_scale: Tensor | None,
    mini_batch_size: int,
    eps: float,
) -> None:
    tensors = {"q": q, "k": k, "v": v, "eta": eta, "ln_weight": ln_weight, "ln_bias": ln_bias}
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(tensor).__name__}")
    if q.dim() != 4:
        raise ValueError(
            f"q must have shape (batch, length, heads, head_dim), got {tuple(q.shape)}"
        )
    batch, length, heads, dim = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k and v must have one shape (batch, length, heads, head_dim), got "
            f"{tuple(q.shape)}, {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if q.dtype not in FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k and v must share one dtype among float32, bfloat16 and float16, got "
            f"{q.dtype}, {k.dtype} and {v.dtype}"
        )
    if not 1 <= dim <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be between 1 and {MAX_HEAD_DIM}, got {dim}")
    if not 1 <= mini_batch_size <= MAX_MINI_BATCH:
        raise ValueError(
            f"mini_batch_size must be between 1 and {MAX_MINI_BATCH}, got {mini_batch_size}"
        )
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if eta.shape != (batch, length, heads):
        raise ValueError(
            f"eta must have shape (batch, length, heads) = {(batch, length, heads)}, "
            f"got {tuple(eta.shape)}"
        )
    if ln_weight.shape != (heads, dim) or ln_bias.shape != (heads, dim):
        raise ValueError(
            f"ln_weight and ln_bias must have shape (heads, head_dim) = {(heads, dim)}, got "
            f"{tuple(ln_weight.shape)} and {tuple(ln_bias.shape)}"
        )
    others = [eta, ln_weight, ln_bias]
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise ValueError("initial_state must be a pair (W, b) of tensors")
        state_w, state_b = initial_state
        if state_w.shape != (batch, heads, dim, dim) or state_b.shape != (batch, heads, dim):
            raise ValueError(
                f"initial_state must be W of shape {(batch, heads, dim, dim)} and b of shape "
                f"{(batch, heads, dim)}, got {tuple(state_w.shape)} and {tuple(state_b.shape)}"
            )
        others += [state_w, state_b]
    if position_scale is not None:
        if position_scale.shape != (mini_batch_size,):
            raise ValueError(
                f"position_scale must have shape (mini_batch_size,) = ({mini_batch_size},), "
                f"got {tuple(position_scale.shape)}"
            )
        others.append(position_scale)
    for tensor in others:
        if not tensor.is_floating_point():
            raise ValueError(
                f"eta, ln_weight, ln_bias and the state must be float, got {tensor.dtype}"
            )
    devices = {t.device for t in (q, k, v, *others)}
    if len(devices) > 1:
        raise ValueError(
            f"all tensors must be on one device, got {sorted(map(str, devices))}: move them "
            "with .to(q.device)"
        )


def ttt_linear(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    *,
    initial_state: tuple[Tensor, Tensor] | None = None,
    position_scale: Tensor | None = None,
    mini_batch_size: int = 16,
    eps: float = 1e-6,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """The TTT-Linear layer's core (see :mod:`.naive` for the math), differentiable in every
    tensor argument.

    Args:
        q, k, v: (B, T, H, D) float32, bfloat16 or float16: test, training and label views.
        eta: (B, T, H) float: the inner learning rate of each token's gradient.
        ln_weight, ln_bias: (H, D) float: the inner model's per-head LayerNorm.
        initial_state: ``(W (B, H, D, D), b (B, H, D))`` float, e.g. learnable ``W0``, ``b0``
            expanded over the batch or the final state of an earlier call; zeros when None.
        position_scale: (mini_batch_size,) float: the factor of the running gradient sum at each
            position of a mini-batch (``1 / (i + 1)`` averages); ones when None.
        mini_batch_size: tokens per mini-batch, 1..64; the last mini-batch may be shorter.
        output_final_state: also return the state after the last token. A call continued from
            it equals one call on the concatenated sequence when the first part's length is a
            multiple of ``mini_batch_size`` (a shorter last mini-batch ends there).
        backend: ``"auto"`` (Triton on CUDA, the torch reference on CPU), ``"triton"`` or
            ``"torch"``.

    Returns:
        o (B, T, H, D) in q's dtype, and the final state ``(W (B, H, D, D), b (B, H, D))``
        float32 when ``output_final_state`` (else None).

    Raises:
        TypeError: an argument that is not a tensor.
        ValueError: shapes, dtypes or devices that do not fit, a mini-batch size outside 1..64,
            a head width above 128, or an unknown backend.
    """
    _check(q, k, v, eta, ln_weight, ln_bias, initial_state, position_scale, mini_batch_size, eps)
    batch, _, heads, dim = q.shape
    if initial_state is None:
        initial_state = (
            q.new_zeros(batch, heads, dim, dim, dtype=torch.float32),
            q.new_zeros(batch, heads, dim, dtype=torch.float32),
        )
    if position_scale is None:
        position_scale = q.new_ones(mini_batch_size, dtype=torch.float32)
    if resolve_backend(backend, q, k, v) == "torch":
        o, final = ttt_linear_naive(
            q,
            k,
            v,
            eta,
            ln_weight,
            ln_bias,
            initial_state=initial_state,
            position_scale=position_scale,
            mini_batch_size=mini_batch_size,
            eps=eps,
        )
        return o.to(q.dtype), (final if output_final_state else None)
    o, final_w, final_b = TTTLinearFunction.apply(
        q, k, v, eta, position_scale, ln_weight, ln_bias, *initial_state, mini_batch_size, eps
    )
    return o, ((final_w, final_b) if output_final_state else None)
