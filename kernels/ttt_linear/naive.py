"""Readable fp32 reference of the TTT-Linear layer (Sun et al., "Learning to (Learn at Test
Time): RNNs with Expressive Hidden States", ICML 2024), mini-batch by mini-batch, primal form.

Per head, the hidden state is a linear model ``(W, b)`` and the inner model is
``f(x) = x + LN(x @ W + b)`` (a LayerNorm with learnable per-head weight and bias, and a residual
inside the inner model). Token ``t`` trains it on the reconstruction loss

    loss_t(W, b) = 1/2 * || f(k_t) - v_t ||^2 = 1/2 * || LN(k_t @ W + b) - (v_t - k_t) ||^2

and reads it out at its query: ``o_t = f_t(q_t) = q_t + LN(q_t @ W_t + b_t)``.

Mini-batch TTT: the sequence is cut into mini-batches of ``mini_batch_size`` tokens (the last
one may be shorter). Every gradient of a mini-batch is taken at the state ``(W, b)`` its
mini-batch started from, so the mini-batch is processed in parallel, and token ``i`` of a
mini-batch (``i = 0, 1, ...``) uses

    W_i = W - position_scale[i] * sum_{j <= i} eta_j * grad_W loss_j(W, b)        (same for b)

``eta_j`` is the per-token inner learning rate (learnable in the layer: ``eta(x) = base *
sigmoid(x . theta)``, Sec. 2.7) and ``position_scale[i]`` scales the running sum (the official
implementation uses ``1 / (i + 1)`` plus a learnable offset, which turns the sum into a mean).
The state after the mini-batch is that of its last token; it starts the next mini-batch. The
Triton kernel computes the same thing in the dual form (no per-token ``W_i`` is formed).

Shapes: B batch, T tokens, H heads, D head width, m mini-batch size.
    q, k, v (B, T, H, D); eta (B, T, H); ln_weight, ln_bias (H, D);
    initial_state (W (B, H, D, D), b (B, H, D)); position_scale (m,)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inner_gradient", "layer_norm", "ttt_linear_naive"]


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last axis with one weight and bias per head: z (B, H, n, D),
    weight and bias (H, D)."""
    mean = z.mean(-1, keepdim=True)
    var = z.var(-1, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) * weight[:, None] + bias[:, None]


def inner_gradient(z: Tensor, target: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """d loss / d z of ``loss = 1/2 * ||LN(z) - target||^2`` for each row: z, target (B, H, n, D).

    The LayerNorm backward written out: with ``x = (z - mean) / sigma`` and ``g = weight *
    (LN(z) - target)`` (the gradient reaching ``x``), ``dz = (g - mean(g) - x * mean(g * x)) /
    sigma``. Written by hand so the reference needs no autograd inside the forward pass.
    """
    mean = z.mean(-1, keepdim=True)
    sigma = torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + eps)
    x = (z - mean) / sigma
    g = weight[:, None] * (weight[:, None] * x + bias[:, None] - target)
    return (g - g.mean(-1, keepdim=True) - x * (g * x).mean(-1, keepdim=True)) / sigma


def ttt_linear_naive(
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
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """TTT-Linear outputs and final state, in fp32 (differentiable by autograd).

    Args:
        q, k, v: (B, T, H, D) the test, training and label views of the tokens.
        eta: (B, T, H) the inner learning rate of each token's gradient.
        ln_weight, ln_bias: (H, D) the inner model's LayerNorm.
        initial_state: ``(W (B, H, D, D), b (B, H, D))``; zeros when None.
        position_scale: (mini_batch_size,) the factor of the running gradient sum at each
            position of a mini-batch; ones when None.

    Returns:
        o (B, T, H, D) float32 and the final state ``(W (B, H, D, D), b (B, H, D))`` float32:
        the state of the last token, which starts a new mini-batch when the sequence goes on.
    """
    batch, length, heads, dim = q.shape
    # (B, H, T, D) and (B, H, T); contiguous, or CPU matrix products take a slow path.
    q, k, v = (t.float().transpose(1, 2).contiguous() for t in (q, k, v))
    eta = eta.float().transpose(1, 2).contiguous()
    weight, bias = ln_weight.float(), ln_bias.float()
    if initial_state is None:
        state_w = q.new_zeros(batch, heads, dim, dim)
        state_b = q.new_zeros(batch, heads, dim)
    else:
        state_w, state_b = (s.float().contiguous() for s in initial_state)
    if position_scale is None:
        position_scale = q.new_ones(mini_batch_size)
    position_scale = position_scale.float()
    outputs = []
    for start in range(0, length, mini_batch_size):
        part = slice(start, start + mini_batch_size)
        qs, ks, vs, lr = q[:, :, part], k[:, :, part], v[:, :, part], eta[:, :, part]
        scale = position_scale[: qs.shape[2]]  # (n,)
        z = ks @ state_w + state_b[:, :, None]  # (B, H, n, D)
        grad_z = inner_gradient(z, vs - ks, weight, bias, eps)
        # grad_W loss_j = k_j^T grad_z_j and grad_b loss_j = grad_z_j; token i sees the sum of
        # the mini-batch's gradients up to itself.
        sum_w = torch.cumsum(lr[..., None, None] * ks[..., :, None] * grad_z[..., None, :], dim=2)
        sum_b = torch.cumsum(lr[..., None] * grad_z, dim=2)  # (B, H, n, D)
        token_w = state_w[:, :, None] - scale[:, None, None] * sum_w  # (B, H, n, D, D)
        token_b = state_b[:, :, None] - scale[:, None] * sum_b  # (B, H, n, D)
        z_query = (qs[..., None, :] @ token_w)[..., 0, :] + token_b  # q_i W_i + b_i
        outputs.append(qs + layer_norm(z_query, weight, bias, eps))
        state_w, state_b = token_w[:, :, -1], token_b[:, :, -1]
    o = torch.cat(outputs, dim=2) if outputs else q.clone()
    return o.transpose(1, 2), (state_w, state_b)
