"""Replayed logs: Loghub's templates with parameter values resampled from the same logs.

SYNTHETIC, and labelled so wherever it is used. Real logs are scarce (the Loghub samples in
``../shared`` hold 2,000 lines per system, 4.4 MB in all), and the notepad benchmark needs
hundreds of MB of them to reach a million chunks. This module writes more lines of the same
shape: a line is drawn at random from a system's real sample, split into its fixed text and its
variable fields (every token holding a digit: times, ids, addresses, counters, node names), and
each field is replaced by a value drawn from the values that same field took in the real lines
of that same template. So every line's template is one the real system printed, as often as it
printed it, and every value is one it printed in that place; what is new is only the
combination (a block id next to another line's address and time). Times are not in order.

What this leaves out, so what figures on it cannot say: new identifiers (every id of a replayed
file also occurs in the real sample, so an identifier query finds many chunks holding it), new
templates, and bursts. Hand-written rather than taken from a log generator library: none
replays a given sample's own templates and values, which is what keeps the text real.
"""

from __future__ import annotations

import os
import random
import re
from collections import defaultdict
from pathlib import Path

__all__ = ["ReplaySystem", "load_systems", "write_replay"]

# A variable field: a run of token characters holding at least one digit.
_FIELD = re.compile(r"[\w.:/@+-]*\d[\w.:/@+-]*")


class ReplaySystem:
    """One Loghub system's real lines, split into templates and their fields' value pools."""

    def __init__(self, name: str, lines: list[str]) -> None:
        if not lines:
            raise ValueError(f"no lines to replay for {name}")
        self.name = name
        # A line's template is its fixed text around the fields (len(fields) + 1 pieces); the
        # template and a field's position name the pool of that field's real values.
        self._lines: list[tuple[str, ...]] = []
        self._pools: dict[tuple[tuple[str, ...], int], list[str]] = defaultdict(list)
        for text in lines:
            template = tuple(_FIELD.split(text))
            self._lines.append(template)
            for slot, value in enumerate(_FIELD.findall(text)):
                self._pools[(template, slot)].append(value)

    @property
    def templates(self) -> int:
        return len(set(self._lines))

    def line(self, rng: random.Random) -> str:
        """A replayed line: a real line's template, each field drawn from that template's
        values for the field."""
        template = rng.choice(self._lines)
        out = [template[0]]
        for slot, fixed in enumerate(template[1:]):
            out.append(rng.choice(self._pools[(template, slot)]))
            out.append(fixed)
        return "".join(out)


def load_systems(loghub: Path) -> list[ReplaySystem]:
    """A :class:`ReplaySystem` per ``<system>/*.log`` under ``loghub``, sorted by name."""
    systems = []
    for path in sorted(loghub.glob("*/*.log")):
        lines = path.read_text("utf-8", errors="replace").splitlines()
        systems.append(ReplaySystem(path.parent.name, [x for x in lines if x.strip()]))
    return systems


def write_replay(system: ReplaySystem, path: Path, *, size: int, seed: str) -> int:
    """Write replayed lines of ``system`` to ``path`` (atomically) up to ``size`` bytes, the
    same bytes for the same seed; returns the bytes written."""
    rng = random.Random(seed)
    pieces, written = [], 0
    while True:
        line = (system.line(rng) + "\n").encode("utf-8")
        if written + len(line) > size:
            break
        pieces.append(line)
        written += len(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(pieces))
    os.replace(tmp, path)
    return written
