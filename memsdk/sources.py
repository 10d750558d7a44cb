"""What ``ingest`` reads: paths, directory walks, file objects and iterables, as byte blocks.

:func:`resolve_sources` turns what the caller passed into a list of :class:`Source` (a name, a
size when known, and a function that yields the bytes in blocks; nothing is read whole) and
:class:`Skipped` entries (what a walk found and will not read, and why). :func:`first_block`
opens a source and says why it is not ingested (unreadable, empty, too large, binary).
:class:`CountedBlocks` counts what a stream yielded and cuts it at a size limit.

A directory walk stays inside the directory it was given (its real path, symlinks resolved):
a symlink whose target resolves outside it is listed, not followed, unless the caller asks
for ``follow_symlinks``. Either way every directory and every file is visited once (by device
and inode), so a symlink loop ends the walk of that branch and is listed. FIFOs, sockets and
devices are told apart by ``stat`` and never opened (opening a FIFO blocks until a writer
comes). A file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and read only if it is still the
regular file the walk listed (same device and inode), so an entry swapped for a symlink or a
FIFO between the walk and the read is listed as changed, not read. Hard links are files of the
tree like any other. The walk keeps its own stack: a directory thousands of levels deep is
no deeper in Python's call stack than a flat one.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from memsdk.encoding import encode_text
from memsdk.errors import InputError, NotFoundError

__all__ = [
    "LIMIT_HINT",
    "READ_BLOCK",
    "SNIFF_BYTES",
    "CountedBlocks",
    "Skipped",
    "Source",
    "document_label",
    "first_block",
    "resolve_sources",
]

READ_BLOCK = 1 << 20
SNIFF_BYTES = 8192  # a NUL byte in this many first bytes marks a file as binary
LIMIT_HINT = "MemoryConfig.max_document_bytes; split the document or raise the limit"
_STREAM_HINT = "pass an open file object to stream it"


@dataclass
class Source:
    """One document to ingest."""

    name: str
    size: int | None
    blocks: Callable[[], Iterator[bytes]]
    sniff: bool  # check for binary content before ingesting

    def __post_init__(self) -> None:
        self.name = document_label(self.name)


@dataclass(frozen=True)
class Skipped:
    """An entry that is not read, and why."""

    name: str
    reason: str


FileId = tuple[int, int]  # (st_dev, st_ino): the same file or directory under any name


def _identity(st: os.stat_result) -> FileId:
    return st.st_dev, st.st_ino


def _file_blocks(path: str, identity: FileId) -> Callable[[], Iterator[bytes]]:
    def blocks() -> Iterator[bytes]:
        # O_NONBLOCK: a FIFO swapped in since the walk opens without waiting for a writer, and
        # the check below refuses it; on a regular file the flag changes nothing.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink where the walk saw a file
                raise OSError(e.errno, "changed after the walk listed it: now a symlink") from e
            raise
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or _identity(st) != identity:
                now = "another file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)
                raise OSError(errno.ESTALE, f"changed after the walk listed it: now {now}")
            while block := f.read(READ_BLOCK):
                yield block

    return blocks


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a special file"


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


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


@dataclass(frozen=True)
class _Dir:
    """A directory to walk: its real path, identity and the directory it was reached from."""

    path: str
    identity: FileId
    parent: _Dir | None

    def within(self, identity: FileId) -> bool:
        """Whether ``identity`` is this directory or one that contains it on the walk."""
        node: _Dir | None = self
        while node is not None:
            if node.identity == identity:
                return True
            node = node.parent
        return False


def _list_dir(d: _Dir) -> list[str]:
    """The entry names of ``d``, sorted, if it is still the directory the walk listed."""
    fd = os.open(d.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _identity(os.fstat(fd)) != d.identity:
            raise OSError(errno.ESTALE, "changed after the walk listed it; not read")
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _target(link: str) -> tuple[str, os.stat_result] | str:
    """A symlink's real target and its status, or why it has none (broken, a loop)."""
    try:
        # stat first: the kernel bounds the chain (ELOOP), so realpath, which recurses once per
        # link in Python 3.11, then has at most that many links to follow.
        st = os.stat(link)
        return os.path.realpath(link, strict=True), st
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symlink (its target does not exist)"
        return f"unreadable symlink ({_os_reason(e)})"


