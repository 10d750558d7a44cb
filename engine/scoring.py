"""Reading a weight memory: scoring bytes under a state's fast weights, and generating.

Nothing here changes the state: each call scores in a fresh window holding only the context
it is given. A state of several fast-weight slots reads with their Bayesian mixture
(:func:`score_bytes`). The learning side (the prequential inner loop) is
:mod:`memsdk.engine.ttt`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from memsdk.engine.copy import mix_copy
from memsdk.engine.model import START_BYTE
from memsdk.engine.ttt import (
    LN2,
    TTTState,
    _as_bytes,
    _empty_caches,
    _forward,
    _tokens,
    model_device,
)
from memsdk.errors import InputError

__all__ = [
    "best_slot",
    "bits_per_byte",
    "byte_losses",
    "generate",
    "score_bytes",
    "slot_bits",
]

# A slot whose posterior weight fell below e**-PRUNE_NATS after a chunk stops being scored:
# its share of any later byte's probability is below 1e-13.
PRUNE_NATS = 30.0


def score_bytes(
    state: TTTState,
    data: bytes | str,
    *,
    context: bytes | str = b"",
    copy: bool = False,
    slot: int | None = None,
    slots: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Score ``data`` under the state's current fast weights, in a fresh window that holds only
    ``context`` (which is not scored). The state is not changed. With ``copy``, the match model
    of :mod:`memsdk.engine.copy` is mixed in: repeats of earlier bytes of ``context + data``
    are predicted to continue.

    A state of several fast-weight slots scores with their Bayesian mixture (uniform prior):
    each byte's distribution is the slots' distributions weighted by how well each predicted
    the bytes before it (``context`` included), so the slot that knows this kind of text soon
    carries the prediction, at a cost of at most log2(slots) bits over the whole text. The
    weights use only earlier bytes: the mixture is as prequential as one slot. ``slot`` scores
    with that slot alone; ``slots`` with the mixture of those slots only (each slot costs one
    forward pass, so a reader that knows which sources matter reads only their slots).

    Returns:
        (bits, greedy): the bits of each byte of ``data`` (N,) and whether each byte is the
        model's most likely next byte (N,) bool. Greedy decoding after ``context`` reproduces
        ``data`` exactly when every entry of ``greedy`` is true.

    Raises:
        InputError: ``data`` or ``context`` is neither bytes nor str, or no such slot.
    """
    data, context = _as_bytes(data, "data"), _as_bytes(context, "context")
    chosen = _chosen_slots(state, slot, slots)
    weights = [state.slot_weights(k) for k in chosen]
    if not data:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    model, size = state.model, state.config.chunk_bytes
    text = context + data
    inputs = bytes([START_BYTE]) + text[:-1]
    caches = [_empty_caches(model) for _ in weights]
    live = list(range(len(weights)))
    log_w = torch.zeros(len(weights))  # log posterior of each slot, in nats, normalised
    bits, greedy = [], []
    with torch.no_grad():
        for start in range(0, len(text), size):
            targets = _tokens(text[start : start + size], model_device(model))[0]
            log_probs = []
            for i in live:
                logits, caches[i] = _forward(
                    model, inputs[start : start + size], caches[i], weights[i]
                )
                log_probs.append(mix_copy(logits, text, start) if copy else logits.log_softmax(-1))
            if len(live) == 1:
                mixed = log_probs[0]
            else:
                lp = torch.stack(log_probs).cpu()  # (S, C, 256)
                seen = lp.gather(2, targets.cpu()[None, :, None].expand(len(live), -1, 1))[..., 0]
                # Each byte's prior: the posterior after every byte before it.
                prior = log_w[live][:, None] + seen.cumsum(1) - seen  # (S, C)
                mixed = torch.logsumexp(prior[..., None] + lp, 0)
                mixed = (mixed - torch.logsumexp(prior, 0)[:, None]).to(targets.device)
                after = log_w[live] + seen.sum(1)
                log_w[live] = after - torch.logsumexp(after, 0)
                live = [i for i in live if float(log_w[i]) > -PRUNE_NATS]
            bits.append(-mixed.gather(1, targets[:, None])[:, 0] / LN2)
            greedy.append(mixed.argmax(-1) == targets)
    return torch.cat(bits)[len(context) :].cpu(), torch.cat(greedy)[len(context) :].cpu()


