"""Causal sliding-window attention (flash style, O(T * window)): forward and backward."""

from memsdk.kernels.swa_attention.flash import MAX_HEAD_DIM, swa_attention

__all__ = ["MAX_HEAD_DIM", "swa_attention"]
