"""Reading the weight memory: the bodies of ``HybridMemory.complete`` and ``surprise``.

Both read a scope's fast weights (or the initial ones) and learn nothing. Here live the checks
of their arguments and the shaping of what the engine returns, so that ``memory.py`` keeps the
API surface: the scope lookup, the gate and the docstrings.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from memsdk.chunking import decode_chunk
from memsdk.encoding import encode_text
from memsdk.engine import TTTState, byte_losses, generate
from memsdk.errors import InputError
from memsdk.recall import MAX_COMPLETION_BYTES
from memsdk.results import Surprise, SurpriseLine

__all__ = ["complete", "letter_mask", "surprise"]


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


def letter_mask(data: bytes) -> np.ndarray:
    """(len(data),) bool: the bytes of letters, ASCII ``A-Z a-z`` and every byte of a
    non-ASCII character (mostly letters of other scripts)."""
    b = np.frombuffer(data, dtype=np.uint8)
    lower = b | 0x20
    return ((lower >= ord("a")) & (lower <= ord("z"))) | (b >= 0x80)


def surprise(state: TTTState, data: bytes, weights: str) -> Surprise:
    """Bits per byte of each line of ``data`` (with its newline) under ``state``, scored in
    one pass so every line sees the lines before it in the window, and each line's novelty:
    the mean over its letters only.

    Why letters: in a log line the digits (times, counters, ids, addresses) and punctuation
    are new in every line, so their bits rank lines by how many numbers they hold more than
    by how new they are. Chosen on development lines (``benchmarks/anomaly_score.py``): among
    nine line scores, the letters' mean ranked BGL's alert lines best (AUROC 0.957 against
    0.901 for the mean over every byte), and on the held-out half it gives 0.781 (0.739)."""
    bits = byte_losses(state, data).numpy()
    letters = letter_mask(data)
    lines, start = [], 0
    for number, raw in enumerate(data.splitlines(keepends=True)):
        end = start + len(raw)
        text_line, _ = decode_chunk(raw.rstrip(b"\r\n"))
        line_bits, line_letters = bits[start:end], letters[start:end]
        novel = line_bits[line_letters] if line_letters.any() else line_bits
        lines.append(
            SurpriseLine(
                line=number,
                text=text_line,
                bits_per_byte=float(line_bits.mean()),
                novelty=float(novel.mean()),
            )
        )
        start = end
    return Surprise(bits_per_byte=float(bits.mean()), weights=weights, lines=lines)
