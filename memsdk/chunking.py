"""Streaming chunker: cuts a byte stream into chunks of whole lines, keeping byte offsets.

A chunk holds as many whole lines as fit in ``chunk_bytes``; a line longer than that becomes a
chunk of its own. Only a line longer than ``max_line_bytes`` is cut, into pieces at white space
or at a UTF-8 character boundary. Memory use is bounded by the read block plus
``max_line_bytes``, whatever the stream's size, so a 1 GB file or a 100 MB single line streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["RawChunk", "chunk_stream", "decode_chunk"]


@dataclass(frozen=True)
class RawChunk:
    """``data`` is ``document[start_byte:end_byte]``."""

    seq: int
    start_byte: int
    end_byte: int
    data: bytes

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def decode_chunk(data: bytes) -> tuple[str, bytes | None]:
    """Text for search and display, and the original bytes when the text cannot hold them.

    Invalid UTF-8 and NUL (which SQL text columns reject) become U+FFFD in the text; the exact
    bytes are then returned too, so nothing ingested is lost.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd"), data
    if "\x00" in text:
        return text.replace("\x00", "\ufffd"), data
    return text, None


def _split_point(buf: bytearray, start: int, limit: int) -> int:
    """Where to cut an over-long line that starts at ``start``: after the last white space in
    the second half of ``limit`` bytes, else at the last UTF-8 character boundary."""
    end = start + limit
    space = max(buf.rfind(b" ", start + limit // 2, end), buf.rfind(b"\t", start + limit // 2, end))
    if space >= 0:
        return space + 1
    while end > start + 1 and (buf[end] & 0xC0) == 0x80:  # inside a multi-byte character
        end -= 1
    return end


def chunk_stream(
    blocks: Iterable[bytes], *, chunk_bytes: int, max_line_bytes: int
) -> Iterator[RawChunk]:
    """Yield the chunks of the stream made by concatenating ``blocks``.

    Args:
        blocks: the stream in pieces of any size (file reads, lines of a tail, ...).
        chunk_bytes: target chunk size.
        max_line_bytes: lines longer than this are cut (>= chunk_bytes).
    """
    buf = bytearray()
    base = 0  # stream offset of buf[0]
    seq = 0

    def cuts(final: bool) -> Iterator[int]:
        """Lengths of the chunks that can be cut from buf[pos:] now."""
        pos = 0
        while len(buf) - pos > (0 if final else chunk_bytes - 1):
            if final and len(buf) - pos <= chunk_bytes:
                yield len(buf) - pos
                return
            cut = buf.rfind(b"\n", pos, pos + chunk_bytes) + 1
            if cut == 0:  # the first line is longer than chunk_bytes: it is a chunk of its own
                nl = buf.find(b"\n", pos, pos + max_line_bytes)
                if nl >= 0:
                    cut = nl + 1
                elif len(buf) - pos > max_line_bytes:
                    cut = _split_point(buf, pos, max_line_bytes)
                elif final:
                    cut = len(buf)
                else:
                    return  # wait for the end of this line
            yield cut - pos
            pos = cut

    for block in blocks:
        if not block:
            continue
        buf += block
        consumed = 0
        for length in cuts(final=False):
            yield RawChunk(
                seq,
                base + consumed,
                base + consumed + length,
                bytes(buf[consumed : consumed + length]),
            )
            seq += 1
            consumed += length
        # Compact once per block, not per chunk: deleting from the front is a memmove.
        del buf[:consumed]
        base += consumed
    consumed = 0
    for length in cuts(final=True):
        yield RawChunk(
            seq, base + consumed, base + consumed + length, bytes(buf[consumed : consumed + length])
        )
        seq += 1
        consumed += length
