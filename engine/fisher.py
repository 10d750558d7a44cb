"""The Fisher diagonal of the fast weights, estimated while streaming, and the masks it picks.

The empirical Fisher information of a parameter is the mean of its squared loss gradient: how
much the next-byte loss reacts to it. Micro-TTT moves, and stores, only the parameters with the
largest values, chosen per tensor (per layer) so every layer keeps its own most sensitive part.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["FisherDiagonal", "top_fraction"]


class FisherDiagonal:
    """Running mean of squared gradients per entry of named tensors (the inner steps of one
    session; it starts empty after a reset or a reload)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def update(self, names: list[str], grads: list[Tensor] | tuple[Tensor, ...]) -> None:
        """Add one step's gradients (skipped when any is not finite)."""
        if all(bool(torch.isfinite(g).all()) for g in grads):
            self.add(names, grads)

    def add(self, names: list[str], grads: list[Tensor] | tuple[Tensor, ...]) -> None:
        """Add one step's gradients, which the caller found finite."""
        for name, grad in zip(names, grads, strict=True):
            square = grad.detach().float().pow(2)
            if name in self.sums:
                self.sums[name] += square
            else:
                self.sums[name] = square.clone()
        self.count += 1

    def mean(self) -> dict[str, Tensor]:
        """The estimate per tensor (empty before the first step)."""
        return {name: total / self.count for name, total in self.sums.items()}


def top_fraction(scores: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
    """Per tensor, a bool mask of its ``fraction`` highest-scoring entries (at least one entry
    of every tensor; ties broken by position)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    masks = {}
    for name, score in scores.items():
        flat = score.reshape(-1)
        keep = max(1, math.ceil(fraction * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        mask[torch.topk(flat, keep, sorted=False).indices] = True
        masks[name] = mask.view(score.shape)
    return masks
