"""Rehearsal: inner steps on bytes a state absorbed before, so its fast weights keep them.

Each inner step moves the fast weights toward the newest chunk only, so a state that absorbs
one source after another forgets the earlier ones: after a few hundred kilobytes of other text,
an old source's tail scores as it would under the initial weights. Complementary learning
systems (McClelland et al., 1995) answer this with replay: the exact store (here the notepad,
which keeps every chunk) hands a few old pieces back to the slow learner among the new ones.
A rehearsal step is one inner step on the mean next-byte loss of a batch of such segments,
each read in a fresh window after the start byte.

The prequential contract holds: rehearsal trains only on bytes the state has already scored
and absorbed, and it leaves the window cache, the position, the partial-chunk buffer and the
step count of the stream untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from memsdk.engine.model import START_BYTE
from memsdk.engine.ttt import TTTState, _masked, inner_update, model_device

__all__ = ["rehearse"]


def rehearse(state: TTTState, segments: Sequence[bytes], *, slot: int = 0) -> bool:
    """One inner step of ``state``'s ``slot`` on ``segments`` (earlier bytes of its stream),
    as a batch.

    Every segment is cut to the length of the shortest one. Nothing happens when there is no
    segment of at least two bytes or the fast weights are frozen (``inner_lr=0``); a
    non-finite loss or gradient rejects the step. Returns whether the fast weights moved.
    """
    model, config = state.model, state.config
    length = min((len(s) for s in segments), default=0)
    if length < 2 or config.inner_lr == 0:
        return False
    device = model_device(model)
    rows = [bytes([START_BYTE]) + bytes(s[:length]) for s in segments]
    tokens = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).long()
    tokens = tokens.view(len(rows), length + 1).to(device)  # (B, L + 1)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    first, dynamic = model.config.first_dynamic, model.config.n_dynamic
    fast = {n: w.detach().requires_grad_(True) for n, w in state.slot_weights(slot).items()}
    with torch.no_grad():
        hidden, _ = model.prefix(model.embed(inputs), [None] * first)  # (B, L, d)
    with torch.enable_grad():
        logits, _ = model.suffix(hidden, [None] * dynamic, fast)  # (B, L, 256)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        if not torch.isfinite(loss):
            return False
        grads = list(torch.autograd.grad(loss, list(fast.values())))
    if config.fast_params == "fisher_masked":
        grads = _masked(state, list(fast), tuple(grads))
    new, norm = inner_update(fast, grads, state.initial_weights(), config)
    if not torch.isfinite(norm):
        return False
    state.set_slot_weights(slot, {n: w.detach() for n, w in new.items()})
    return True
