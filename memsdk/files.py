"""Atomic file writes: a reader sees the old file or the new one, never a torn mix.

A leaf module (standard library and memsdk.errors only), shared by memsdk.stores and
memsdk.engine.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from memsdk.errors import StorageError

__all__ = [
    "atomic_write_bytes",
    "atomic_writer",
    "fsync_directory",
    "process_running",
    "remove_stale_temp_files",
]

# The temp files of atomic_writer: ".<name>.<pid>.<8 hex>.tmp".
_TEMP = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power loss (no-op where
    the platform cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    Raises:
        StorageError: the write failed (disk full, permissions); ``path`` is left as it was.
    """
    with atomic_writer(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file to write ``path``'s new content into, in pieces (seekable, so a header can be
    filled in last), made ``path`` atomically when the block ends without an error: temp file
    in the same folder, fsync, ``os.replace``. For content too large to hold twice in memory.

    Raises:
        StorageError: the write failed (disk full, permissions); ``path`` is left as it was.
            What the block raises propagates the same way, the temp file removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # see _TEMP
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise StorageError(
                exc.errno,
                f"cannot write {path}: {exc.strerror or exc}; the previous file is unchanged: "
                "free space (or fix permissions) and retry",
            ) from exc
        raise
    fsync_directory(path.parent)


def process_running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> int:
    """Remove the temp files that writers killed mid-write left under ``directory`` (their
    process no longer runs on this machine); returns how many were removed."""
    removed = 0
    for root, _, files in os.walk(directory):
        for name in files:
            match = _TEMP.fullmatch(name)
            if (
                match
                and int(match.group(1)) != os.getpid()
                and not process_running(int(match.group(1)))
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
                    removed += 1
    return removed
