"""Checks of the arguments the public API takes: texts, scopes and memory ids.

Each refuses bad input with an :class:`~memsdk.errors.InputError` that names the problem and
the fix, before anything is stored or read.
"""

from __future__ import annotations

from typing import Any

from memsdk.encoding import encode_text
from memsdk.errors import InputError
from memsdk.scope import Scope

__all__ = ["MAX_INT", "check_id", "check_scope", "text_to_store", "to_bytes"]

# Ids, limits and offsets are SQL bigints: the databases refuse larger integers.
MAX_INT = 2**63 - 1


def to_bytes(text: Any, what: str) -> bytes:
    """``text`` (str or bytes) as bytes; a str must be encodable as UTF-8."""
    if isinstance(text, str):
        return encode_text(text, what)
    if isinstance(text, bytes | bytearray):
        return bytes(text)
    raise InputError(f"{what} must be str or bytes, got {type(text).__name__}")


def text_to_store(text: Any, max_bytes: int, call: str = "add()") -> bytes:
    """``text`` as the bytes ``add``, ``update`` and the LangChain upsert store.

    Raises:
        InputError: not str/bytes, empty or blank, or larger than ``max_bytes``.
    """
    data = to_bytes(text, "text")
    if not data.strip():
        raise InputError("text is empty or only white space: there is nothing to remember")
    if len(data) > max_bytes:
        raise InputError(
            f"text is {len(data)} bytes, {call} takes at most {max_bytes}: stream large content "
            "with ingest()"
        )
    return data


def check_scope(scope: Any) -> Scope:
    if not isinstance(scope, Scope):
        raise InputError(
            f"scope must be a memsdk.Scope, got {type(scope).__name__}: "
            "pass scope=Scope(tenant=..., user=...)"
        )
    return scope


def check_id(memory_id: Any) -> int:
    if isinstance(memory_id, bool) or not isinstance(memory_id, int):
        raise InputError(f"memory id must be an int, got {type(memory_id).__name__} {memory_id!r}")
    if not -MAX_INT - 1 <= memory_id <= MAX_INT:
        raise InputError(
            f"memory id {memory_id} does not fit in 64 bits, so no memory has it: use an id "
            "that add(), ingest() or search() returned"
        )
    return memory_id
