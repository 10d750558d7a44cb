"""Benchmark of the exact notepad (SQL + FAISS): ingest throughput and search latency.

The memory grows from real text, in a fixed order (benchmarks/notepad_corpus.py), to each size
of ``--sizes``:

- a log stream: the Loghub samples in ``../shared/data/loghub`` (12 systems, 2,000 lines each),
  then, with ``--replay-mb``, SYNTHETIC replayed logs (``log_replay.py``: those samples'
  templates with field values resampled from the same samples; labelled in the JSON and in
  each chunk's metadata), which is what lets the memory reach a million chunks;
- a prose/code stream: the Python standard library (``.py`` files, then its text test data),
  then the plain-text files of ``/usr/share/doc``.

The streams are interleaved file by file, their byte counts kept level while logs last, so every
size holds both. At each size a seeded mix of queries is timed around ``HybridMemory.search``:
exact identifiers taken from the ingested logs (block ids, node names, IPs, ...), natural-language
questions, and searches with a metadata filter. Beside the latency stands a correctness gate, the
needle hit rate: the fraction of identifier queries whose rank-1 hit holds the identifier
(identifiers are taken from the real logs only).

``--vectors wait`` (the default) times the searches once every vector is stored; embedding runs
at about 20 chunks/s on two cores, so a million chunks would take over half a day.
``--vectors pending`` times them while the background stages are still behind, as a user's
memory is during a large ingest, and reports each stage's lag and catch-up rate instead.

One JSON line goes to stdout, progress and logs to stderr; ``--out`` also receives the JSON
(rewritten after each size) and a PNG plot. The memory directory is kept between runs: running
again resumes a build (chunks already stored are skipped without being embedded), and ingest
throughput counts only the chunks embedded by this run.

Usage::

    python benchmarks/notepad.py                            # 10k and 100k: ~1.5 h on 2 cores
    python benchmarks/notepad.py --sizes 10000 --queries 300
    python benchmarks/notepad.py --sizes 10000,100000,1000000 --replay-mb 256 --vectors pending
    python benchmarks/notepad.py --sizes 1000000 --replay-mb 256 --search-only --memory DIR

``--search-only`` ingests nothing: it stops the background stages of the memory in ``--memory``
and times the query mix of the last size on it, as the last size of a ``--vectors pending`` run
does once its stages are stopped.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import random
import re
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from notepad_corpus import (  # the sibling benchmark module (benchmarks/ is on sys.path)
    LOG_STREAM,
    PROSE_STREAM,
    Source,
    build_plan,
)
from notepad_report import disk_bytes, load_average, machine_info, write_outputs

from memsdk import HybridMemory, MemoryConfig, Scope

logger = logging.getLogger("benchmarks.notepad")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
SCOPE = Scope(tenant="benchmark", user="notepad")

PROGRESS_EVERY_S = 30.0

# Identifiers that stand alone in a line, as an agent would paste them into a query.
LOG_IDENTIFIERS = {
    "block_id": re.compile(r"(?<!\w)blk_-?\d+(?!\w)"),
    "bgl_node": re.compile(r"(?<!\w)R\d\d-M\d-N[0-9A-F]-[A-Z]:J\d\d-U\d\d(?!\w)"),
    "ipv4": re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"),
    "hadoop_attempt": re.compile(r"(?<!\w)attempt_\d+_\d+_[mr]_\d+_\d+(?!\w)"),
    "openstack_request": re.compile(
        r"(?<!\w)req-[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}(?!\w)"
    ),
}
# Used only when no log was ingested (no ../shared): identifiers of the standard library.
CODE_IDENTIFIERS = {
    "python_name": re.compile(r"(?<![\w.])[a-z][a-z0-9]*(?:_[a-z0-9]+){2,}(?!\w)"),
    "hex_constant": re.compile(r"(?<!\w)0x[0-9a-fA-F]{6,}(?!\w)"),
}
MAX_CODE_FILES_SCANNED = 200

IDENTIFIER_TEMPLATES = (
    "{}",
    "what happened to {}?",
    "show me the lines about {}",
    "errors involving {}",
)
FIXED_QUESTIONS = (
    "how do I configure a rotating log file handler",
    "connection refused to the namenode",
    "why did the datanode fail to receive a block",
    "how to parse command line arguments with subcommands",
    "kernel panic while generating a core dump on a compute node",
    "how do I read a gzip compressed file line by line",
    "authentication failure for user root over ssh",
    "how to run a coroutine with a timeout in asyncio",
    "which task attempt failed in the mapreduce job",
    "how to compare two floating point numbers with a tolerance",
    "instance spawned successfully on the compute host",
    "how do I make an HTTP request with custom headers",
    "proxy connection closed after sending bytes",
    "how to serialize a dataclass to json",
    "wake lock released by the power manager",
    "how do I create a temporary directory that is removed automatically",
    "child process found in the scoreboard slot",
    "how to compute the sha256 hash of a file",
    "package applicability state in the windows update log",
    "how to sort a list of dictionaries by a key",
)
QUERY_SHARES = (("identifier", 0.4), ("natural", 0.3), ("filtered", 0.3))


# ---- ingest ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Chunks newly embedded and stored, and what it took (files that added nothing excluded)."""

    files: int = 0
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    duplicates_skipped: int = 0

    def add(self, chunks: int, size: int, seconds: float, duplicates: int) -> None:
        self.files += 1
        self.chunks += chunks
        self.bytes += size
        self.seconds += seconds
        self.duplicates_skipped += duplicates

    def merged(self, other: Tally) -> Tally:
        return Tally(
            self.files + other.files,
            self.chunks + other.chunks,
            self.bytes + other.bytes,
            self.seconds + other.seconds,
            self.duplicates_skipped + other.duplicates_skipped,
        )

    def summary(self) -> dict[str, Any]:
        seconds = self.seconds or float("nan")
        return {
            "chunks": self.chunks,
            "files": self.files,
            "mb": round(self.bytes / 1e6, 3),
            "seconds": round(self.seconds, 2),
            "chunks_per_s": _rounded(self.chunks / seconds),
            "mb_per_s": _rounded(self.bytes / 1e6 / seconds, 4),
            "duplicates_skipped": self.duplicates_skipped,
        }


