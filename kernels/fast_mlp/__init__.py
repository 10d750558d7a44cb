"""The dynamic MLP ``gelu(x @ up) @ down``: a differentiable kernel and the fused inner step."""

from memsdk.kernels.fast_mlp.fused import (
    ClippedStep,
    FastMLPGrads,
    FastMLPStep,
    clipped_sgd_,
    fast_mlp,
    fast_mlp_grads,
    fast_mlp_step_,
    squared_norm,
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
