"""The streaming chunker: whole lines, exact byte offsets, bounded sizes, any block split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from memsdk.chunking import chunk_stream, decode_chunk


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


lines = st.lists(
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")), min_size=0, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(
    lines=lines,
    trailing_newline=st.booleans(),
    cuts=st.lists(st.integers(0, 20_000), max_size=8),
    chunk_bytes=st.integers(64, 700),
)
def test_chunks_cover_the_stream_with_whole_lines(lines, trailing_newline, cuts, chunk_bytes):
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    max_line = chunk_bytes * 2
    chunks = list(
        chunk_stream(_split(data, cuts), chunk_bytes=chunk_bytes, max_line_bytes=max_line)
    )
    assert b"".join(c.data for c in chunks) == data
    offset = 0
    for seq, c in enumerate(chunks):
        assert (c.seq, c.start_byte, c.end_byte) == (seq, offset, offset + len(c.data))
        assert data[c.start_byte : c.end_byte] == c.data
        offset = c.end_byte
        assert c.data
        if len(c.data) > chunk_bytes:
            # Only a single line may exceed the target, and only up to max_line_bytes.
            assert b"\n" not in c.data[:-1]
            assert len(c.data) <= max_line + 1
    # Lines are never split: every chunk but the last ends at a line end (or is a cut piece
    # of a line longer than max_line_bytes).
    long_lines = any(len(line) >= max_line for line in lines)
    if not long_lines:
        assert all(c.data.endswith(b"\n") for c in chunks[:-1])


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_chunking_does_not_depend_on_how_the_stream_arrives(cuts):
    data = b"".join(b"line %d " % i + b"x" * (i % 97) + b"\n" for i in range(200))
    whole = list(chunk_stream([data], chunk_bytes=256, max_line_bytes=1024))
    pieces = list(chunk_stream(_split(data, cuts), chunk_bytes=256, max_line_bytes=1024))
    assert whole == pieces


def test_an_over_long_line_is_cut_at_white_space_or_a_character_boundary():
    line = ("é" * 3000).encode() + b" tail\n"  # 2-byte characters, no white space for 6000 bytes
    chunks = list(chunk_stream([line], chunk_bytes=512, max_line_bytes=1000))
    assert b"".join(c.data for c in chunks) == line
    for c in chunks:
        c.data.decode("utf-8")  # every piece is valid UTF-8: no character was cut in half
        assert len(c.data) <= 1000


def test_a_huge_single_line_streams_in_bounded_pieces():
    block = b"a" * (1 << 20)
    count = 0
    for chunk in chunk_stream((block for _ in range(100)), chunk_bytes=512, max_line_bytes=1 << 16):
        assert len(chunk.data) <= 1 << 16
        count += 1
    assert count == (100 << 20) // (1 << 16)


def test_decode_keeps_invalid_bytes_recoverable():
    assert decode_chunk(b"plain\n") == ("plain\n", None)
    text, raw = decode_chunk(b"bad \xff\xfe byte")
    assert raw == b"bad \xff\xfe byte"
    assert "\ufffd" in text
    text, raw = decode_chunk(b"nul\x00inside")
    assert raw == b"nul\x00inside" and "\x00" not in text
