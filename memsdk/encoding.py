"""How the str a caller passes becomes bytes or stored text, and what a lone surrogate does.

A Python str may hold lone surrogates (U+D800..U+DFFF), which are not Unicode text and have no
UTF-8 encoding. Two kinds of field take them differently:

- **text to remember or score** (``add``, ``ingest`` pieces, ``update``, queries, prompts,
  ``stop``): encoded with ``surrogateescape``, so U+DC80..U+DCFF stand for the raw bytes
  0x80..0xFF (what ``bytes.decode("utf-8", "surrogateescape")`` and ``os`` functions make of
  invalid UTF-8) and round-trip exactly; any other lone surrogate is an :class:`InputError`.
- **names and values stored as SQL text** (scope parts, metadata keys and values, filter keys
  and values): must be valid text; every lone surrogate is an :class:`InputError`.

A leaf module (``memsdk.errors`` only), so ``memsdk.stores`` may use it.
"""

from __future__ import annotations

from memsdk.errors import InputError

__all__ = ["check_text", "encode_text", "lone_surrogate"]


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in ``text``, or None when it has none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _refuse(text: str, index: int, what: str, fix: str) -> InputError:
    return InputError(
        f"{what} holds the lone surrogate U+{ord(text[index]):04X} at index {index}, which is "
        f"not text and has no UTF-8 encoding: {fix}"
    )


def encode_text(text: str, what: str) -> bytes:
    """``text`` as UTF-8 bytes, U+DC80..U+DCFF standing for raw bytes (surrogateescape).

    Raises:
        InputError: ``text`` holds another lone surrogate (U+D800..U+DC7F, U+DD00..U+DFFF).
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise _refuse(
            text,
            e.start,
            what,
            "pass bytes, or a str decoded with errors='surrogateescape' or 'replace'",
        ) from None


def check_text(text: str, what: str) -> str:
    """``text`` itself, when it is valid Unicode text (it is stored as SQL text).

    Raises:
        InputError: ``text`` holds a lone surrogate.
    """
    index = lone_surrogate(text)
    if index is not None:
        raise _refuse(text, index, what, "remove it, or replace it with U+FFFD")
    return text
