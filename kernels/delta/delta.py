"""4-bit sparse deltas in Triton: pack (quantise the kept values), merge (dequantise and add in
place), unpack (merge into zeros). The format is described in :mod:`.naive`.

Merging is one pass over the kept values: each program dequantises a few groups and adds them
to the weight at their indices. Indices are unique, so no atomics are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from memsdk.kernels.delta.naive import merge_delta_naive, pack_delta_naive
from memsdk.kernels.dispatch import FLOAT_DTYPES, resolve_backend

__all__ = ["GROUP_SIZES", "PackedDelta", "merge_delta_", "pack_delta", "unpack_delta"]

GROUP_SIZES = (16, 32, 64, 128, 256)
GROUPS_PER_PROGRAM = 16


@dataclass(frozen=True)
class PackedDelta:
    """A packed delta of a tensor of ``shape``: ``indices`` (M,) int64 of the kept entries,
    ``codes`` (G * group_size / 2,) uint8, ``scales`` (G,) float32."""

    indices: Tensor
    codes: Tensor
    scales: Tensor
    shape: tuple[int, ...]
    group_size: int = 64

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def nbytes(self) -> int:
        """Bytes of the codes and scales (the indices are stored by the caller's choice)."""
        return self.codes.numel() + 2 * self.scales.numel()  # scales are stored as float16


@triton.jit
def _pack_kernel(
    values_ptr, codes_ptr, scales_ptr, count, GROUP: tl.constexpr, GROUPS: tl.constexpr
):
    HALF: tl.constexpr = GROUP // 2
    group = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)  # (GROUPS,)
    pair = tl.arange(0, HALF)
    groups = tl.cdiv(count, GROUP)
    even = group[:, None] * GROUP + 2 * pair[None, :]  # (GROUPS, HALF) positions of low nibbles
    odd = even + 1
    x_even = tl.load(values_ptr + even, mask=even < count, other=0.0).to(tl.float32)
    x_odd = tl.load(values_ptr + odd, mask=odd < count, other=0.0).to(tl.float32)
    absmax = tl.maximum(tl.max(tl.abs(x_even), axis=1), tl.max(tl.abs(x_odd), axis=1))
    # The scale is stored as float16 (round to nearest on every backend): round it first so
    # the codes match the stored scale.
    scale = tl.minimum(absmax / 7.0, 65504.0).to(tl.float16).to(tl.float32)
    safe = tl.where(scale > 0, scale, 1.0)[:, None]
    q_even = tl.minimum(tl.maximum(tl.floor(x_even / safe + 0.5), -7.0), 7.0) + 8.0
    q_odd = tl.minimum(tl.maximum(tl.floor(x_odd / safe + 0.5), -7.0), 7.0) + 8.0
    packed = q_even.to(tl.uint8) | (q_odd.to(tl.uint8) << 4)
    live = group < groups
    tl.store(codes_ptr + group[:, None] * HALF + pair[None, :], packed, mask=live[:, None])
    tl.store(scales_ptr + group, scale, mask=live)


@triton.jit
def _merge_kernel(
    weight_ptr,
    indices_ptr,
    codes_ptr,
    scales_ptr,
    count,
    alpha,
    GROUP: tl.constexpr,
    GROUPS: tl.constexpr,
):
    HALF: tl.constexpr = GROUP // 2
    group = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    pair = tl.arange(0, HALF)
    live = group < tl.cdiv(count, GROUP)
    packed = tl.load(
        codes_ptr + group[:, None] * HALF + pair[None, :], mask=live[:, None], other=136
    )
    scale = alpha * tl.load(scales_ptr + group, mask=live, other=0.0)[:, None]
    even = group[:, None] * GROUP + 2 * pair[None, :]
    odd = even + 1
    low = ((packed & 15).to(tl.float32) - 8.0) * scale
    high = ((packed >> 4).to(tl.float32) - 8.0) * scale
    index = tl.load(indices_ptr + even, mask=even < count, other=0)
    weight = tl.load(weight_ptr + index, mask=even < count, other=0.0)
    tl.store(weight_ptr + index, (weight.to(tl.float32) + low).to(weight.dtype), mask=even < count)
    index = tl.load(indices_ptr + odd, mask=odd < count, other=0)
    weight = tl.load(weight_ptr + index, mask=odd < count, other=0.0)
    tl.store(weight_ptr + index, (weight.to(tl.float32) + high).to(weight.dtype), mask=odd < count)


def _grid(count: int, group_size: int) -> tuple[int]:
    return (max(1, triton.cdiv(triton.cdiv(count, group_size), GROUPS_PER_PROGRAM)),)


