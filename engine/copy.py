"""Copying from the window: a match model mixed into the byte model's next-byte distribution.

The shipped byte model is too small and too briefly trained to copy: placing a line right
before its own first words does not lower the bits of the rest of it (measured; a fine-tune
with lines repeated inside the window did not change that in 60 steps on CPU). Compressors copy
by matching, and so does this module, as the match model of PAQ-style compressors does: at
each position find the longest earlier occurrence of the bytes just before it (8 to 32 bytes,
anywhere in the text so far), and predict the byte that followed that occurrence. The
prediction is mixed into the model's distribution with a weight that grows with the match
length::

    p(x) = (1 - w) p_model(x) + w [x == predicted],    w = 1 - 2 ** (-length / 8)

so a 32-byte match puts 94% on the copied byte and a miss costs at most 4 extra bits. Retrieved
passages in the window then let the model copy what a compressor copies.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MATCH_LENGTHS", "match", "mix_copy"]

MATCH_LENGTHS = (32, 24, 16, 12, 8)  # tried longest first


def match(text: bytes, t: int) -> tuple[int, int] | None:
    """The byte an earlier repeat predicts at position ``t`` of ``text`` and the repeat's
    length: the most recent earlier occurrence of the longest suffix of ``text[:t]`` in
    MATCH_LENGTHS. None when no such repeat exists."""
    for length in MATCH_LENGTHS:
        if length > t:
            continue
        found = text.rfind(text[t - length : t], 0, t - 1)
        if found >= 0:
            return text[found + length], length
    return None


def copy_weight(length: int) -> float:
    return 1.0 - 2.0 ** (-length / 8)


def mix_copy(logits: Tensor, text: bytes, start: int) -> Tensor:
    """Log-probabilities (C, 256) of the bytes at positions ``start .. start + C - 1`` of
    ``text``, from the model's ``logits`` (C, 256) mixed with the match model's prediction at
    each position (positions without a repeat keep the model's distribution)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    rows, predicted, weights = [], [], []
    for i in range(len(logits)):
        found = match(text, start + i)
        if found is not None:
            rows.append(i)
            predicted.append(found[0])
            weights.append(copy_weight(found[1]))
    if not rows:
        return log_probs
    device = log_probs.device
    index = torch.tensor(rows, device=device)
    weight = torch.tensor(weights, device=device)[:, None]  # (M, 1)
    mixed = torch.log1p(-weight) + log_probs[index]  # (M, 256): (1 - w) p_model
    copied = torch.tensor(predicted, device=device)
    every = torch.arange(len(rows), device=device)
    mixed[every, copied] = torch.logaddexp(mixed[every, copied], torch.log(weight[:, 0]))
    out = log_probs.clone()
    out[index] = mixed
    return out
