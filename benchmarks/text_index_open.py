"""How long a large memory's keyword search waits for its text index after an open.

A memory past ``MemoryConfig.text_index_threshold`` chunks ranks keywords on tantivy
(``stores/text_index.py``); until that index is ready, SQL's full-text index answers, 134 to 447
ms a question at a million chunks. The index is saved in the memory's directory after a build
and at close, and read back by the next open. This opens the memory twice, one process each
(the weight memory and the embedding stage off, so nothing else uses the cores): the first
open builds the index, or reads a save left by an earlier run (``--fresh`` drops it first:
the build's save then removes its folder); the second reads what the first saved. Each open
times three searches right after it (two questions and an identifier, in the scope
``notepad.py`` fills), each with the state keyword search was in after it (``sql``,
``building``, ``tantivy``), then reports its further wait for ``wait_ready()``, how the index
came (built or read back), and the close's seconds.

One JSON line goes to stdout; ``--out`` also receives it.

    python benchmarks/text_index_open.py --memory benchmarks/out/notepad-1m --fresh   # ~2 min
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from json_line import emit

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.stores.text_index import SAVED_NAME

SCOPE = Scope(tenant="benchmark", user="notepad")  # notepad.py's
QUERIES = (
    "which datanode received the block after the timeout",
    "why did the connection close",
    "blk_-1608999687919862906",
)


class _Outcome(logging.Handler):
    """Whether the text index was built or read back, from its log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.came: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("text index built"):
            self.came = "built"
        elif message.startswith("text index read from"):
            self.came = "read back"


def open_once(memory: Path) -> dict[str, Any]:
    outcome = _Outcome()
    logger = logging.getLogger("memsdk.stores.text_index")
    logger.addHandler(outcome)
    logger.setLevel(logging.INFO)
    config = MemoryConfig(weight_memory=False, background_embedding=False)
    started = time.perf_counter()
    with HybridMemory.open(memory, config=config) as mem:
        opened = time.perf_counter()
        mem.embedder.embed_query("warm the query embedder")
        searches = []
        for query in QUERIES:
            begun = time.perf_counter()
            mem.search(query, scope=SCOPE, k=5)
            ms = round((time.perf_counter() - begun) * 1000, 1)
            searches.append({"query": query, "ms": ms, "state": mem.notepad.text_index.state})
        searched = time.perf_counter()
        ready = mem.notepad.text_index.wait_ready()
        waited = time.perf_counter()
        chunks = mem.notepad.sql.chunk_count()
        closing = time.perf_counter()
    return {
        "chunks": chunks,
        "open_s": round(opened - started, 2),
        "ready": ready,
        "first_searches": searches,
        "text_index_wait_s_after_them": round(waited - searched, 2),
        "text_index": outcome.came,
        "close_s": round(time.perf_counter() - closing, 2),
    }


def _saved_mb(memory: Path) -> float | None:
    if not (memory / SAVED_NAME).is_file():
        return None
    folder = memory / json.loads((memory / SAVED_NAME).read_text())["folder"]
    return round(sum(f.stat().st_size for f in folder.iterdir()) / 1e6, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=Path, required=True, help="a memory past the threshold")
    parser.add_argument("--fresh", action="store_true", help="drop an earlier save first")
    parser.add_argument("--out", type=Path, help="also write the JSON line here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child's open
    args = parser.parse_args(argv)
    if not (args.memory / "manifest.json").is_file():
        parser.error(f"{args.memory} is not a memory directory (it has no manifest.json)")
    if args.one:
        print(json.dumps(open_once(args.memory)), flush=True)
        return 0
    if args.fresh:
        (args.memory / SAVED_NAME).unlink(missing_ok=True)
    opens = []
    for _ in range(2):
        child = [sys.executable, __file__, "--memory", str(args.memory), "--one"]
        done = subprocess.run(child, check=True, capture_output=True, text=True)
        opens.append(json.loads(done.stdout.strip().splitlines()[-1]))
    emit(
        {
            "benchmark": "text index after an open",
            "memory": str(args.memory),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "temp_dir": os.environ.get("TMPDIR", "/tmp"),
            "saved_mb": _saved_mb(args.memory),
            "first_open": opens[0],
            "second_open": opens[1],
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
