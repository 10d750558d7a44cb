"""The error hierarchy of memsdk.

Every error memsdk raises on purpose derives from :class:`MemsdkError`; each subclass also
inherits the builtin a caller would naturally catch (``ValueError``, ``LookupError``, ...).
This module imports nothing from the project, so every layer (``memsdk.stores``,
``memsdk.engine``) may raise these without depending on the public API.
"""

from __future__ import annotations

__all__ = [
    "BusyError",
    "ConfigError",
    "DatabaseCorruptedError",
    "DuplicateError",
    "FilterError",
    "FormatError",
    "IndexCorruptedError",
    "InputError",
    "MemsdkError",
    "ModelNotFoundError",
    "NotFoundError",
    "StaleFilesError",
    "StorageError",
]


class MemsdkError(Exception):
    """Base class of every error raised by memsdk."""


class ConfigError(MemsdkError, ValueError):
    """A configuration value is invalid or inconsistent."""


class InputError(MemsdkError, ValueError):
    """Input to a public call is invalid: empty text, oversized data, bad metadata, bad scope."""


class FilterError(InputError):
    """A metadata filter is malformed: unknown operator, wrong value type, bad nesting."""


class NotFoundError(MemsdkError, LookupError):
    """A memory, document or scope does not exist (or is not visible from the given scope)."""


class DuplicateError(MemsdkError, ValueError):
    """A write would create a second copy of content that the scope already holds."""


class FormatError(MemsdkError, ValueError):
    """A file on disk has an unexpected format: a newer format version, a forged or truncated
    file, or a manifest that does not match what this memsdk expects."""


class IndexCorruptedError(FormatError):
    """The vector index on disk is missing, unreadable or disagrees with the manifest.

    The SQL database is the source of truth; the message names the command that rebuilds the
    index from it (``memsdk rebuild-index --memory DIR``).
    """


class DatabaseCorruptedError(FormatError):
    """The memory's SQLite database file is damaged (truncated, overwritten, not a database).

    The database is the source of truth, so nothing else can rebuild it: the message names the
    repair (restore ``memory.db`` from a backup, or salvage it with the ``sqlite3`` shell's
    ``.recover``, then rebuild the index).
    """


class StaleFilesError(FormatError):
    """Files of a memory directory belong to another history than its database: the database
    was removed, emptied or restored from an older backup, or the vector index or weights were
    copied from another memory. Using them would mix old data into the new records (reused ids,
    another tenant's weights), so the memory refuses to open.

    The message names the repair: restore the matching database, or run ``memsdk repair
    --memory DIR``, which keeps the database and moves the files it does not vouch for aside
    (``memsdk rebuild-index`` when only the index is stale).
    """


class BusyError(MemsdkError, TimeoutError):
    """Another process holds what the call needs (a scope's weight-memory lease) for longer
    than the call waits."""


class ModelNotFoundError(MemsdkError, FileNotFoundError):
    """A model's files are not installed where memsdk looks for them."""


class StorageError(MemsdkError, OSError):
    """A write failed for want of space or permission (disk full, a read-only file system,
    a database that cannot grow). What was committed before is kept; the failed write left
    nothing half-written."""
