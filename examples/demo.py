"""The memsdk demo: ingest real text that every machine has, then search it and recall it.

Streams the Python standard library's ``logging`` package (documentation and code) and the
earlier part of a system log (when one is readable; else of ``argparse.py``) into a memory
directory, then answers three kinds of query from the notepad: a question in plain words, an
exact identifier, and a filtered search. Then the weight memory at work: how surprising the
later, never-ingested part of the stream is (bits per byte) before and after the earlier part
was absorbed, and a completion. Run it again and the ingest is nearly free: duplicate chunks
are skipped (and the weights already hold them).

    python examples/demo.py [--memory DIR]
"""

from __future__ import annotations

import argparse
import argparse as stdlib_argparse
import logging as stdlib_logging
import re
import sys
import time
from collections import deque
from pathlib import Path

from memsdk import HybridMemory, Scope, SearchHit

SYSTEM_LOGS = [
    "/var/log/dpkg.log",
    "/var/log/syslog",
    "/var/log/messages",
    "/var/log/alternatives.log",
]
TAIL_LINES = 400
QUESTIONS = [
    "log to a file that rolls over when it gets too big",
    "send log records to a remote syslog server",
]


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text log (what ``tail -n`` shows)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return list(deque(f, maxlen=lines))


def best_line(text: str, query: str) -> str:
    """The line of a hit that shares the most words with the query."""
    words = set(re.findall(r"[\w:.-]{3,}", query.lower()))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [""]
    return max(lines, key=lambda ln: len(words & set(re.findall(r"[\w:.-]{3,}", ln.lower()))))


def show(query: str, hits: list[SearchHit], *, label: str = "") -> None:
    print(f"\n== {label}{query}")
    for rank, hit in enumerate(hits, 1):
        why = []
        if hit.exact_match:
            why.append("exact identifier")
        if hit.keyword_rank:
            why.append(f"keyword #{hit.keyword_rank}")
        if hit.vector_rank:
            why.append(f"vector #{hit.vector_rank} (cos {hit.similarity:.2f})")
        print(f"  {rank}. {Path(hit.source or '?').name}:{hit.start_byte}  [{', '.join(why)}]")
        print(f"     {best_line(hit.text, query)[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--memory", default="demo-memory", help="memory directory (default: demo-memory)"
    )
    args = parser.parse_args()

    scope = Scope(tenant="demo", user="ops")
    package = Path(stdlib_logging.__file__).parent
    with HybridMemory.open(args.memory) as mem:
        print(f"memory: {mem.path}")
        started = time.perf_counter()
        report = mem.ingest(
            package, scope=scope, metadata={"kind": "code"}, progress=sys.stderr.isatty()
        )
        print(
            f"ingested {package}: {report.chunks} new chunks, "
            f"{report.duplicates_skipped} duplicates skipped"
        )
        log = next(
            (Path(p) for p in SYSTEM_LOGS if Path(p).is_file() and Path(p).stat().st_size), None
        )
        log_lines: list[str] = []
        if log is not None:
            try:
                log_lines = tail(log, TAIL_LINES)
            except OSError as e:
                print(f"cannot read {log}: {e}")
        if len(log_lines) < 40:  # no readable log: a long text file every Python has
            log = Path(stdlib_argparse.__file__)
            log_lines = log.read_text(encoding="utf-8").splitlines(keepends=True)[:TAIL_LINES]
        cut = len(log_lines) * 3 // 4
        earlier, later = log_lines[:cut], "".join(log_lines[cut:])
        mem.flush()  # the weight memory has absorbed the code; not yet the log
        surprise_before = mem.bits_per_byte(later, scope=scope)
        name = f"{log} (lines 1-{cut} of the last {len(log_lines)})"
        log_report = mem.ingest(earlier, scope=scope, name=name, metadata={"kind": "log"})
        print(f"ingested {cut} lines of {log}: {log_report.chunks} new chunks")
        mem.flush()  # wait until the weight memory has absorbed everything stored
        print(f"ingest took {time.perf_counter() - started:.1f} s (weight memory included)")

        for question in QUESTIONS:
            show(question, mem.search(question, scope=scope, k=3), label="question: ")
        ident = "LOG_LOCAL7"
        if log_lines:  # an identifier from the log itself, e.g. a package name with its arch
            found = re.findall(r"\b[a-z0-9][\w.+-]*:(?:amd64|arm64|all|i386)\b", "".join(earlier))
            ident = found[len(found) // 2] if found else ident
        show(ident, mem.search(ident, scope=scope, k=3), label="exact identifier: ")
        query = "configure handlers from a dictionary"
        hits = mem.search(query, scope=scope, k=3, filters={"kind": {"eq": "code"}})
        show(query, hits, label='filtered to {"kind": "code"}: ')

        print(f"\n== weight memory: the last {len(log_lines) - cut} lines of {log}, never ingested")
        surprise_after = mem.bits_per_byte(later, scope=scope)
        print(f"  bits per byte before ingesting the earlier lines: {surprise_before:.3f}")
        print(f"  bits per byte after absorbing them:               {surprise_after:.3f}")
        if not log_report.chunks:
            print(f"  (absorbed by an earlier run already: delete {mem.path} to see the change)")
        prompt = later.splitlines()[0][:24]
        print(f"  completion of {prompt!r}: {mem.complete(prompt, scope=scope, max_bytes=80)!r}")

        # Routed queries: the router picks the notepad, the weights or both, and says why.
        needle_line = next((ln for ln in earlier if ident in ln), earlier[len(earlier) // 2])
        needle = (
            needle_line[: needle_line.index(ident) + len(ident)]
            if ident in needle_line
            else (needle_line[: len(needle_line) // 2])
        )
        pattern_line = later.splitlines()[1] if len(later.splitlines()) > 1 else later
        pattern = pattern_line[: max(pattern_line.rfind(" ", 0, len(pattern_line) * 2 // 5), 1)]
        for kind, query, expected in (
            ("needle (an identifier stored once)", needle, needle_line.rstrip("\n")),
            ("pattern (a later line, never ingested)", pattern, pattern_line),
        ):
            ans = mem.query(query, scope=scope, k=3, max_bytes=80)
            print(f"\n== routed query, {kind}: {query!r}")
            print(f"  route: {ans.route.branch}, because {ans.route.reason.split(': ', 1)[1]}")
            print(f"  completion: {ans.completion!r}")
            print(f"  actual:     {expected[len(query) :]!r}")
            if ans.passages:
                print(f"  top passage: {best_line(ans.passages[0].text, query)[:110]}")

        mem.flush()  # write the index file now, so its size below is the real one
        stats = mem.stats()
        weights = stats.scopes[0].weights
        print(
            f"\n{stats.index_vectors} chunks in memory, "
            f"index {stats.index_bytes / 1e6:.1f} MB on disk; weight memory "
            f"({stats.weights_model}): {weights.bytes_absorbed / 1e3:.0f} kB absorbed "
            f"in {weights.steps} steps, saved as {weights.deltas} 4-bit delta(s) of "
            f"{weights.delta_bytes / 1e3:.0f} kB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
