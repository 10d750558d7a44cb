"""Causal sliding-window attention in Triton, flash style: forward and backward.

The semantics are those of :mod:`.naive`: query i of Tq sits at absolute position
``Tk - Tq + i`` and sees the keys j with ``pos - window < j <= pos``.

Each forward program owns a tile of BLOCK_M queries and walks only the key tiles that can reach
them (``(BLOCK_M + window) / BLOCK_N`` tiles at most), with an online softmax in fp32, so the
work is O(T * window) instead of O(T^2). Key tiles wholly inside every query's window skip the
mask; only the tiles on the diagonal and on the window's far edge pay for it. The backward is
split in two kernels so that neither needs atomics: one program per key tile accumulates dK and
dV over the query tiles that see it, one program per query tile accumulates dQ (FlashAttention-2,
Dao 2023). The log-sum-exp of each query row (in base 2) is kept from the forward for that.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from memsdk.kernels.dispatch import FLOAT_DTYPES, interpreting, resolve_backend
from memsdk.kernels.swa_attention.naive import swa_attention_naive

__all__ = ["MAX_HEAD_DIM", "swa_attention"]

MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634


def _scratch(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the kernels write. Tests replace it with a NaN-filled allocation: a kernel
    that leaves an element unwritten then shows up as NaN."""
    return torch.empty(shape, dtype=dtype, device=device)


def _block_sizes(head_dim: int) -> dict[str, int]:
    """Tile sizes and launch settings. The interpreter runs every program serially, so small
    tiles there exercise the multi-tile paths (ragged edges, masked and unmasked tiles) on the
    small shapes of the tests. Tests may replace this function to try other tilings."""
    if interpreting():
        return {"fwd_m": 16, "fwd_n": 16, "bwd_m": 16, "bwd_n": 16, "warps": 1, "stages": 1}
    if head_dim <= 64:
        return {"fwd_m": 128, "fwd_n": 64, "bwd_m": 64, "bwd_n": 64, "warps": 4, "stages": 3}
    return {"fwd_m": 64, "fwd_n": 64, "bwd_m": 32, "bwd_n": 64, "warps": 8, "stages": 2}


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's own matmul setting, so the kernel is no less exact than the
    # torch path it replaces unless the user allowed TF32 there too.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


