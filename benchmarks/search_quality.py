"""Natural-language search quality: do hard questions find the passage that answers them?

The needle checks of ``memory_bench.py`` and ``notepad.py`` query with the stored line's own
prefix, or count any hit that holds an identifier; both are easy by construction. Here the
queries are worded unlike the text they are about, on held-out data the model never trained on:

- **tickets: title to body.** Each of the first ``--tickets`` issue-tracker tickets is stored as
  its body only (one memory per ticket, metadata ``ticket``); the query is its title, which is
  never stored. Relevant: the chunks of that ticket's body.
- **BGL: a paraphrased question about a stored event.** The whole BGL log (Loghub's 2,000-line
  sample) is ingested; for each of the events in :data:`PARAPHRASES` a question is asked in
  plain words and names its minute, never the log's wording: "Which node reported that the
  I/O daemon could not find the program image it had to load, at 16:48 on June 3?"
  Graded relevance: 2 for a chunk holding a line of that event in that minute, 1 for a chunk
  holding a line of that event at another time (right kind, wrong moment).

The paraphrases were written once by hand from the event templates, before any figure was
seen, and nothing is tuned on these queries. Each query runs through ``HybridMemory.search``
and, as baselines, through the notepad's keyword ranking alone (BM25 over FTS5) and its vector
ranking alone (FAISS over the MiniLM embeddings). Reported per set and system: nDCG@10 (graded
gains ``2**g - 1``), success@1 and @10 (a grade-2 chunk in the top 1 / 10), MRR of the first
grade-2 chunk. One JSON line goes to stdout; ``--out`` receives ``search_quality.json``.

Usage::

    python benchmarks/search_quality.py                 # ~7 min on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
K = 10
MONTHS = "January February March April May June July August September October November December"

# BGL event id -> what happened, in words the log does not use.
PARAPHRASES = {
    "E77": "an instruction cache fault was found and fixed",
    "E52": "an interrupt fired while data was being stored",
    "E34": "crash dumps were written for a job",
    "E28": "the I/O daemon could not find the program image it had to load",
    "E26": "loading a program image was refused for lack of rights",
    "E37": "the home folder was missing when a user logged in",
    "E2": "main memory bit flips were repaired on one rank",
    "E25": "a program image was not a valid executable",
    "E41": "the I/O daemon was hit by a signal",
    "E118": "a running count of repaired main memory faults was reported",
    "E93": "a node card's product data did not agree with what was found",
    "E29": "the link to a compute node was cut while a load message was read",
    "E81": "the Lustre file system could not be attached",
    "E101": "a job ran an instruction the processor does not know",
    "E90": "a node card was only partly working",
    "E17": "the assembly details of a node card were not available",
    "E111": "the runtime system stopped the kernel",
    "E55": "the address translation buffer for data raised an interrupt",
}


def ndcg(gains: list[int], ideal: list[int]) -> float:
    """Normalised discounted cumulative gain of ranked grades against the ideal ordering."""

    def dcg(grades: list[int]) -> float:
        return sum((2**g - 1) / math.log2(rank + 2) for rank, g in enumerate(grades[:K]))

    best = dcg(sorted(ideal, reverse=True))
    return dcg(gains) / best if best else 0.0


def score_set(ranked: dict[str, list[list[int]]], queries: list[dict]) -> dict[str, dict]:
    """Per system: the mean of each metric over ``queries`` (``ranked[system][i]`` holds query
    i's top chunk ids)."""
    out = {}
    for system, results in ranked.items():
        rows = []
        for query, ids in zip(queries, results, strict=True):
            grades = query["grades"]
            gains = [grades.get(cid, 0) for cid in ids[:K]]
            first = next((r for r, g in enumerate(gains, 1) if g == 2), None)
            rows.append(
                {
                    "ndcg@10": ndcg(gains, list(grades.values())),
                    "success@1": float(bool(gains) and gains[0] == 2),
                    "success@10": float(first is not None),
                    "mrr@10": 1.0 / first if first else 0.0,
                }
            )
        out[system] = {m: sum(r[m] for r in rows) / len(rows) for m in rows[0]}
    return out


def rank_all(mem: HybridMemory, scope: Scope, queries: list[dict]) -> dict[str, list[list[int]]]:
    """Each query's top ``K`` chunk ids under memsdk's hybrid search and each baseline."""
    scope_id = mem.notepad.sql.find_scope(scope.key())
    ranked: dict[str, list[list[int]]] = {"memsdk search": [], "keyword only": [], "vector": []}
    for query in queries:
        text = query["query"]
        ranked["memsdk search"].append([h.id for h in mem.search(text, scope=scope, k=K)])
        keyword = mem.notepad.sql.keyword_search(scope_id, text, limit=K)
        ranked["keyword only"].append([cid for cid, _ in keyword])
        vector = mem.notepad.vector_search(scope_id, mem.embedder.embed_query(text), k=K)
        ranked["vector"].append([cid for cid, _ in vector])
    return ranked


def ticket_queries(mem: HybridMemory, shared: Path, count: int) -> tuple[Scope, list[dict]]:
    scope = Scope(tenant="bench", user="tickets")
    queries = []
    with open(shared / "data" / "tickets" / "issues_train.csv", newline="") as f:
        for number, row in enumerate(csv.DictReader(f)):
            if len(queries) == count:
                break
            body, title = row["body"].strip(), row["title"].strip()
            if len(body) < 40 or not title:
                continue
            body = body.encode()[: mem.config.max_text_bytes].decode("utf-8", "ignore")
            ids = mem.add(body, scope=scope, metadata={"ticket": number}).ids
            if ids:  # a body stored before (a duplicate) has no chunks of its own
                queries.append({"query": title, "grades": dict.fromkeys(ids, 2)})
    return scope, queries


def bgl_queries(mem: HybridMemory, shared: Path, per_event: int) -> tuple[Scope, list[dict]]:
    scope = Scope(tenant="bench", user="bgl")
    folder = shared / "data" / "loghub" / "BGL"
    mem.ingest(folder / "BGL_2k.log", scope=scope)
    scope_id = mem.notepad.sql.find_scope(scope.key())
    chunk_ids = sorted(mem.notepad.sql.chunk_ids(scope_id).tolist())
    records = mem.notepad.sql.get_chunks(scope_id, chunk_ids)
    with open(folder / "BGL_2k.log_structured.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["EventId"] in PARAPHRASES]

    def chunks_holding(content: str, stamp: str) -> list[int]:
        return [
            cid for cid in chunk_ids if stamp in records[cid].text and content in records[cid].text
        ]

    queries = []
    for event, words in PARAPHRASES.items():
        lines = [r for r in rows if r["EventId"] == event]
        minutes: dict[str, list[dict]] = {}
        for r in lines:
            minutes.setdefault(r["Time"][:16], []).append(r)  # 2005-06-03-15.42
        anywhere = {cid for r in lines for cid in chunks_holding(r["Content"], r["Time"])}
        for minute, in_minute in list(minutes.items())[:per_event]:
            _, month, day, hour, mins = minute.replace(".", "-").split("-")
            when = f"{hour}:{mins} on {MONTHS.split()[int(month) - 1]} {int(day)}"
            grades = dict.fromkeys(anywhere, 1)
            for r in in_minute:
                grades.update(dict.fromkeys(chunks_holding(r["Content"], r["Time"]), 2))
            if 2 in grades.values():
                queries.append(
                    {"query": f"Which node reported that {words}, at {when}?", "grades": grades}
                )
    return scope, queries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--tickets", type=int, default=150, help="tickets stored and asked for")
    parser.add_argument("--per-event", type=int, default=3, help="BGL questions per event")
    args = parser.parse_args(argv)
    if not (args.shared / "data").is_dir():
        raise SystemExit(f"{args.shared}/data is missing: this benchmark reads ../shared")
    started = time.perf_counter()
    config = MemoryConfig(weight_memory=False)  # search only: the weights play no part here
    result: dict = {
        "benchmark": "search quality",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "k": K,
    }
    with tempfile.TemporaryDirectory() as tmp, HybridMemory.open(tmp, config=config) as mem:
        for name, (scope, queries) in {
            "tickets: title to body": ticket_queries(mem, args.shared, args.tickets),
            "BGL: paraphrased question": bgl_queries(mem, args.shared, args.per_event),
        }.items():
            result[name] = {
                "queries": len(queries),
                "systems": score_set(rank_all(mem, scope, queries), queries),
                "examples": [q["query"] for q in queries[:3]],
            }
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "search_quality.json", json.dumps(result, indent=1).encode())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