def _check_group_size(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")


def pack_delta(
    delta: Tensor, mask: Tensor, *, group_size: int = 64, backend: str = "auto"
) -> PackedDelta:
    """Quantise the entries of ``delta`` where ``mask`` is true to 4 bits in groups.

    Args:
        delta: the change to a weight, any shape, float32, bfloat16 or float16.
        mask: bool, the same shape: which entries to keep.

    Raises:
        ValueError: shapes differ, a wrong dtype, tensors on different devices, or an
            unsupported group size.
    """
    _check_group_size(group_size)
    if not isinstance(delta, Tensor) or not isinstance(mask, Tensor):
        raise TypeError("delta and mask must be torch tensors")
    if delta.dtype not in FLOAT_DTYPES:
        raise ValueError(f"delta must be float32, bfloat16 or float16, got {delta.dtype}")
    if mask.dtype != torch.bool or mask.shape != delta.shape:
        raise ValueError(
            f"mask must be a bool tensor of the delta's shape {tuple(delta.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if mask.device != delta.device:
        raise ValueError(f"delta is on {delta.device} but mask is on {mask.device}")
    shape = tuple(delta.shape)
    if resolve_backend(backend, delta) == "torch":
        indices, codes, scales = pack_delta_naive(delta.cpu(), mask.cpu(), group_size=group_size)
        device = delta.device
        return PackedDelta(
            indices.to(device), codes.to(device), scales.to(device), shape, group_size
        )
    indices = torch.nonzero(mask.reshape(-1)).reshape(-1)
    values = delta.reshape(-1)[indices].contiguous()
    groups = triton.cdiv(values.numel(), group_size)
    codes = torch.empty(groups * group_size // 2, dtype=torch.uint8, device=delta.device)
    scales = torch.empty(groups, dtype=torch.float32, device=delta.device)
    if groups:
        _pack_kernel[_grid(values.numel(), group_size)](
            values, codes, scales, values.numel(), GROUP=group_size, GROUPS=GROUPS_PER_PROGRAM
        )
    return PackedDelta(indices, codes, scales, shape, group_size)


def _check_packed(weight: Tensor, packed: PackedDelta) -> None:
    if tuple(weight.shape) != tuple(packed.shape):
        raise ValueError(
            f"the delta was packed for shape {tuple(packed.shape)}, the weight has shape "
            f"{tuple(weight.shape)}: merge it into the tensor it was made from"
        )
    if weight.dtype not in FLOAT_DTYPES:
        raise ValueError(f"weight must be float32, bfloat16 or float16, got {weight.dtype}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous: merge into weight.contiguous() instead")
    groups = triton.cdiv(packed.indices.numel(), packed.group_size)
    if packed.scales.numel() != groups or packed.codes.numel() != groups * packed.group_size // 2:
        raise ValueError(
            f"packed delta is inconsistent: {packed.indices.numel()} indices need {groups} "
            f"scales and {groups * packed.group_size // 2} code bytes, got "
            f"{packed.scales.numel()} and {packed.codes.numel()}"
        )
    devices = {t.device for t in (weight, packed.indices, packed.codes, packed.scales)}
    if len(devices) > 1:
        raise ValueError(f"weight and delta must be on one device, got {sorted(map(str, devices))}")


def merge_delta_(
    weight: Tensor, packed: PackedDelta, *, alpha: float = 1.0, backend: str = "auto"
) -> Tensor:
    """Add ``alpha`` times the dequantised delta to ``weight`` in place; returns ``weight``.

    Raises:
        ValueError: the delta was packed for another shape, is inconsistent, or lives on
            another device; the weight is not a contiguous float tensor.
    """
    _check_packed(weight, packed)
    if resolve_backend(backend, weight) == "torch":
        return merge_delta_naive(
            weight,
            packed.indices,
            packed.codes,
            packed.scales,
            group_size=packed.group_size,
            alpha=alpha,
        )
    count = packed.indices.numel()
    if count:
        _merge_kernel[_grid(count, packed.group_size)](
            weight,
            packed.indices,
            packed.codes,
            packed.scales,
            count,
            float(alpha),
            GROUP=packed.group_size,
            GROUPS=GROUPS_PER_PROGRAM,
        )
    return weight


def unpack_delta(packed: PackedDelta, *, backend: str = "auto") -> Tensor:
    """The dense delta, float32 of the packed shape, zero outside the kept entries."""
    dense = torch.zeros(packed.shape, dtype=torch.float32, device=packed.codes.device)
    return merge_delta_(dense, packed, backend=backend)