@triton.jit
def _tile_range(first_pos, last_pos, key_length, window, BLOCK_N: tl.constexpr):
    """Key tiles a query tile at positions first_pos..last_pos needs, as three ranges of tile
    starts: [lo, full_lo) masked, [full_lo, full_hi) unmasked, [full_hi, hi) masked."""
    lo = tl.maximum(first_pos - window + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(last_pos + 1, key_length)
    full_lo = tl.cdiv(tl.maximum(last_pos - window + 1, 0), BLOCK_N) * BLOCK_N
    full_hi = tl.minimum(first_pos + 1, key_length) // BLOCK_N * BLOCK_N
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _forward_tile(
    acc,
    row_sum,
    row_max,
    q,
    k_base,
    v_base,
    stride_kt,
    stride_kd,
    stride_vt,
    stride_vd,
    start_n,
    query_pos,
    key_length,
    head_dim,
    window,
    qk_scale,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    key_pos = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    live = (key_pos[:, None] < key_length) & (dims[None, :] < head_dim)
    k = tl.load(k_base + key_pos[:, None] * stride_kt + dims[None, :] * stride_kd, live, other=0.0)
    v = tl.load(v_base + key_pos[:, None] * stride_vt + dims[None, :] * stride_vd, live, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (M, N), base 2
    if MASKED:
        seen = (
            (key_pos[None, :] <= query_pos[:, None])
            & (key_pos[None, :] > query_pos[:, None] - window)
            & (key_pos[None, :] < key_length)
        )
        scores = tl.where(seen, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    # A row may see no key of a masked tile yet: keep its running max finite so that
    # exp2(-inf - -inf) never makes a NaN.
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
    rescale = tl.exp2(row_max - safe_max)
    p = tl.exp2(scores - safe_max[:, None])
    row_sum = row_sum * rescale + tl.sum(p, axis=1)
    acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, row_sum, new_max


@triton.jit
def _forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    lse_ptr,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    heads,
    query_length,
    key_length,
    head_dim,
    window,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch, head = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    offset = key_length - query_length
    query_pos = offset + rows
    live = (rows[:, None] < query_length) & (dims[None, :] < head_dim)
    q = tl.load(q_base + rows[:, None] * stride_qt + dims[None, :] * stride_qd, live, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _tile_range(
        offset + start_m, offset + start_m + BLOCK_M - 1, key_length, window, BLOCK_N
    )
    for start_n in range(lo, full_lo, BLOCK_N):
        acc, row_sum, row_max = _forward_tile(
            acc, row_sum, row_max, q, k_base, v_base, stride_kt, stride_kd, stride_vt,
            stride_vd, start_n, query_pos, key_length, head_dim, window, qk_scale,
            BLOCK_N, BLOCK_D, True, UPCAST, PRECISION,
        )  # fmt: skip
    for start_n in range(full_lo, full_hi, BLOCK_N):
        acc, row_sum, row_max = _forward_tile(
            acc, row_sum, row_max, q, k_base, v_base, stride_kt, stride_kd, stride_vt,
            stride_vd, start_n, query_pos, key_length, head_dim, window, qk_scale,
            BLOCK_N, BLOCK_D, False, UPCAST, PRECISION,
        )  # fmt: skip
    for start_n in range(full_hi, hi, BLOCK_N):
        acc, row_sum, row_max = _forward_tile(
            acc, row_sum, row_max, q, k_base, v_base, stride_kt, stride_kd, stride_vt,
            stride_vd, start_n, query_pos, key_length, head_dim, window, qk_scale,
            BLOCK_N, BLOCK_D, True, UPCAST, PRECISION,
        )  # fmt: skip
    # Rows past the end of the queries saw no key (row_sum 0); they are not stored.
    row_sum = tl.where(rows < query_length, row_sum, 1.0)
    out = acc / row_sum[:, None]
    o_base = o_ptr + batch * stride_ob + head * stride_oh
    tl.store(
        o_base + rows[:, None] * stride_ot + dims[None, :] * stride_od,
        out.to(o_ptr.dtype.element_ty),
        live,
    )
    tl.store(lse_ptr + bh.to(tl.int64) * query_length + rows, row_max + tl.log2(row_sum),
             rows < query_length)  # fmt: skip


@triton.jit
def _row_dot_kernel(
    o_ptr,
    do_ptr,
    delta_ptr,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    stride_gb,
    stride_gh,
    stride_gt,
    stride_gd,
    heads,
    query_length,
    head_dim,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """delta[row] = sum_d o[row, d] * do[row, d]: the softmax backward's per-row correction."""
    bh = tl.program_id(1)
    batch, head = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    live = (rows[:, None] < query_length) & (dims[None, :] < head_dim)
    o = tl.load(
        o_ptr + batch * stride_ob + head * stride_oh + rows[:, None] * stride_ot
        + dims[None, :] * stride_od, live, other=0.0,
    )  # fmt: skip
    do = tl.load(
        do_ptr + batch * stride_gb + head * stride_gh + rows[:, None] * stride_gt
        + dims[None, :] * stride_gd, live, other=0.0,
    )  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(delta_ptr + bh.to(tl.int64) * query_length + rows, delta, rows < query_length)


@triton.jit
def _key_grad_tile(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    lse_base,
    delta_base,
    stride_qt,
    stride_qd,
    stride_gt,
    stride_gd,
    start_m,
    key_pos,
    offset,
    query_length,
    key_length,
    head_dim,
    window,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    live = (rows[:, None] < query_length) & (dims[None, :] < head_dim)
    q = tl.load(q_base + rows[:, None] * stride_qt + dims[None, :] * stride_qd, live, other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_gt + dims[None, :] * stride_gd, live, other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(lse_base + rows, rows < query_length, other=0.0)
    delta = tl.load(delta_base + rows, rows < query_length, other=0.0)
    scores_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (N, M)
    p_t = tl.exp2(scores_t - lse[None, :])
    if MASKED:
        query_pos = offset + rows
        seen = (
            (key_pos[:, None] <= query_pos[None, :])
            & (key_pos[:, None] > query_pos[None, :] - window)
            & (rows[None, :] < query_length)
            & (key_pos[:, None] < key_length)
        )
        p_t = tl.where(seen, p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (N, M)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _key_grad_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_gb,
    stride_gh,
    stride_gt,
    stride_gd,
    heads,
    query_length,
    key_length,
    head_dim,
    window,
    scale,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dK and dV of one key tile; dk and dv are contiguous (B, H, Tk, D)."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    batch, head = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)
    key_pos = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    live = (key_pos[:, None] < key_length) & (dims[None, :] < head_dim)
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    k = tl.load(k_base + key_pos[:, None] * stride_kt + dims[None, :] * stride_kd, live, other=0.0)
    v = tl.load(v_base + key_pos[:, None] * stride_vt + dims[None, :] * stride_vd, live, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    do_base = do_ptr + batch * stride_gb + head * stride_gh
    lse_base = lse_ptr + bh.to(tl.int64) * query_length
    delta_base = delta_ptr + bh.to(tl.int64) * query_length
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    offset = key_length - query_length
    # Queries (by index) that see a key of this tile: positions start_n ..
    # start_n + BLOCK_N - 2 + window. A tile is unmasked when each of its rows is a real query
    # that sees every key of the tile, and every key of the tile exists.
    lo = tl.maximum(start_n - offset, 0) // BLOCK_M * BLOCK_M
    hi = tl.minimum(start_n + BLOCK_N - 1 + window - offset, query_length)
    full_lo = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - offset, 0), BLOCK_M) * BLOCK_M
    full_hi = tl.maximum(tl.minimum(query_length, start_n + window - offset), 0)
    full_hi = full_hi // BLOCK_M * BLOCK_M
    full_hi = tl.where(start_n + BLOCK_N > key_length, 0, full_hi)
    full_lo = tl.minimum(tl.maximum(full_lo, lo), tl.maximum(hi, lo))
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), tl.maximum(hi, lo))
    for start_m in range(lo, full_lo, BLOCK_M):
        dk, dv = _key_grad_tile(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_qd,
            stride_gt, stride_gd, start_m, key_pos, offset, query_length, key_length,
            head_dim, window, qk_scale, BLOCK_M, BLOCK_D, True, UPCAST, PRECISION,
        )  # fmt: skip
    for start_m in range(full_lo, full_hi, BLOCK_M):
        dk, dv = _key_grad_tile(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_qd,
            stride_gt, stride_gd, start_m, key_pos, offset, query_length, key_length,
            head_dim, window, qk_scale, BLOCK_M, BLOCK_D, False, UPCAST, PRECISION,
        )  # fmt: skip
    for start_m in range(full_hi, hi, BLOCK_M):
        dk, dv = _key_grad_tile(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_qd,
            stride_gt, stride_gd, start_m, key_pos, offset, query_length, key_length,
            head_dim, window, qk_scale, BLOCK_M, BLOCK_D, True, UPCAST, PRECISION,
        )  # fmt: skip
    out = (bh.to(tl.int64) * key_length + key_pos[:, None]) * head_dim + dims[None, :]
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), live)
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), live)


@triton.jit
def _query_grad_tile(
    dq,
    q,
    do,
    lse,
    delta,
    k_base,
    v_base,
    stride_kt,
    stride_kd,
    stride_vt,
    stride_vd,
    start_n,
    query_pos,
    key_length,
    head_dim,
    window,
    qk_scale,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    key_pos = start_n + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    live = (key_pos[:, None] < key_length) & (dims[None, :] < head_dim)
    k = tl.load(k_base + key_pos[:, None] * stride_kt + dims[None, :] * stride_kd, live, other=0.0)
    v = tl.load(v_base + key_pos[:, None] * stride_vt + dims[None, :] * stride_vd, live, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (M, N)
    p = tl.exp2(scores - lse[:, None])
    if MASKED:
        seen = (
            (key_pos[None, :] <= query_pos[:, None])
            & (key_pos[None, :] > query_pos[:, None] - window)
            & (key_pos[None, :] < key_length)
        )
        p = tl.where(seen, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _query_grad_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_gb,
    stride_gh,
    stride_gt,
    stride_gd,
    heads,
    query_length,
    key_length,
    head_dim,
    window,
    scale,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ of one query tile; dq is contiguous (B, H, Tq, D)."""
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    batch, head = (bh // heads).to(tl.int64), (bh % heads).to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    live = (rows[:, None] < query_length) & (dims[None, :] < head_dim)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    do_base = do_ptr + batch * stride_gb + head * stride_gh
    q = tl.load(q_base + rows[:, None] * stride_qt + dims[None, :] * stride_qd, live, other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_gt + dims[None, :] * stride_gd, live, other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    row_live = rows < query_length
    lse = tl.load(lse_ptr + bh.to(tl.int64) * query_length + rows, row_live, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * query_length + rows, row_live, other=0.0)
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    offset = key_length - query_length
    query_pos = offset + rows
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    lo, full_lo, full_hi, hi = _tile_range(
        offset + start_m, offset + start_m + BLOCK_M - 1, key_length, window, BLOCK_N
    )
    for start_n in range(lo, full_lo, BLOCK_N):
        dq = _query_grad_tile(
            dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
            start_n, query_pos, key_length, head_dim, window, qk_scale,
            BLOCK_N, BLOCK_D, True, UPCAST, PRECISION,
        )  # fmt: skip
    for start_n in range(full_lo, full_hi, BLOCK_N):
        dq = _query_grad_tile(
            dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
            start_n, query_pos, key_length, head_dim, window, qk_scale,
            BLOCK_N, BLOCK_D, False, UPCAST, PRECISION,
        )  # fmt: skip
    for start_n in range(full_hi, hi, BLOCK_N):
        dq = _query_grad_tile(
            dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
            start_n, query_pos, key_length, head_dim, window, qk_scale,
            BLOCK_N, BLOCK_D, True, UPCAST, PRECISION,
        )  # fmt: skip
    out = (bh.to(tl.int64) * query_length + rows[:, None]) * head_dim + dims[None, :]
    tl.store(dq_ptr + out, (dq * scale).to(dq_ptr.dtype.element_ty), live)


def _launch_options(q: Tensor) -> dict:
    # The interpreter has no bfloat16 arithmetic (it would multiply bit patterns), so there
    # the kernels compute in fp32 after loading; compiled, bf16 and fp16 go to the tensor cores.
    upcast = interpreting() and q.dtype != torch.float32
    return {"UPCAST": upcast, "PRECISION": _dot_precision(q.dtype)}


def _forward(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float) -> tuple[Tensor, Tensor]:
    """(o (B, H, Tq, D) in q's dtype, lse (B, H, Tq) fp32 in base 2)."""
    batch, heads, query_length, head_dim = q.shape
    key_length = k.shape[2]
    blocks = _block_sizes(head_dim)
    o = _scratch(q.shape, dtype=q.dtype, device=q.device)
    lse = _scratch((batch, heads, query_length), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(query_length, blocks["fwd_m"]), batch * heads)
    _forward_kernel[grid](
        q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        heads, query_length, key_length, head_dim, window, scale * LOG2E,
        BLOCK_M=blocks["fwd_m"], BLOCK_N=blocks["fwd_n"],
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)), **_launch_options(q),
        num_warps=blocks["warps"], num_stages=blocks["stages"],
    )  # fmt: skip
    return o, lse


def _backward(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor, window: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    batch, heads, query_length, head_dim = q.shape
    key_length = k.shape[2]
    blocks = _block_sizes(head_dim)
    block_d = max(16, triton.next_power_of_2(head_dim))
    options = {**_launch_options(q), "num_warps": blocks["warps"], "num_stages": blocks["stages"]}
    delta = _scratch((batch, heads, query_length), dtype=torch.float32, device=q.device)
    _row_dot_kernel[(triton.cdiv(query_length, blocks["bwd_m"]), batch * heads)](
        o, do, delta, *o.stride(), *do.stride(), heads, query_length, head_dim,
        BLOCK_M=blocks["bwd_m"], BLOCK_D=block_d,
    )  # fmt: skip
    dq = _scratch(q.shape, dtype=q.dtype, device=q.device)
    dk = _scratch(k.shape, dtype=k.dtype, device=k.device)
    dv = _scratch(v.shape, dtype=v.dtype, device=v.device)
    common = (heads, query_length, key_length, head_dim, window, scale, scale * LOG2E)
    _key_grad_kernel[(triton.cdiv(key_length, blocks["bwd_n"]), batch * heads)](
        q, k, v, do, lse, delta, dk, dv, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
        *common, BLOCK_M=blocks["bwd_m"], BLOCK_N=blocks["bwd_n"], BLOCK_D=block_d, **options,
    )  # fmt: skip
    _query_grad_kernel[(triton.cdiv(query_length, blocks["bwd_m"]), batch * heads)](
        q, k, v, do, lse, delta, dq, *q.stride(), *k.stride(), *v.stride(), *do.stride(),
        *common, BLOCK_M=blocks["bwd_m"], BLOCK_N=blocks["bwd_n"], BLOCK_D=block_d, **options,
    )  # fmt: skip
    return dq, dk, dv


class SWAttentionFunction(torch.autograd.Function):
    """Triton forward and backward. A double backward (``create_graph=True``, as in
    meta-learning) differentiates through the torch reference instead, so it stays exact."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, window: int, scale: float) -> Tensor:
        o, lse = _forward(q, k, v, window, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            inputs = [t for t, need in zip((q, k, v), wanted, strict=True) if need]
            out = swa_attention_naive(q, k, v, window=ctx.window, scale=ctx.scale)
            grads = iter(torch.autograd.grad(out, inputs, do.float(), create_graph=True))
            found = [
                next(grads).to(t.dtype) if need else None
                for t, need in zip((q, k, v), wanted, strict=True)
            ]
            return (*found, None, None)
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.window, ctx.scale)
        return (dq if wanted[0] else None, dk if wanted[1] else None,
                dv if wanted[2] else None, None, None)  # fmt: skip


def _check(q: Tensor, k: Tensor, v: Tensor, window: int, scale: float | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, length, head_dim), got shape {tuple(t.shape)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads and head_dim"
        )
    if k.shape[2] < q.shape[2]:
        raise ValueError(
            f"k and v must hold at least as many positions as q (the queries are the last Tq "
            f"of Tk positions), got Tq={q.shape[2]} and Tk={k.shape[2]}"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(
            f"q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}: "
            "cast them with .to(q.dtype)"
        )
    if q.device != k.device or q.device != v.device:
        raise ValueError(
            f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")


def swa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """Causal sliding-window attention: query i at position ``Tk - Tq + i`` attends to the keys
    j with ``pos - window < j <= pos``; differentiable in q, k and v.

    Args:
        q: (B, H, Tq, D) queries, float32, bfloat16 or float16.
        k, v: (B, H, Tk, D) keys and values, Tk >= Tq, the dtype and device of q.
        window: how many positions each query sees, itself included.
        scale: the softmax scale; 1 / sqrt(D) by default.
        backend: "auto" (Triton on CUDA, the torch reference on CPU), "triton" or "torch".

    Returns:
        (B, H, Tq, D) in q's dtype.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: shapes that do not match, an unsupported or mixed dtype, tensors on several
            devices, a window below 1, a head dim above 256 for Triton, or a backend that cannot
            run here (see :func:`memsdk.kernels.dispatch.resolve_backend`).
    """
    _check(q, k, v, window, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if resolve_backend(backend, q, k, v) == "torch":
        return swa_attention_naive(q, k, v, window=window, scale=scale).to(q.dtype)
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(
            f"the Triton kernel takes head_dim <= {MAX_HEAD_DIM}, got {q.shape[-1]}: use "
            "backend='torch' or more heads"
        )
    if q.numel() == 0:
        return swa_attention_naive(q, k, v, window=window, scale=scale).to(q.dtype)
    # Keys further back than Tk do not exist: clamping keeps positions within int32.
    return SWAttentionFunction.apply(q, k, v, min(window, k.shape[2]), scale)
