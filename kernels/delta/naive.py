"""Readable fp32 reference of the 4-bit sparse delta: pack, unpack, merge.

A delta is a change to a weight tensor of which only masked entries are kept. The kept values,
in index order, are cut into groups of ``group_size``; each group stores one scale (its largest
magnitude over 7, as float16) and one signed 4-bit code per value,
``code = floor(value / scale + 1/2)`` in [-7, 7], stored as ``code + 8`` in a nibble, two values
per byte (even position in the low nibble). The last group is padded with zeros (code 8).

Shapes: for a weight with N entries of which M are kept, G = ceil(M / group_size):
    indices (M,) int64, codes (G * group_size / 2,) uint8, scales (G,) float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dequantize_naive", "merge_delta_naive", "pack_delta_naive", "unpack_delta_naive"]

LEVELS = 7  # codes -7..7: symmetric, so a zero delta is exactly zero


def pack_delta_naive(
    delta: Tensor, mask: Tensor, *, group_size: int = 64
) -> tuple[Tensor, Tensor, Tensor]:
    """delta (N,) float, mask (N,) bool -> (indices (M,), codes, scales (G,))."""
    indices = torch.nonzero(mask.reshape(-1)).reshape(-1)
    values = delta.reshape(-1)[indices].float()
    groups = -(-values.numel() // group_size)
    padded = torch.zeros(groups * group_size)
    padded[: values.numel()] = values
    padded = padded.view(groups, group_size)
    scales = (padded.abs().amax(dim=1) / LEVELS).clamp(max=65504).half().float()  # (G,)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = (padded / safe[:, None] + 0.5).floor().clamp(-LEVELS, LEVELS).to(torch.int16)
    nibbles = (codes + 8).to(torch.uint8).view(-1)
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return indices, packed, scales


def dequantize_naive(codes: Tensor, scales: Tensor, count: int, *, group_size: int = 64) -> Tensor:
    """The kept values (count,) float32 from their codes and scales."""
    nibbles = torch.stack(((codes & 15), (codes >> 4)), dim=1).view(-1).float() - 8  # (G * gs,)
    values = nibbles.view(-1, group_size) * scales[:, None]
    return values.reshape(-1)[:count]


def merge_delta_naive(
    weight: Tensor,
    indices: Tensor,
    codes: Tensor,
    scales: Tensor,
    *,
    group_size: int = 64,
    alpha: float = 1.0,
) -> Tensor:
    """weight[indices] += alpha * dequantised values, in place (fp32 arithmetic); returns weight."""
    values = dequantize_naive(codes, scales, indices.numel(), group_size=group_size)
    flat = weight.view(-1)
    flat[indices] = (flat[indices].float() + alpha * values).to(weight.dtype)
    return weight


def unpack_delta_naive(
    indices: Tensor, codes: Tensor, scales: Tensor, numel: int, *, group_size: int = 64
) -> Tensor:
    """The dense delta (numel,) float32: zero outside the kept indices."""
    dense = torch.zeros(numel)
    return merge_delta_naive(dense, indices, codes, scales, group_size=group_size)
