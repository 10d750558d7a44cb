"""TTT-Linear (Sun et al., ICML 2024) in chunked dual form: a Triton kernel with its backward,
and the readable torch reference in :mod:`.naive`."""

from memsdk.kernels.ttt_linear.chunk import MAX_HEAD_DIM, MAX_MINI_BATCH, ttt_linear

__all__ = ["MAX_HEAD_DIM", "MAX_MINI_BATCH", "ttt_linear"]
