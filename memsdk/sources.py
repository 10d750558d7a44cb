"""What ``ingest`` reads: paths, directory walks, file objects and iterables, as byte blocks.

:func:`resolve_sources` turns what the caller passed into a list of :class:`Source` (a name, a
size when known, and a function that yields the bytes in blocks); nothing is read whole.
:class:`CountedBlocks` counts what a stream yielded and cuts it at a size limit.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from memsdk.encoding import encode_text
from memsdk.errors import InputError, NotFoundError

__all__ = [
    "READ_BLOCK",
    "SNIFF_BYTES",
    "CountedBlocks",
    "Source",
    "document_label",
    "resolve_sources",
]

READ_BLOCK = 1 << 20
SNIFF_BYTES = 8192  # a NUL byte in this many first bytes marks a file as binary


@dataclass
class Source:
    """One document to ingest."""

    name: str
    size: int | None
    blocks: Callable[[], Iterator[bytes]]
    sniff: bool  # check for binary content before ingesting

    def __post_init__(self) -> None:
        self.name = document_label(self.name)


def _file_blocks(path: Path) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(READ_BLOCK):
                yield block

    return blocks


def _fileobj_blocks(f: BinaryIO | TextIO, name: str) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        while True:
            try:
                block = f.read(READ_BLOCK)
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{name} is open in text mode and holds bytes that are not valid in its "
                    f"encoding ({e.reason}): open it in binary mode ('rb'); memsdk keeps "
                    "invalid bytes recoverable"
                ) from None
            if not block:
                return
            yield encode_text(block, name) if isinstance(block, str) else block

    return blocks


def _iter_blocks(items: Iterable[Any], name: str) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        for i, item in enumerate(items):
            if isinstance(item, str):
                yield encode_text(item, f"{name}: item {i}")
            elif isinstance(item, bytes | bytearray | memoryview):
                yield bytes(item)
            else:
                raise InputError(
                    f"{name}: item {i} is a {type(item).__name__}; an iterable source must "
                    "yield str or bytes"
                )

    return blocks


_SURROGATE = re.compile("[\ud800-\udfff]")


def document_label(name: str) -> str:
    """A document name as stored: NUL characters (which PostgreSQL text cannot hold) and lone
    surrogates (which no UTF-8 text holds; ``os`` gives one for each undecodable byte of a file
    name) become U+FFFD, as invalid bytes do in chunk text."""
    return _SURROGATE.sub("\ufffd", name.replace("\x00", "\ufffd"))


def resolve_sources(source: Any, name: str | None) -> list[Source]:
    """The documents ``source`` stands for: a file, every file under a directory, a file object
    or an iterable of str/bytes pieces forming one stream.

    Raises:
        NotFoundError: a path that does not exist.
        InputError: a source of another type, or a ``name`` that is not a str.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for file in sorted(files):
                    p = Path(root) / file
                    if file.startswith(".") or not p.is_file():
                        continue
                    found.append(Source(str(p.resolve()), p.stat().st_size, _file_blocks(p), True))
            return found
        if path.is_file():
            return [Source(str(path.resolve()), path.stat().st_size, _file_blocks(path), True)]
        raise NotFoundError(
            f"no file or directory at {str(source)[:200]!r}: ingest takes a path, a directory, a "
            "file object or an iterable of str/bytes; to store a piece of text use add()"
        )
    if isinstance(source, bytes | bytearray | memoryview):
        raise InputError(
            "ingest got bytes: to store one text use add(); to stream bytes pass a file object "
            "or an iterable of bytes"
        )
    if name is not None and not isinstance(name, str):
        raise InputError(f"name must be a str, got {type(name).__name__}")
    if hasattr(source, "read"):
        label = document_label(name or str(getattr(source, "name", "") or "<stream>"))
        return [Source(label, None, _fileobj_blocks(source, label), True)]
    if isinstance(source, Iterable) and not isinstance(source, Mapping):
        label = document_label(name or "<stream>")
        return [Source(label, None, _iter_blocks(source, label), False)]
    raise InputError(
        f"ingest cannot read a {type(source).__name__}: pass a path, a directory, a file object "
        "or an iterable of str/bytes"
    )


class CountedBlocks:
    """The blocks ``first, *rest``, counting bytes into ``seen`` and reporting each block;
    the stream ends after ``limit`` bytes (``cut`` tells whether it had more)."""

    def __init__(
        self, first: bytes, rest: Iterator[bytes], report: Callable[[int], Any], *, limit: int
    ) -> None:
        self.first, self.rest, self.report, self.seen = first, rest, report, 0
        self.limit, self.cut = limit, False

    def __iter__(self) -> Iterator[bytes]:
        for block in itertools.chain((self.first,), self.rest):
            if self.seen + len(block) > self.limit:
                block = block[: self.limit - self.seen]
                self.cut = True
            self.seen += len(block)
            self.report(len(block))
            yield block
            if self.cut:
                return
