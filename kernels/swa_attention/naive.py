"""Readable fp32 reference of causal sliding-window attention.

Queries are the last ``Tq`` of ``Tk`` positions: query i sits at absolute position
``pos = Tk - Tq + i`` and attends to the keys j with ``pos - window < j <= pos``, so every query
sees itself and at most ``window`` keys in all. ``Tq == Tk`` is the training form; ``Tq < Tk``
is the streaming form, where a new chunk attends to a cache of earlier keys followed by its own.

Shapes: q (B, H, Tq, D), k and v (B, H, Tk, D) with Tk >= Tq; the output is (B, H, Tq, D).
The scores form a dense (Tq, Tk) matrix per head: the reference is for checking, not for speed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["swa_attention_naive", "window_mask"]


def window_mask(query_length: int, key_length: int, window: int, device: torch.device) -> Tensor:
    """(Tq, Tk) bool: True where query i may attend to key j."""
    query_pos = torch.arange(key_length - query_length, key_length, device=device)[:, None]
    key_pos = torch.arange(key_length, device=device)[None, :]
    return (key_pos <= query_pos) & (key_pos > query_pos - window)


def swa_attention_naive(
    q: Tensor, k: Tensor, v: Tensor, *, window: int, scale: float | None = None
) -> Tensor:
    """softmax(q k^T * scale + mask) v in fp32, returned as fp32 (B, H, Tq, D); differentiable.

    ``scale`` defaults to 1 / sqrt(D).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v = q.float(), k.float(), v.float()
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale  # (B, H, Tq, Tk)
    allowed = window_mask(q.shape[2], k.shape[2], window, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1), v)
