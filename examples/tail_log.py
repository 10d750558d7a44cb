"""Stream a growing log file into memory, tail-style, and ask it questions as it grows.

A writer thread appends the lines of a real log (``/var/log/dpkg.log`` when readable, else the
Python standard library's ``argparse.py``) to a file in bursts, as a service would. The main
loop follows the file like ``tail -f``: every poll it ingests the complete new lines (a
half-written last line waits for the next poll), then sends a routed query (``mem.query``)
with the start of a line that named an identifier, printing the branch the router chose, its
reason and the completion. Before it stores each poll's lines it asks the weight memory how
surprising the newest one is (score, then store: the weights may learn a line as soon as it is
stored): familiar lines score low, a new kind of line scores high.

    python examples/tail_log.py [--memory DIR] [--lines 300]
"""

from __future__ import annotations

import argparse
import argparse as stdlib_argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from memsdk import HybridMemory, Scope

SOURCES = [Path("/var/log/dpkg.log"), Path(stdlib_argparse.__file__)]
IDENTIFIER = re.compile(r"\b[a-z0-9][\w.+-]*:(?:amd64|arm64|all|i386)\b|\b[A-Z][A-Za-z]+Error\b")


def source_lines(count: int) -> list[str]:
    for path in SOURCES:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        except OSError:
            continue
        if len(lines) >= 40:
            return lines[-count:]
    raise SystemExit("no readable log or source file to replay")


def writer(path: Path, lines: list[str], bursts: int, done: threading.Event) -> None:
    """Append ``lines`` to ``path`` in ``bursts``, the last line of each burst written in two
    halves, as a logger flushing mid-line would."""
    size = -(-len(lines) // bursts)
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(lines), size):
            burst = "".join(lines[start : start + size])
            half = len(burst) - 10
            f.write(burst[:half])
            f.flush()
            time.sleep(0.05)
            f.write(burst[half:])
            f.flush()
            time.sleep(0.2)
    done.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", help="memory directory (default: a temporary one)")
    parser.add_argument("--lines", type=int, default=300, help="lines to replay")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="memsdk-tail-"))
    log = workdir / "service.log"
    log.touch()
    lines = source_lines(args.lines)
    done = threading.Event()
    threading.Thread(target=writer, args=(log, lines, 6, done), daemon=True).start()

    scope = Scope(tenant="ops", agent="tail")
    offset, partial, polls = 0, b"", 0
    with HybridMemory.open(args.memory or workdir / "memory") as mem, open(log, "rb") as f:
        while True:
            finished = done.is_set()  # read the flag first: then nothing written is missed
            f.seek(offset)
            data = partial + f.read()
            offset = f.tell()
            cut = data.rfind(b"\n") + 1  # only complete lines; the rest waits
            complete, partial = data[:cut], data[cut:]
            if complete:
                polls += 1
                newest = complete.decode("utf-8", "replace").splitlines()[-1]
                # Score, then store: once ingested, the worker may train on the line at once.
                scored = mem.surprise(complete, scope=scope).lines[-1]
                report = mem.ingest([complete], scope=scope, name=f"{log.name} poll {polls}")
                print(f"poll {polls}: {report.chunks} new chunks, {len(complete)} bytes")
                text = complete.decode("utf-8", "replace")
                ids = IDENTIFIER.findall(text)
                if ids:  # a routed query: the line that named the id, up to the id
                    line = next(ln for ln in reversed(text.splitlines()) if ids[-1] in ln)
                    prompt = line[: line.index(ids[-1]) + len(ids[-1])]
                    ans = mem.query(prompt, scope=scope, k=1, max_bytes=60)
                    print(f"  query {prompt!r} -> {ans.route.branch}: {ans.completion!r}")
                    print(f"    why: {ans.route.reason.split(': ', 1)[1][:150]}")
                print(
                    f"  newest line at {scored.bits_per_byte:.2f} bits/byte, novelty "
                    f"{scored.novelty:.2f}: {newest[:70]!r}"
                )
            if finished and not partial and offset == log.stat().st_size:
                break
            time.sleep(0.1)
        mem.flush()
        weights = mem.stats().scopes[0].weights
        print(
            f"followed {offset} bytes in {polls} polls; weight memory absorbed "
            f"{weights.bytes_absorbed} bytes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