def _walk(root: str, root_identity: FileId, *, follow_symlinks: bool) -> list[Source | Skipped]:
    """Every file under ``root`` (a real path) in sorted depth-first order, then what the
    symlinks lead to, and every entry passed over with its reason.

    Symlinks are resolved after the plain entries, so that a file or directory met both as
    itself and through a symlink is read under its own name and the symlink is the entry
    listed as already read."""
    found: list[Source | Skipped] = []
    reached: dict[FileId, str] = {root_identity: root}  # each directory and file, and its name
    links: deque[tuple[str, _Dir]] = deque()  # (symlink, the directory that holds it)
    dirs = [_Dir(root, root_identity, None)]

    def visit(path: str, real: str, st: os.stat_result, d: _Dir) -> _Dir | None:
        """Take the entry ``path`` (``real`` once symlinks are resolved); a directory to walk
        is returned."""
        identity = _identity(st)
        if identity in reached and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            if stat.S_ISDIR(st.st_mode) and d.within(identity):
                found.append(Skipped(path, f"symlink loop: {real} contains it"))
            elif stat.S_ISDIR(st.st_mode):
                found.append(
                    Skipped(path, f"the same directory as {reached[identity]}, walked once")
                )
            else:
                found.append(Skipped(path, f"the same file as {reached[identity]}, taken once"))
        elif stat.S_ISDIR(st.st_mode):
            reached[identity] = path
            return _Dir(real, identity, d)
        elif stat.S_ISREG(st.st_mode):
            reached[identity] = path
            found.append(Source(real, st.st_size, _file_blocks(real, identity), True))
        else:
            found.append(Skipped(path, f"{_kind(st.st_mode)}, not read"))
        return None

    while dirs or links:
        if not dirs:
            path, d = links.popleft()
            target = _target(path)
            if isinstance(target, str):
                found.append(Skipped(path, target))
            elif not follow_symlinks and not _inside(target[0], root):
                reason = (
                    f"symlink to {target[0]}, outside {root} (a walk stays inside the directory "
                    "it was given; follow_symlinks=True or --follow-symlinks reads it)"
                )
                found.append(Skipped(path, reason))
            elif (sub := visit(path, *target, d)) is not None:
                dirs.append(sub)
            continue
        d = dirs.pop()
        try:
            names = _list_dir(d)
        except OSError as e:
            found.append(Skipped(d.path, f"unreadable directory ({_os_reason(e)})"))
            continue
        subdirs = []
        for entry in names:
            path = os.path.join(d.path, entry)
            if entry.startswith("."):
                found.append(Skipped(path, "hidden (the name starts with '.')"))
                continue
            try:
                st = os.lstat(path)
            except OSError as e:
                found.append(Skipped(path, f"unreadable ({_os_reason(e)})"))
                continue
            if stat.S_ISLNK(st.st_mode):
                links.append((path, d))
            elif (sub := visit(path, path, st, d)) is not None:
                subdirs.append(sub)
        dirs.extend(reversed(subdirs))
    return found


def _resolve_path(
    source: str | os.PathLike[str], *, follow_symlinks: bool
) -> list[Source | Skipped]:
    path = Path(source).expanduser()
    try:
        # A path named directly is followed, as cat follows it; only a walk stays inside.
        st = os.stat(path)
        real = os.path.realpath(path, strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(
            f"no file or directory at {str(source)[:200]!r}: ingest takes a path, a directory, a "
            "file object or an iterable of str/bytes; to store a piece of text use add()"
        ) from None
    except OSError as e:
        return [Skipped(str(path), f"unreadable ({_os_reason(e)})")]
    if stat.S_ISDIR(st.st_mode):
        return _walk(real, _identity(st), follow_symlinks=follow_symlinks)
    if stat.S_ISREG(st.st_mode):
        return [Source(real, st.st_size, _file_blocks(real, _identity(st)), True)]
    return [Skipped(str(path), f"{_kind(st.st_mode)}, not read ({_STREAM_HINT})")]


def resolve_sources(
    source: Any, name: str | None, *, follow_symlinks: bool = False
) -> list[Source | Skipped]:
    """The documents ``source`` stands for: a file, every file under a directory, a file object
    or an iterable of str/bytes pieces forming one stream; and, for a path, each entry that is
    not read with its reason.

    Args:
        follow_symlinks: let a directory walk follow symlinks whose target is outside the
            directory (loops are still detected, and nothing is read twice).

    Raises:
        NotFoundError: a path that does not exist.
        InputError: a source of another type, or a ``name`` that is not a str.
    """
    if isinstance(source, str | os.PathLike):
        return _resolve_path(source, follow_symlinks=follow_symlinks)
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


def first_block(src: Source, *, limit: int) -> tuple[bytes, Iterator[bytes]] | str:
    """The source's first non-empty block and an iterator over the rest, or why it is not
    ingested: larger than ``limit`` bytes (known before reading), unreadable, empty, or binary
    (a NUL byte in the first ``SNIFF_BYTES``)."""
    if src.size is not None and src.size > limit:
        return f"{src.size} bytes, larger than {limit} ({LIMIT_HINT})"
    blocks = src.blocks()
    try:
        first = next((block for block in blocks if block), b"")  # skip empty pieces
    except OSError as e:
        return f"unreadable ({_os_reason(e)})"
    reason = None
    if not first:
        reason = "empty"
    elif src.sniff and b"\x00" in first[:SNIFF_BYTES]:
        reason = "binary (NUL bytes)"
    if reason is None:
        return first, blocks
    close = getattr(blocks, "close", None)  # let a file source close its file now
    if close is not None:
        close()
    return reason


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
