"""A benchmark's result as one JSON line: printed, and written to its output file (atomically,
through memsdk's own writer) when it has one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memsdk.files import atomic_write_bytes

__all__ = ["emit"]


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print ``result`` as one JSON line; also write it to ``out`` unless that is None."""
    line = json.dumps(result)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, (line + "\n").encode())