def tally_summary(tallies: dict[str, Tally]) -> dict[str, Any]:
    """Per-stream figures and their total."""
    total = Tally()
    for tally in tallies.values():
        total = total.merged(tally)
    return {name: tallies[name].summary() for name in (LOG_STREAM, PROSE_STREAM)} | {
        "total": total.summary()
    }


@dataclass
class Build:
    """How far the plan has been walked in this run, and the memory's size."""

    plan: list[Source]
    memory_chunks: int
    walked: list[Source] = field(default_factory=list)
    walked_chunks: int = 0  # chunks of the walked files, new or already stored
    run_tallies: dict[str, Tally] = field(
        default_factory=lambda: {LOG_STREAM: Tally(), PROSE_STREAM: Tally()}
    )


def scope_chunks(mem: HybridMemory) -> int:
    """How many chunks the benchmark's scope holds."""
    return sum(s.chunks for s in mem.stats().scopes if s.scope == SCOPE)


def grow(mem: HybridMemory, build: Build, target: int) -> dict[str, Tally]:
    """Walk the plan until the walked files hold ``target`` chunks and so does the memory.

    Files ingested by an earlier run are walked again: their chunks are found stored and skipped
    unembedded, which tells which files the memory holds. Returns this phase's tallies.
    """
    phase = {LOG_STREAM: Tally(), PROSE_STREAM: Tally()}
    progress = sys.stderr.isatty()
    last_log = time.perf_counter()
    while build.walked_chunks < target or build.memory_chunks < target:
        if len(build.walked) == len(build.plan):
            logger.warning(
                "the data ran out at %d chunks (target %d): add replayed logs (--replay-mb)",
                build.memory_chunks,
                target,
            )
            break
        source = build.plan[len(build.walked)]
        source.materialise()  # a replayed log is written on first use, outside the timing
        started = time.perf_counter()
        report = mem.ingest(source.path, scope=SCOPE, metadata=source.metadata(), progress=progress)
        seconds = time.perf_counter() - started
        build.walked.append(source)
        build.walked_chunks += report.chunks + report.duplicates_skipped
        build.memory_chunks += report.chunks
        if report.chunks:
            for tally in (phase[source.stream], build.run_tallies[source.stream]):
                tally.add(report.chunks, report.bytes, seconds, report.duplicates_skipped)
        if time.perf_counter() - last_log > PROGRESS_EVERY_S:
            last_log = time.perf_counter()
            _log_progress(build, target, phase)
    return phase


