"""Latency of the notepad's SQL keyword side (full-text ranking) at a large size, without vectors.

Embedding 100k chunks takes over an hour on two cores, but the keyword side does not need
vectors: this benchmark fills a SQLite notepad through the SQL store directly, the way ingest
writes with the background embedding stage (the same chunking, one document per file, the
file's metadata on each chunk, vectors left pending), from the corpus of
``benchmarks/notepad.py`` in its fixed order, to ``--size`` chunks. It then times
``SQLStore.keyword_search`` as ``memsdk.search.hybrid_search`` calls it: the question words
dropped (``keyword_query``), ``search_candidates`` (50) hits, the filter compiled by
``compile_filters``, and each identifier span of the query looked up on its own. The query mix
and its seed are notepad.py's.

For the filtered queries it also times ``SQLStore.chunk_ids`` under the filter: the set of ids
the vector side searches among (``filtered_allowed_ids``).

Beside the latency stands the keyword side's needle hit rate: the fraction of queries with an
identifier whose rank-1 keyword hit holds it. ``--full-search`` also reports the rank-1 needle
hit rate of ``HybridMemory.search`` on the same store, vectors pending (see ``full_search``).

The store is kept in ``--dir`` between runs (filled once), so the same store is measured by
several versions of the code. One JSON line goes to stdout.

Usage::

    python benchmarks/keyword_search.py --size 100000 --queries 300
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from notepad import (  # the sibling benchmark (benchmarks/ is on sys.path)
    DEFAULT_SHARED,
    REPO,
    SCOPE,
    Query,
    _holds,
    build_queries,
    latency,
)
from notepad_corpus import Source, build_plan
from sqlalchemy import select

from memsdk import HybridMemory, MemoryConfig
from memsdk.chunking import chunk_stream, decode_chunk
from memsdk.filters import compile_filters
from memsdk.search import MAX_IDENTIFIERS, identifier_spans, keyword_query
from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_records import NewChunk
from memsdk.stores.sql_schema import DocumentRow

logger = logging.getLogger("benchmarks.keyword_search")

DEFAULT_DIR = REPO / "benchmarks" / "out" / "keyword_search"
PENDING = np.empty(0, dtype=np.float32)  # an empty embedding: vector pending, as ingest stores it
BATCH = 256
CONFIG = MemoryConfig(weight_memory=False)


def fill(sql: SQLStore, scope_id: int, plan: list[Source], size: int) -> list[Source]:
    """Write the plan's files as chunks until the scope holds ``size``; the files walked.

    The files an earlier run wrote are not read again."""
    config = MemoryConfig()
    stored = stored_sources(sql, scope_id)
    last = max((i for i, s in enumerate(plan) if str(s.path) in stored), default=-1)
    walked = plan[: last + 1]  # what an earlier run wrote (files that added nothing included)
    held = sql.scope_counts().get(scope_id, (0, 0, 0))[1]
    started = time.perf_counter()
    for source in plan[last + 1 :]:
        if held >= size:
            break
        walked.append(source)
        doc_id = sql.start_document(scope_id, str(source.path), source.metadata())
        batch: list[NewChunk] = []
        with source.path.open("rb") as f:
            blocks = iter(lambda f=f: f.read(1 << 16), b"")
            for c in chunk_stream(
                blocks, chunk_bytes=config.chunk_bytes, max_line_bytes=config.max_line_bytes
            ):
                text, raw = decode_chunk(c.data)
                meta = source.metadata()
                batch.append(
                    NewChunk(
                        c.seq, c.start_byte, c.end_byte, text, raw, c.content_hash, meta, PENDING
                    )
                )
                if len(batch) >= BATCH:
                    held += sum(i is not None for i in sql.insert_chunks(scope_id, doc_id, batch))
                    batch.clear()
        held += sum(i is not None for i in sql.insert_chunks(scope_id, doc_id, batch))
        sql.finish_document(doc_id, size_bytes=source.size, duplicates=0)
    logger.info(
        "the scope holds %d chunks (%.1f s of writing)", held, time.perf_counter() - started
    )
    return walked


def stored_sources(sql: SQLStore, scope_id: int) -> set[str]:
    with sql.reading() as s:
        rows = s.execute(select(DocumentRow.source).where(DocumentRow.scope_id == scope_id))
        return {source for (source,) in rows}


def keyword_side(
    sql: SQLStore, scope_id: int, query: Query, *, limit: int
) -> list[tuple[int, float]]:
    """The SQL keyword work of one ``hybrid_search``: the ranking, then each identifier span."""
    where = compile_filters(query.filters, dialect=sql.dialect)
    ranked = sql.keyword_search(scope_id, keyword_query(query.text), limit=limit, where=where)
    for span in identifier_spans(query.text)[:MAX_IDENTIFIERS]:
        if span != query.text.strip():
            sql.keyword_search(scope_id, span, limit=limit, where=where)
    return ranked


def measure(sql: SQLStore, scope_id: int, queries: list[Query], *, warmup: int) -> dict[str, Any]:
    limit = MemoryConfig().search_candidates
    for query in queries[:warmup]:
        keyword_side(sql, scope_id, query, limit=limit)
    times: dict[str, list[float]] = {}
    allowed_ms: list[float] = []
    hits: list[bool] = []
    matched: dict[str, list[int]] = {}
    for query in queries:
        started = time.perf_counter()
        ranked = keyword_side(sql, scope_id, query, limit=limit)
        ms = (time.perf_counter() - started) * 1e3
        if query.filters is not None:
            # The vector side's SQL: the ids a filter allows (an unfiltered search reads a
            # cached id list), timed apart since FAISS has no vector here to search.
            started = time.perf_counter()
            sql.chunk_ids(scope_id, compile_filters(query.filters, dialect=sql.dialect))
            allowed_ms.append((time.perf_counter() - started) * 1e3)
        times.setdefault(query.kind, []).append(ms)
        times.setdefault("all", []).append(ms)
        matched.setdefault(query.kind, []).append(len(ranked))
        if query.needle is not None:
            top = sql.get_chunks(scope_id, [ranked[0][0]]) if ranked else {}
            hits.append(bool(top) and _holds(next(iter(top.values())).text, query.needle.text))
    return {
        "latency": {kind: latency(ms) for kind, ms in sorted(times.items())},
        "filtered_allowed_ids": latency(allowed_ms) if allowed_ms else None,
        "needle_hit_rate": round(sum(hits) / len(hits), 4) if hits else None,
        "needle_queries": len(hits),
        "mean_hits": {k: round(float(np.mean(v)), 1) for k, v in sorted(matched.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="chunks in the scope")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the store is kept")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument(
        "--full-search",
        action="store_true",
        help="also the needle hit rate of HybridMemory.search, vectors pending",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    HybridMemory.open(args.dir, config=CONFIG).close()  # a memory's directory, identity and all
    sql = SQLStore(f"sqlite:///{args.dir / 'memory.db'}")
    sql.create_schema()
    scope_id = sql.ensure_scope(SCOPE.key())
    plan, _ = build_plan(args.shared)
    walked = fill(sql, scope_id, plan, args.size)
    chunks = sql.scope_counts()[scope_id][1]
    queries = build_queries(walked, args.queries, random.Random(args.seed))
    result = {
        "benchmark": "keyword_search",
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "chunks": chunks,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **measure(sql, scope_id, queries, warmup=args.warmup),
    }
    sql.close()
    if args.full_search:
        result["full_search"] = full_search(args.dir, queries)
    print(json.dumps(result), flush=True)


def full_search(directory: Path, queries: list[Query]) -> dict[str, Any]:
    """The rank-1 needle hit rate of ``HybridMemory.search`` (k=5) for the queries with a needle.

    The vectors are pending: the embedding stage starts on open and has embedded only a few of
    the chunks by the end, so this checks the ranking the keyword side, the identifier lookup
    and the exact-identifier boost give; its latencies are not reported (the stage embeds on
    the same cores meanwhile)."""
    hits = []
    with HybridMemory.open(directory, config=CONFIG) as mem:
        for query in queries:
            if query.needle is None:
                continue
            found = mem.search(query.text, scope=SCOPE, k=5, filters=query.filters)
            hits.append(bool(found) and _holds(found[0].text, query.needle.text))
    return {"needle_hit_rate": round(sum(hits) / len(hits), 4), "needle_queries": len(hits)}


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
