"""Readable fp32 reference of the dynamic MLP and its inner step.

The dynamic MLP of a block, with its fast weights passed in::

    pre = x @ up          # (N, h)   N = B * C rows of the chunk, d -> h
    act = gelu(pre)       # exact erf GELU, as torch.nn.functional.gelu by default
    y = act @ down        # (N, d)

Its backward from the gradient ``dy`` (N, d) reaching y::

    d_down = act^T @ dy                   # (h, d)
    d_pre = (dy @ down^T) * gelu'(pre)    # (N, h)
    d_up = x^T @ d_pre                    # (d, h)
    dx = d_pre @ up^T                     # (N, d)

The inner step is the clipped SGD step of ``memsdk.engine.ttt.inner_update``, over every fast
weight at once (one global gradient norm)::

    norm = sqrt(sum of squares of every gradient)
    factor = min(1, max_norm / (norm + 1e-6))
    w <- w - lr * factor * g - decay * (w - w0)     # decay toward the initial weights w0

and a non-finite norm leaves every weight as it was.

Shapes: x (B, C, d) or (C, d), up (d, h), down (h, d).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "clipped_sgd_naive_",
    "fast_mlp_grads_naive",
    "fast_mlp_naive",
    "gelu",
    "gelu_grad",
    "squared_norm_naive",
]


def gelu(x: Tensor) -> Tensor:
    """x * Phi(x), Phi the standard normal CDF."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_grad(x: Tensor) -> Tensor:
    """d gelu / dx = Phi(x) + x * phi(x), phi the standard normal density."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-0.5 * x * x) / math.sqrt(
        2.0 * math.pi
    )


def fast_mlp_naive(x: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """gelu(x @ up) @ down in fp32: x (..., d), up (d, h), down (h, d) -> (..., d) fp32."""
    return gelu(x.float() @ up.float()) @ down.float()


def fast_mlp_grads_naive(
    x: Tensor, up: Tensor, down: Tensor, grad_output: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward and the gradients, in fp32, written out by hand.

    x (..., d), up (d, h), down (h, d), grad_output (..., d) ->
    (y (..., d), d_up (d, h), d_down (h, d), dx (..., d)).
    """
    rows = x.reshape(-1, x.shape[-1]).float()  # (N, d)
    dy = grad_output.reshape(-1, x.shape[-1]).float()  # (N, d)
    up, down = up.float(), down.float()
    pre = rows @ up  # (N, h)
    act = gelu(pre)
    y = act @ down
    d_down = act.T @ dy
    d_pre = (dy @ down.T) * gelu_grad(pre)
    d_up = rows.T @ d_pre
    dx = d_pre @ up.T
    return y.view(x.shape), d_up, d_down, dx.view(x.shape)


def squared_norm_naive(tensors: list[Tensor]) -> Tensor:
    """The sum of squares of every entry of every tensor, fp32 ()."""
    total = torch.zeros((), dtype=torch.float32, device=tensors[0].device)
    for t in tensors:
        total = total + t.float().pow(2).sum()
    return total


def clipped_sgd_naive_(
    weights: list[Tensor],
    grads: list[Tensor],
    squared_norm: Tensor,
    *,
    lr: float,
    max_norm: float,
    initial: list[Tensor] | None = None,
    decay: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The clipped SGD step in place, in fp32 arithmetic (the decay term uses the weights from
    before the step, as ``inner_update`` does). Returns (norm, factor, accepted) as 0-d tensors;
    when the norm is not finite nothing is written and accepted is False."""
    norm = squared_norm.float().sqrt()
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    accepted = torch.isfinite(norm)
    if bool(accepted):
        for i, (weight, grad) in enumerate(zip(weights, grads, strict=True)):
            old = weight.float()
            new = old - lr * factor * grad.float()
            if decay:
                new = new - decay * (old - initial[i].float())
            weight.copy_(new)
    return norm, factor, accepted