def _log_progress(build: Build, target: int, phase: dict[str, Tally]) -> None:
    total = phase[LOG_STREAM].merged(phase[PROSE_STREAM])
    rate = total.chunks / total.seconds if total.seconds else 0.0
    logger.info(
        "ingest: %d/%d chunks in memory, %d files walked, %.1f new chunks/s, at %s",
        build.memory_chunks,
        target,
        len(build.walked),
        rate,
        build.walked[-1].path,
    )


# ---- queries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    """An identifier found in an ingested file."""

    text: str
    type: str  # the pattern that found it: block_id, bgl_node, ipv4, ...
    kind: str  # the source_kind of its file, for filtered queries
    dataset: str


@dataclass(frozen=True)
class Query:
    """One search of the mix; ``needle`` is the identifier its rank-1 hit must hold."""

    kind: str  # identifier, natural or filtered
    text: str
    filters: dict[str, Any] | None = None
    needle: Needle | None = None


def find_needles(sources: list[Source]) -> dict[str, list[Needle]]:
    """Identifiers of the ingested real logs by type, in order of first occurrence (Python names
    and hex constants of the ingested code when no log was ingested)."""
    pool = [s for s in sources if s.stream == LOG_STREAM and s.replay_seed is None]
    patterns = LOG_IDENTIFIERS
    if not pool:
        pool = [s for s in sources if s.kind == "code"][:MAX_CODE_FILES_SCANNED]
        patterns = CODE_IDENTIFIERS
    found: dict[str, dict[str, Needle]] = {name: {} for name in patterns}
    for source in pool:
        text = source.path.read_text("utf-8", errors="replace")
        for name, pattern in patterns.items():
            for match in pattern.finditer(text):
                needle = Needle(match.group(), name, source.kind, source.dataset)
                found[name].setdefault(needle.text, needle)
    return {name: list(needles.values()) for name, needles in found.items() if needles}


