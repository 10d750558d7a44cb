"""Embed each log template once: chunks equal once their variable fields are masked share a vector.

Log lines repeat a few templates with different numbers, ids, addresses, paths and times, and
the embedder spends nearly all of an ingest's time on them. :func:`mask` replaces those fields
with fixed placeholders; chunks of one ingest whose masked text is equal get the vector of the
first of them, computed from its real text. Full-text search still indexes every chunk's exact
text, which is where identifiers are found.

Why the first occurrence's vector rather than the vector of the masked text: chunks that no
other chunk shares keep exactly the vector they had before (nothing changes for prose, code, or
a log line seen once), and a masked text ("<NUM>.<NUM>.<NUM>.<NUM>") is not text the embedder
was trained on. A shared vector differs from the chunk's own only by what its numbers and ids
moved, and dense vectors place such chunks together anyway.

Why a masking function rather than a template miner (Drain3): a chunk holds several lines, so a
chunk's key is the sequence of its lines' templates, and masking yields it deterministically in
one pass, with no miner state to persist, recover after a crash, or keep per scope.

Vectors are reused only inside one ingest stream, and so inside one scope: a vector computed
from one scope's text never lands in another scope's index.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["TemplateVectors", "mask"]

# Order matters: whole fields first (an address before a time, whose pattern its digits would
# match; then a path), then what remains of hex and decimal numbers inside tokens
# (blk_-1608999687919862906, R02-M1-N0, 0x7f3a).
_FIELDS = [
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<IP>"),
    (
        re.compile(
            r"\d{2,4}[-/.]\d{1,2}[-/.]\d{1,4}(?:[ T]\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?)?"
            r"|\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?"
        ),
        "<T>",
    ),
    (re.compile(r"(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}"), "<MAC>"),
    (re.compile(r"(?:/[\w.@%+~-]+){2,}/?"), "<PATH>"),
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<ID>"),
    # Hex and decimal numbers mask alike: a field prints 4096 in one line and 1000a in the next.
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{4,}\b"), "0"),
    (re.compile(r"(?:(?<=[\s_=:(\[])-)?\d+(?:\.\d+)?"), "0"),
]


def mask(text: str) -> str:
    """``text`` with times, IPv4 addresses, MAC addresses, paths, hex ids and numbers replaced
    by placeholders: two log chunks that differ only in those fields mask to the same text."""
    for pattern, placeholder in _FIELDS:
        text = pattern.sub(placeholder, text)
    return text


class TemplateVectors:
    """Vectors for the chunks of one ingest stream, embedding each masked template once.

    ``embed`` is the embedder's batch call; at most ``capacity`` templates are remembered (the
    least recently used go first), so memory stays bounded on a stream of endless variety.
    A remembered vector is kept in float16 (768 bytes at 384 dimensions: 48 MB for 65,536
    templates) and renormalised when it is handed out: the vector computed, within float16's
    rounding. Chunks of the call that computed it get that vector itself.

    Why 65,536: on 100 MB of replayed Loghub logs (``benchmarks/ack_ingest.py --replay-mb
    100``'s files, 244,412 chunks, 144,622 templates), the embedder ran on 69.3% of the chunks
    with room for 16,384 templates, 60.6% with 65,536 and 59.2% with no bound.
    """

    def __init__(self, embed: Callable[[list[str]], np.ndarray], *, capacity: int = 65_536) -> None:
        self._embed = embed
        self._capacity = capacity
        # template -> its row of _table, least recently used first; rows 0..len-1 are in use.
        self._slots: OrderedDict[bytes, int] = OrderedDict()
        self._table = np.empty((0, 0), dtype=np.float16)
        self.chunks = 0  # chunks given vectors
        self.embedded = 0  # of which the embedder ran on

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """One unit vector per text, in order; texts whose template was seen share its vector."""
        keys = [hashlib.blake2b(mask(t).encode("utf-8", "surrogatepass")).digest() for t in texts]
        todo: dict[bytes, int] = {}  # template -> the first text of this call that has it
        for i, key in enumerate(keys):
            if key not in self._slots and key not in todo:
                todo[key] = i
        fresh = self._embed([texts[i] for i in todo.values()]) if todo else None
        found = dict(zip(todo, fresh, strict=True)) if fresh is not None else {}
        rows = []
        for key in keys:
            vector = found.get(key)
            if vector is None:
                self._slots.move_to_end(key)
                vector = self._table[self._slots[key]].astype(np.float32)
                vector /= max(float(np.linalg.norm(vector)), 1e-12)
            rows.append(vector)
        for key, vector in found.items():
            self._remember(key, vector)
        self.chunks += len(texts)
        self.embedded += len(todo)
        return np.stack(rows) if rows else np.empty((0, 0), dtype=np.float32)

    def _remember(self, key: bytes, vector: np.ndarray) -> None:
        if len(self._slots) < self._capacity:
            slot = len(self._slots)
            if slot >= len(self._table):  # grown by doubling: a short stream stays small
                grown = np.empty(
                    (min(self._capacity, max(64, 2 * len(self._table))), len(vector)), np.float16
                )
                if slot:
                    grown[:slot] = self._table[:slot]
                self._table = grown
        else:
            _, slot = self._slots.popitem(last=False)  # the least recently used row
        self._table[slot] = vector
        self._slots[key] = slot
