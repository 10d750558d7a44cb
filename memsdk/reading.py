"""Reading the weight memory: the bodies of ``HybridMemory.complete`` and ``surprise``.

Both read a scope's fast weights (or the initial ones) and learn nothing. Here live the checks
of their arguments and the shaping of what the engine returns, so that ``memory.py`` keeps the
API surface: the scope lookup, the gate and the docstrings.
"""

from __future__ import annotations

import math
import numbers

from memsdk.chunking import decode_chunk
from memsdk.encoding import encode_text
from memsdk.engine import TTTState, byte_losses, generate
from memsdk.errors import InputError
from memsdk.recall import MAX_COMPLETION_BYTES
from memsdk.results import Surprise, SurpriseLine

__all__ = ["complete", "surprise"]


def _stop_bytes(stop: object) -> bytes | None:
    if isinstance(stop, str):
        return encode_text(stop, "stop")
    if isinstance(stop, bytes | bytearray):
        return bytes(stop)
    if stop is None:
        return None
    raise InputError(f"stop must be a str, bytes or None, got {type(stop).__name__}")


def complete(
    state: TTTState,
    prompt: bytes,
    *,
    max_bytes: int,
    stop: str | bytes | None,
    temperature: float,
    seed: int | None,
) -> str:
    """The continuation of ``prompt`` under ``state``, without the stop string (see
    :meth:`memsdk.HybridMemory.complete` for the arguments and their errors)."""
    if (
        isinstance(max_bytes, bool)
        or not isinstance(max_bytes, int)
        or not 1 <= max_bytes <= MAX_COMPLETION_BYTES
    ):
        raise InputError(
            f"max_bytes must be an int in 1..{MAX_COMPLETION_BYTES}, got {max_bytes!r}"
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise InputError(
            f"temperature must be a finite number >= 0 (0 decodes greedily), got {temperature!r}"
        )
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64
    ):
        raise InputError(f"seed must be None or an int in 0..2**64-1, got {seed!r}")
    stop_bytes = _stop_bytes(stop)
    out = generate(
        state, prompt, max_bytes, temperature=float(temperature), stop=stop_bytes or None, seed=seed
    )
    if stop_bytes and out.endswith(stop_bytes):
        out = out[: -len(stop_bytes)]
    return out.decode("utf-8", "replace")


def surprise(state: TTTState, data: bytes, weights: str) -> Surprise:
    """Bits per byte of each line of ``data`` (with its newline) under ``state``, scored in
    one pass so every line sees the lines before it in the window."""
    bits = byte_losses(state, data)
    lines, start = [], 0
    for number, raw in enumerate(data.splitlines(keepends=True)):
        end = start + len(raw)
        text_line, _ = decode_chunk(raw.rstrip(b"\r\n"))
        lines.append(
            SurpriseLine(line=number, text=text_line, bits_per_byte=float(bits[start:end].mean()))
        )
        start = end
    return Surprise(bits_per_byte=float(bits.mean()), weights=weights, lines=lines)