def docstring_questions(
    sources: list[Source], rng: random.Random, *, files: int = 300
) -> list[str]:
    """First lines of docstrings (4 to 16 words) of a seeded sample of the ingested code."""
    code = [s for s in sources if s.kind == "code"]
    questions: dict[str, None] = {}
    for source in rng.sample(code, min(files, len(code))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old test data raises SyntaxWarning
            try:
                tree = ast.parse(source.path.read_bytes())
            except (SyntaxError, ValueError):
                continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (ast.get_docstring(node) or "").strip().splitlines()
                first = lines[0].strip().rstrip(".") if lines else ""
                if 4 <= len(first.split()) <= 16 and first.isascii():
                    questions[first] = None
    return list(questions)


def _counts(total: int, kinds: list[str]) -> dict[str, int]:
    """Split ``total`` queries among ``kinds`` by their shares (the last takes the rest)."""
    shares = {k: s for k, s in QUERY_SHARES if k in kinds}
    scale = sum(shares.values())
    counts = {k: round(total * s / scale) for k, s in shares.items()}
    counts[kinds[-1]] += total - sum(counts.values())
    return counts


def build_queries(sources: list[Source], total: int, rng: random.Random) -> list[Query]:
    """A seeded, shuffled mix of identifier, natural-language and filtered queries."""
    needles = find_needles(sources)
    docstrings = docstring_questions(sources, rng)
    has_code = any(s.kind == "code" for s in sources)
    kinds = ["natural", "filtered"] if not needles else ["identifier", "natural", "filtered"]

    def needle() -> Needle:
        return rng.choice(needles[rng.choice(sorted(needles))])

    def question(i: int) -> str:
        use_docstring = docstrings and i % 2 == 1
        return rng.choice(docstrings) if use_docstring else rng.choice(FIXED_QUESTIONS)

    def filtered(i: int) -> Query:
        variant = i % 3 if needles else 2
        if variant == 2:
            kind = "code" if has_code else LOG_STREAM
            filters = {"source_kind": {"eq": kind}}
            return Query("filtered", question(i), filters)
        found = needle()
        text = rng.choice(IDENTIFIER_TEMPLATES).format(found.text)
        if variant == 0:
            return Query("filtered", text, {"source_kind": {"eq": found.kind}}, found)
        return Query("filtered", text, {"dataset": {"eq": found.dataset}}, found)

    counts = _counts(total, kinds)
    queries = []
    for i in range(counts.get("identifier", 0)):
        found = needle()
        text = IDENTIFIER_TEMPLATES[i % len(IDENTIFIER_TEMPLATES)].format(found.text)
        queries.append(Query("identifier", text, needle=found))
    queries += [Query("natural", question(i)) for i in range(counts["natural"])]
    queries += [filtered(i) for i in range(counts["filtered"])]
    rng.shuffle(queries)
    return queries


# ---- search ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    """A query's latency and, for a query with a needle, whether rank 1 held it."""

    query: Query
    ms: float
    cpu_ms: float  # CPU time of the calling thread (SQL, FAISS; not ONNX Runtime's own threads)
    hit: bool | None  # the needle is in the rank-1 hit; None for a query without a needle
    top_source: str | None


def _holds(text: str, needle: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", text) is not None


def time_queries(mem: HybridMemory, queries: list[Query], *, k: int, warmup: int) -> list[Timed]:
    """Run ``warmup`` queries untimed, then time every query around ``mem.search``."""
    for query in queries[:warmup]:
        mem.search(query.text, scope=SCOPE, k=k, filters=query.filters)
    timed = []
    for query in queries:
        started, cpu_started = time.perf_counter(), time.thread_time()
        hits = mem.search(query.text, scope=SCOPE, k=k, filters=query.filters)
        ms = (time.perf_counter() - started) * 1e3
        cpu_ms = (time.thread_time() - cpu_started) * 1e3
        hit = None
        if query.needle is not None:
            hit = bool(hits) and _holds(hits[0].text, query.needle.text)
        timed.append(Timed(query, ms, cpu_ms, hit, hits[0].source if hits else None))
    return timed


def _rounded(value: float, digits: int = 3) -> float | None:
    return None if np.isnan(value) else round(float(value), digits)


def latency(ms: list[float]) -> dict[str, Any]:
    """Percentiles, mean and max of latencies in milliseconds."""
    values = np.asarray(ms, dtype=np.float64)
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "n": len(values),
        "p50_ms": _rounded(p50),
        "p95_ms": _rounded(p95),
        "mean_ms": _rounded(values.mean()),
        "max_ms": _rounded(values.max()),
    }


def first_use(timed: list[Timed], warmup: list[Query]) -> dict[str, Any]:
    """Latency of the filtered queries whose filter no earlier query (warm-up included) used:
    the memory keeps the last filters' ids (stores/filter_ids.py), so these pay for listing
    them when the nearest vectors do not serve."""
    seen = {json.dumps(q.filters, sort_keys=True) for q in warmup if q.filters}
    first = []
    for t in timed:
        key = json.dumps(t.query.filters, sort_keys=True)
        if t.query.filters and key not in seen:
            seen.add(key)
            first.append(t.ms)
    return latency(first) | {"distinct_filters": len(seen)} if first else {"n": 0}


def needle_hit_rate(timed: list[Timed]) -> dict[str, Any]:
    """Fraction of queries with a needle whose rank-1 hit holds it, overall and by kind/type."""
    with_needle = [t for t in timed if t.hit is not None]

    def rate(group: list[Timed]) -> float | None:
        return round(sum(bool(t.hit) for t in group) / len(group), 4) if group else None

    def grouped(key: Callable[[Timed], str]) -> dict[str, float | None]:
        groups: dict[str, list[Timed]] = {}
        for t in with_needle:
            groups.setdefault(key(t), []).append(t)
        return {name: rate(groups[name]) for name in sorted(groups)}

    misses = [
        {"query": t.query.text, "filters": t.query.filters, "top_source": t.top_source}
        for t in with_needle
        if not t.hit
    ]
    return {
        "overall": rate(with_needle),
        "queries": len(with_needle),
        "by_kind": grouped(lambda t: t.query.kind),
        "by_type": grouped(lambda t: t.query.needle.type if t.query.needle else ""),
        "by_template": grouped(
            lambda t: t.query.text.replace(t.query.needle.text, "{}") if t.query.needle else ""
        ),
        "misses_sample": misses[:5],
    }


def measure(
    mem: HybridMemory, build: Build, target: int, args: argparse.Namespace, *, held_before: int
) -> dict[str, Any]:
    """Search latency and needle hit rate at the memory's current size (``held_before``: its
    size before this run grew it towards ``target``)."""
    rng = random.Random(f"notepad-{args.seed}-{target}")
    queries = build_queries(build.walked, args.queries, rng)
    logger.info("searching: %d queries at %d chunks", len(queries), build.memory_chunks)
    load = load_average()
    timed = time_queries(mem, queries, k=args.k, warmup=args.warmup)
    kinds = sorted({t.query.kind for t in timed})
    result: dict[str, Any] = {
        "target_chunks": target,
        "memory_chunks": build.memory_chunks,
        "index_vectors": mem.stats().index_vectors,
        "files_in_memory": len(build.walked),
        "queries": len(timed),
        "k": args.k,
        "warmup_queries": min(args.warmup, len(queries)),
        "latency": {"overall": latency([t.ms for t in timed])}
        | {kind: latency([t.ms for t in timed if t.query.kind == kind]) for kind in kinds},
        "thread_cpu": {"overall": latency([t.cpu_ms for t in timed])}
        | {kind: latency([t.cpu_ms for t in timed if t.query.kind == kind]) for kind in kinds},
        "needle_hit_rate": needle_hit_rate(timed),
        "filtered_first_use": first_use(timed, queries[: args.warmup]),
        "load_average_before": load,
        "load_average_after": load_average(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "disk_bytes": disk_bytes(mem.path),
    }
    if held_before > target and build.memory_chunks > 1.25 * target:
        result["note"] = (
            f"the memory already held {held_before} chunks before this run, more than the "
            f"target {target}: point --memory at a fresh directory to measure this size"
        )
    return result


def stop_stages(mem: HybridMemory) -> None:
    """Close the embedding stage and the weight memory's worker (what they stored is kept)."""
    mem.embedding.close()
    if mem.weights is not None:
        mem.weights.close()


def measure_stopped(
    mem: HybridMemory, build: Build, target: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The same queries again once the background stages are stopped (closed: what they had
    stored is kept, the rest waits for the next open): the search alone on the two cores."""
    stop_stages(mem)
    size = measure(mem, build, target, args, held_before=build.memory_chunks)
    keep = ("latency", "thread_cpu", "needle_hit_rate", "load_average_before", "index_vectors")
    return {key: size[key] for key in keep} | {"stage_lags": stage_lags(mem)}


# ---- report ----------------------------------------------------------------------------------


def stage_lags(mem: HybridMemory) -> dict[str, Any]:
    """How far the background stages are behind in the benchmark's scope."""
    scope = next((s for s in mem.stats().scopes if s.scope == SCOPE), None)
    if scope is None:
        return {}
    lags = {"vectors": scope.vectors_lag.model_dump()}
    if scope.weights_lag is not None:
        lags["weights"] = scope.weights_lag.model_dump()
    return lags | {"scope_bytes": scope.bytes}


def config_info(mem: HybridMemory) -> dict[str, Any]:
    """The memory's config (the database URL as the memory reports it, password hidden)."""
    stats = mem.stats()
    return mem.config.model_dump(exclude={"database_url"}) | {
        "database": stats.database,
        "embedder": stats.embedder,
        "embedding_dim": mem.embedder.dim,
        "embedding_max_tokens": mem.embedder.max_tokens,
    }


# ---- main ------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes such as 10000,100000, got {text!r}"
        ) from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive chunk counts, got {text!r}")
    return sizes


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the memsdk notepad: ingest throughput (embedding included) and "
        "search latency with a needle hit rate, at growing memory sizes. One JSON line on "
        "stdout; progress on stderr.",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[10_000, 100_000],
        help="memory sizes in chunks, comma-separated, measured smallest first "
        "(default: 10000,100000; embedding runs at about 25 chunks/s on 2 CPU cores, so 100k "
        "takes well over an hour)",
    )
    parser.add_argument(
        "--queries", type=_at_least(1), default=200, help="timed queries per size (default: 200)"
    )
    parser.add_argument("--k", type=_at_least(1), default=5, help="hits per search (default: 5)")
    parser.add_argument(
        "--warmup", type=_at_least(0), default=5, help="untimed queries before timing (default: 5)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the query mix (default: 0)")
    parser.add_argument(
        "--memory",
        type=Path,
        default=DEFAULT_OUT / "notepad-memory",
        help="memory directory, kept between runs so that a build resumes "
        "(default: benchmarks/out/notepad-memory)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where notepad.json and notepad.png are written (default: benchmarks/out/)",
    )
    parser.add_argument(
        "--replay-mb",
        type=_at_least(0),
        default=0,
        help="MB of SYNTHETIC replayed logs after the real ones (log_replay.py), written on "
        "first use under benchmarks/out/log-replay; the real text reaches about 570k chunks "
        "(default: 0)",
    )
    parser.add_argument(
        "--vectors",
        choices=("wait", "pending"),
        default="wait",
        help="wait: time the searches once every vector is stored (the catch-up time is "
        "reported); pending: time them while the background stages are behind, reporting "
        "their lags (default: wait)",
    )
    parser.add_argument(
        "--no-text-index",
        action="store_true",
        help="keep keyword search on SQL's full-text index at every size (the text index, "
        "MemoryConfig.text_index_threshold, is not built): the figures before it",
    )
    parser.add_argument(
        "--search-only",
        action="store_true",
        help="time the query mix of the last of --sizes on the memory as it is, with the "
        "background stages stopped, without ingesting (to measure a change of the search on "
        "a memory built before)",
    )
    parser.add_argument(
        "--shared",
        type=Path,
        default=DEFAULT_SHARED,
        help="the shared material holding data/loghub (default: ../shared beside the repo); "
        "without it only the standard library and system docs are ingested",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Grow the memory to each size and measure it, rewriting the outputs after each size."""
    plan, result["data"] = build_plan(args.shared, replay_mb=args.replay_mb)
    run_started = time.perf_counter()
    config = MemoryConfig(text_index_threshold=2**62) if args.no_text_index else None
    with HybridMemory.open(args.memory, config=config) as mem:
        result["config"] = config_info(mem)
        build = Build(plan, memory_chunks=scope_chunks(mem))
        result["memory"] = {"path": str(mem.path), "chunks_at_start": build.memory_chunks}
        logger.info("memory %s holds %d chunks", mem.path, build.memory_chunks)
        if args.search_only:
            # The queries come from the whole plan, as they do once a build has walked it.
            build.walked = list(plan)
            result["search_only"] = True
            stop_stages(mem)
            waited = text_index_wait(mem)
            size = measure(mem, build, args.sizes[-1], args, held_before=build.memory_chunks)
            result["sizes"].append(size | {"stage_lags": stage_lags(mem), "text_index": waited})
            result["memory"]["chunks_at_end"] = build.memory_chunks
            return
        try:
            for target in args.sizes:
                held_before = build.memory_chunks
                phase = grow(mem, build, target)
                # ingest returns once SQL holds the chunks; with --vectors wait, searches are
                # timed on a memory whose vectors have caught up, and the wait is the vector
                # catch-up time.
                lags = stage_lags(mem) | {"s_since_start": time.perf_counter() - run_started}
                vectors_s = None
                waited = text_index_wait(mem)
                if args.vectors == "wait":
                    started = time.perf_counter()
                    mem.embedding.flush()
                    vectors_s = time.perf_counter() - started
                size = measure(mem, build, target, args, held_before=held_before)
                size["ingest_phase"] = tally_summary(phase)
                size["vectors_catch_up_s"] = vectors_s
                size["text_index"] = waited
                size["stage_lags_after_ingest"] = lags
                if args.vectors == "pending" and target == args.sizes[-1]:
                    size["stages_stopped"] = measure_stopped(mem, build, target, args)
                result["sizes"].append(size)
                result["ingest"] = _ingest_section(build)
                write_outputs(result, args.out)
                logger.info("size %d: %s", target, json.dumps(size))
        finally:
            result["ingest"] = _ingest_section(build)
            result["memory"]["chunks_at_end"] = scope_chunks(mem)  # counts an interrupted file


def text_index_wait(mem: HybridMemory) -> dict[str, Any]:
    """Wait until keyword search runs on the text index when the memory is past its threshold
    (``MemoryConfig.text_index_threshold``; built in the background): how long that took, and
    whether searches at this size run on it or on SQL's full-text index."""
    started = time.perf_counter()
    ready = mem.notepad.text_index.wait_ready()
    return {"ready": ready, "wait_s": round(time.perf_counter() - started, 2)}


def _ingest_section(build: Build) -> dict[str, Any]:
    return tally_summary(build.run_tallies) | {
        "note": "only chunks embedded by this run count (files already in the memory are "
        "excluded); time is wall time around each ingest call (acknowledged ingest: reading, "
        "chunking and SQL with full-text entries; the background embedding stage computes "
        "the vectors meanwhile, and a size's vectors_catch_up_s is the wait after its last "
        "ingest until every vector was stored); MB = 1e6 bytes read",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    result: dict[str, Any] = {
        "benchmark": "notepad",
        "complete": False,
        "machine": machine_info(),
        "config": None,
        "data": None,
        "memory": None,
        "ingest": None,
        "sizes": [],
        "plot": None,
    }
    code = 0
    try:
        run(args, result)
        result["complete"] = True
    except KeyboardInterrupt:
        logger.warning("interrupted: writing the results measured so far")
        result["interrupted"] = True
        code = 130
    write_outputs(result, args.out)
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