def _chosen_slots(state: TTTState, slot: int | None, slots: Sequence[int] | None) -> list[int]:
    """The slots a reader uses: ``slot`` alone, else ``slots`` (in order, without repeats),
    else every slot of the state.

    Raises:
        InputError: both given, ``slots`` empty, or a slot the state does not hold.
    """
    if slot is not None and slots is not None:
        raise InputError("give slot= or slots=, not both")
    if slot is not None:
        return [slot]
    if slots is None:
        return state.slots()
    chosen = list(dict.fromkeys(slots))
    if not chosen:
        raise InputError("slots is empty: give at least one slot, or None for every slot")
    held = state.slots()
    missing = [k for k in chosen if k not in held]
    if missing:
        raise InputError(f"no slot {missing[0]} in this state (it holds {held})")
    return chosen


def slot_bits(state: TTTState, text: bytes | str, slots: list[int]) -> list[float]:
    """The total bits of ``text`` under each of ``slots`` alone, in a fresh window."""
    return [float(score_bytes(state, text, slot=k)[0].sum()) for k in slots]


def best_slot(state: TTTState, text: bytes | str, slots: Sequence[int] | None = None) -> int:
    """The slot among ``slots`` (default: every slot) that predicts ``text`` best (fewest
    bits; the first slot when there is one, or ``text`` is empty): the one that knows this
    kind of text."""
    slots = _chosen_slots(state, None, slots)
    if len(slots) == 1 or not text:
        return slots[0]
    totals = slot_bits(state, text, slots)
    return slots[min(range(len(slots)), key=totals.__getitem__)]


def byte_losses(
    state: TTTState,
    data: bytes | str,
    *,
    context: bytes | str = b"",
    slots: Sequence[int] | None = None,
) -> Tensor:
    """Bits for each byte of ``data`` (N,) under the state's current fast weights (the mixture
    of ``slots``, default every slot), in a fresh window that holds only ``context`` (which is
    not scored). The state is not changed.

    Raises:
        InputError: ``data`` or ``context`` is neither bytes nor str, or a bad ``slots``.
    """
    return score_bytes(state, data, context=context, slots=slots)[0]


def bits_per_byte(state: TTTState, data: bytes | str, *, context: bytes | str = b"") -> float:
    """Mean bits per byte of ``data`` under the state (no update); see :func:`byte_losses`.

    Raises:
        InputError: ``data`` is empty, or not bytes or str.
    """
    losses = byte_losses(state, data, context=context)
    if not len(losses):
        raise InputError("data is empty: give at least one byte to score")
    return float(losses.mean())


def generate(
    state: TTTState,
    prompt: bytes | str,
    max_bytes: int,
    *,
    temperature: float = 0.0,
    stop: bytes | None = None,
    seed: int | None = None,
    copy: bool = False,
    slot: int | None = None,
    slots: Sequence[int] | None = None,
) -> bytes:
    """Continue ``prompt`` under the state's fast weights, in a fresh window; greedy by default.

    Stops after ``max_bytes`` bytes, or once the output ends with ``stop``. The state is not
    changed. Returns the continuation only (not the prompt). ``copy`` mixes in the match model
    (:mod:`memsdk.engine.copy`), so repeats of the prompt's text continue as they did there.
    A state of several fast-weight slots continues with the one that predicts the prompt best
    (:func:`best_slot`) among ``slots`` (default: every slot), or with ``slot``.

    Raises:
        InputError: ``max_bytes`` below 0, a negative temperature, or a prompt of the wrong type.
    """
    prompt = _as_bytes(prompt, "prompt")
    if max_bytes < 0:
        raise InputError(f"max_bytes must be >= 0, got {max_bytes}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    weights = state.slot_weights(best_slot(state, prompt, _chosen_slots(state, slot, slots)))
    model, size = state.model, state.config.chunk_bytes
    generator = torch.Generator(model_device(model)).manual_seed(seed) if seed is not None else None
    caches = _empty_caches(model)

    def feed(tokens: bytes) -> Tensor:
        nonlocal caches
        logits, caches = _forward(model, tokens, caches, weights)
        return logits[-1]

    out = bytearray()
    with torch.no_grad():
        inputs = bytes([START_BYTE]) + prompt
        for start in range(0, len(inputs), size):
            logits = feed(inputs[start : start + size])
        while len(out) < max_bytes:
            if copy:
                text = prompt + out
                logits = mix_copy(logits[None], text, len(text))[0]  # log-probabilities
            if temperature == 0:
                byte = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                byte = int(torch.multinomial(probs, 1, generator=generator))
            out.append(byte)
            if stop and out.endswith(stop):
                break
            logits = feed(bytes([byte]))
    return bytes(out)
