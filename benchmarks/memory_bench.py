"""The memory benchmark: does the router send each query to the memory that holds its answer?

Protocol (DESIGN.md, "How memory quality is measured"). Each stream is a real file the weight
model never trained on: the held-out Loghub systems (BGL, HDFS, OpenStack) and the issue-tracker
tickets. Its first three quarters (whole lines) are ingested into a fresh scope, with facts
inserted once at random lines ("FACT ref-3fa9c1: the backup window of db-17 is 02:10 UTC");
queries are built from the stream:

- needles: a line of the ingested part cut after an identifier found in one chunk only (the
  answer is the rest of the line), and the inserted facts cut before their value;
- patterns: a line of the last quarter that the ingested part does not hold (up to case and
  white space), cut at about 40% at a space (the answer is the rest of the line); lines of the
  last quarter that the ingested part does hold (ticket-template boilerplate) are reported
  apart, as repeats.

Every query is scored on every branch (frozen, notepad, weights, both) by the bits per byte of
its reference answer and by whether greedy decoding reproduces it exactly; then the router's
choice (``HybridMemory.query``, route auto) with the shipped default policy and with the
scope's own calibrated policy, the oracle (per-query best branch) and each always-one-branch
policy; and ``within_stream_fit``, a diagnostic of how much any policy over the router's
features could gain (fitted on half of each stream's own queries, answers known, and tested on
the other half). Also:

- each whole stream scored prequentially, line by line, by each branch (notepad and both
  retrieve from the lines before it), beside ``gzip -9``, ``zstd -19 --long`` and ``xz -9e``;
- anomaly: the AUROC of ``surprise`` for BGL's alert lines (``Label`` not ``-``) in the second
  half of the log after ingesting the first half, adapted weights versus initial weights.

``--one-scope`` ingests every held-out stream, in turn, into one scope, as a user's scope
holds many sources, and asks each stream's queries there (``memory_one_scope.json``): with
the weight memory's per-source slots, do the older streams' queries still find their answers,
and does routing pay now?

``--fit-default`` instead builds the same queries on development streams (every Loghub system
the model trained on, and tickets from byte 2,000,000 on, far past the held-out ones), each
scope calibrated on its own probes, and fits the shipped default policy,
``memsdk/router_default.json``, cross-validated one stream per fold (it serves streams it has
never seen); figures in ``memory_dev.json``. The router is tuned on development data and
reported on held-out data.

Usage::

    python benchmarks/memory_bench.py                  # ~15 min on 2 cores
    python benchmarks/memory_bench.py --fit-default    # refit the shipped default policy, ~12 min
    python benchmarks/memory_bench.py --one-scope      # every stream in one scope
    python benchmarks/memory_bench.py --one-scope --retention none   # ... with plain TTT
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from weights import compressed_bpb  # the sibling benchmark script (benchmarks/ is on sys.path)

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.engine import TTTState, score_bytes, stream
from memsdk.files import atomic_write_bytes
from memsdk.results import RouteFeatures
from memsdk.retention import MemoryHistory, RetentionConfig, absorb, read_slots
from memsdk.router import (
    BRANCHES,
    DEFAULT_POLICY_PATH,
    default_policy,
    fit_policy,
    make_probes,
    passage_context,
    score_branches,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
# name: (file under shared/data, first byte used)
HELDOUT = {
    "logs/BGL": ("loghub/BGL/BGL_2k.log", 0),
    "logs/HDFS": ("loghub/HDFS/HDFS_2k.log", 0),
    "logs/OpenStack": ("loghub/OpenStack/OpenStack_2k.log", 0),
    "tickets": ("tickets/issues_train.csv", 0),
}
# Every Loghub system the model trained on, and tickets far past the held-out ones (the model
# never trained on tickets; these bytes tune the router and are never reported).
DEVELOPMENT = {
    **{
        f"logs/{system}": (f"loghub/{system}/{system}_2k.log", 0)
        for system in (
            "Linux",
            "Apache",
            "Hadoop",
            "HPC",
            "Android",
            "HealthApp",
            "Mac",
            "Proxifier",
            "Windows",
        )
    },
    "tickets (dev)": ("tickets/issues_train.csv", 2_000_000),
}
ALL_BRANCHES = ("frozen", *BRANCHES)
SUBJECTS = [
    "the backup window of {host} is",
    "the on-call owner of {host} is",
    "the rollback plan for {host} is",
    "the root cause on {host} was",
    "the maintenance contact for {host} is",
]
VALUES = [
    "02:10 UTC every Sunday",
    "Dana Okafor, extension 5512",
    "restore snapshot 41 and pin kernel 6.1.0-13",
    "a stale resolver cache in nscd",
    "Ravi Menon from the storage team",
    "a full /var partition after log rotation failed",
]


def read_stream(shared: Path, source: tuple[str, int], size: int) -> list[str]:
    """``size`` bytes of the stream from its first byte used on, whole lines only."""
    relative, start = source
    data = (shared / "data" / relative).read_bytes()
    if start:
        data = data[data.index(b"\n", start) + 1 :]
    data = data[:size]
    return data[: data.rfind(b"\n") + 1].decode("utf-8", "replace").splitlines(keepends=True)


def insert_facts(lines: list[str], count: int, rng: random.Random) -> tuple[list[str], list]:
    """``lines`` with ``count`` facts inserted at random positions, and the fact queries."""
    lines = list(lines)
    facts = []
    for _ in range(count):
        ref = f"ref-{rng.randrange(16**6):06x}"
        subject = rng.choice(SUBJECTS).format(host=f"db-{rng.randrange(10, 99)}")
        value = rng.choice(VALUES)
        lines.insert(rng.randrange(len(lines) + 1), f"FACT {ref}: {subject} {value}\n")
        facts.append(("fact", f"FACT {ref}: {subject}", f" {value}"))
    return lines, facts


def normal_line(line: str) -> str:
    """A line as compared for repeats: case and runs of white space do not count."""
    return " ".join(line.lower().split())


def build_queries(
    mem: HybridMemory,
    scope: Scope,
    ingested: list[str],
    rest: list[str],
    facts: list,
    per_kind: int,
    seed: int,
    source: str | None = None,
    stored: list[str] | None = None,
) -> list[tuple[str, str, str]]:
    """(kind, query, answer): needles from the ingested part (its stream lines, not the facts),
    the facts, and up to ``per_kind`` patterns and ``per_kind`` repeats from ``rest``.

    A line of ``rest`` that also occurs in the ingested part (up to case and white space) is a
    *repeat*, not a pattern: ticket-template boilerplate (``### How often does this bug
    happen?``) is in every ticket, and a pattern is meant to be a line nobody stored.

    In a scope of many streams, ``source`` keeps the needles to that stream's chunks, and
    ``stored`` (every line the scope holds) decides what is a repeat.
    """
    sql = mem.notepad.sql
    scope_id = sql.find_scope(scope.key())
    ids = sql.chunk_ids(scope_id).tolist()
    if source is not None:
        sources = sql.chunk_sources(scope_id, ids[0], ids[-1])
        ids = [cid for cid in ids if sources[cid] == source]
    records = sql.get_chunks(scope_id, ids)
    fact_lines = {normal_line(query + answer) for _, query, answer in facts}

    def stream_lines(text: str) -> str:  # a needle from a fact line would be a fact again
        return "".join(ln for ln in text.splitlines(True) if normal_line(ln) not in fact_lines)

    chunks = [(cid, stream_lines(records[cid].text)) for cid in ids]

    def is_rare(span: str) -> bool:
        return len(sql.keyword_search(scope_id, span, limit=2)) == 1

    needles = make_probes(chunks, is_rare=is_rare, needles=per_kind, patterns=0, seed=seed)
    candidates = make_probes(
        [(-1, "".join(rest))], is_rare=lambda _: False, needles=0, patterns=4 * per_kind, seed=seed
    )
    seen = {normal_line(line) for line in (ingested if stored is None else stored)}
    kept: dict[str, list] = {"pattern": [], "repeat": []}
    for p in candidates:
        kind = "repeat" if normal_line(p.query + p.answer) in seen else "pattern"
        if len(kept[kind]) < per_kind:
            kept[kind].append((kind, p.query, p.answer))
    return [(p.kind, p.query, p.answer) for p in needles] + facts + kept["pattern"] + kept["repeat"]


def score_queries(mem: HybridMemory, scope: Scope, queries: list) -> list[dict]:
    """Each query on each branch, and the router's choice: ``mem.query`` routes with the
    scope's policy (calibrated when the scope was), and the shipped default policy is applied
    to the same features."""
    scope_id = mem.notepad.sql.find_scope(scope.key())
    initial, adapted = mem.weights.initial_state(), mem.weights.state(scope_id)
    rows = []
    for kind, query, answer in queries:
        started = time.perf_counter()
        ans = mem.query(query, scope=scope, k=5, max_bytes=1)
        route_ms = (time.perf_counter() - started) * 1000
        context = passage_context(query, ans.passages, budget=mem.config.query_context_bytes)
        slots = read_slots(adapted, [p.source for p in ans.passages])  # as mem.query reads
        scores = score_branches(
            initial, adapted, context=context, query=query, answer=answer, slots=slots
        )
        line = (query + answer).strip()
        rows.append(
            {
                "kind": kind,
                "query": query,
                "answer": answer,
                "bits": {b: s.bits_per_byte for b, s in scores.items()},
                "exact": {b: s.exact for b, s in scores.items()},
                "in_top5": any(line in p.text for p in ans.passages),
                "route_default": default_policy().choose(ans.route.features),
                "route_calibrated": ans.route.branch,
                "features": ans.route.features.model_dump(),
                "reason": ans.route.reason,
                "route_ms": route_ms,
            }
        )
    return rows


def summarize(rows: list[dict]) -> dict:
    """Mean bits per byte and exact-match rate of every policy over ``rows``."""
    if not rows:
        return {}
    policies = {f"always {b}": [b] * len(rows) for b in ALL_BRANCHES}
    policies["oracle"] = [min(BRANCHES, key=r["bits"].__getitem__) for r in rows]
    policies["router (default)"] = [r["route_default"] for r in rows]
    if "route_calibrated" in rows[0]:  # mem.query's own choice, with the scope's policy
        policies["router (calibrated)"] = [r["route_calibrated"] for r in rows]
    out = {}
    for name, choice in policies.items():
        out[name] = {
            "bits_per_byte": sum(r["bits"][c] for r, c in zip(rows, choice, strict=True))
            / len(rows),
            "exact_match": sum(r["exact"][c] for r, c in zip(rows, choice, strict=True))
            / len(rows),
            "retrieval_share": sum(c in ("notepad", "both") for c in choice) / len(rows),
        }
    return out


def policy_inputs(rows: list[dict]) -> tuple[list[RouteFeatures], torch.Tensor]:
    """The rows' router features and their (N, 3) bits per byte per branch, for fit_policy."""
    features = [RouteFeatures(**r["features"]) for r in rows]
    return features, torch.tensor([[r["bits"][b] for b in BRANCHES] for r in rows])


def by_stream(rows: list[dict], streams: dict) -> dict:
    """summarize() of each stream's rows."""
    return {s: summarize([r for r in rows if r["stream"] == s]) for s in streams}


def within_stream_fit(rows: list[dict], seed: int = 0) -> dict:
    """How much routing by the features could gain at best: a diagnostic, not a router.

    Each stream's queries are split in two halves; a policy fitted (:func:`fit_policy`) on
    one half, with its answers known, routes the other half, and the halves swap. No
    calibration can know more about a stream's queries than their own answers, so when this
    does not beat the constant branch, no policy over these features would.
    """
    routed = constant = 0.0
    for name in dict.fromkeys(r["stream"] for r in rows):
        mine = [r for r in rows if r["stream"] == name]
        random.Random(seed).shuffle(mine)
        halves = (mine[0::2], mine[1::2])
        for fit, held in (halves, halves[::-1]):
            features, bits = policy_inputs(fit)
            policy = fit_policy(features, bits)
            best = BRANCHES[int(bits.mean(0).argmin())]
            routed += sum(r["bits"][policy.choose(RouteFeatures(**r["features"]))] for r in held)
            constant += sum(r["bits"][best] for r in held)
    return {
        "routed_bits_per_byte": routed / len(rows),
        "constant_bits_per_byte": constant / len(rows),
        "oracle_bits_per_byte": sum(min(r["bits"][b] for b in BRANCHES) for r in rows) / len(rows),
    }


def prequential(
    mem: HybridMemory, lines: list[str], name: str, sources: list[str] | None = None
) -> dict:
    """The whole stream scored line by line, each line before anything learns or stores it.

    ``weights`` is plain test-time training (score each 512-byte chunk, then one inner step,
    the window carried along). The other branches read each line in a fresh window holding the
    stream's last 128 bytes (whole lines), with the match model that copies from the window
    (as ``query`` reads): ``frozen`` (initial weights) and ``weights+copy`` (the fast weights as
    they are at that point) see nothing else; ``notepad`` (initial weights) and ``both`` (fast
    weights) also see the passage lines retrieved for the previous line, from a notepad that
    has stored every line before it (in batches of 8 lines).

    With ``sources`` (one name per line, a stream of many sources), the fast weights keep
    them as the scope's retention does (``mem.config.weights_retention``, e.g. per-source
    slots): each line is absorbed by :func:`memsdk.retention.absorb` under its source, and
    the readers score with what the state retains (the slots' mixture).
    """
    model = mem.weights.model
    ttt = TTTState(model, model.default_ttt)
    frozen = TTTState(model, model.default_ttt)
    scope = Scope(tenant="prequential", user=name.replace("/", "-"))
    bits = dict.fromkeys((*ALL_BRANCHES, "weights+copy"), 0.0)
    total = 0
    history, rng = MemoryHistory(), random.Random(0)
    retention = RetentionConfig(method=mem.config.weights_retention)
    pending: list[str] = []
    for i, line in enumerate(lines):
        data = line.encode("utf-8", "surrogateescape")
        before = "".join(lines[max(0, i - 8) : i]).encode("utf-8", "surrogateescape")[-128:]
        recent = before[before.find(b"\n") + 1 :] if b"\n" in before[:-1] else before
        previous = lines[i - 1].strip() if i else ""
        context = b""
        if previous and i > len(pending):
            hits = mem.search(previous[:500], scope=scope, k=5)
            budget = mem.config.query_context_bytes
            context = passage_context(previous, hits, budget=budget).encode("utf-8", "replace")
        for branch, state, prefix in (
            ("frozen", frozen, recent),
            ("notepad", frozen, context + recent),
            ("weights+copy", ttt, recent),
            ("both", ttt, context + recent),
        ):
            bits[branch] += float(score_bytes(state, data, context=prefix, copy=True)[0].sum())
        if sources is None:
            bits["weights"] += stream(ttt, data, final=i == len(lines) - 1).bits
        else:
            bits["weights"] += absorb(
                ttt,
                data,
                history=history,
                config=retention,
                rng=rng,
                final=i == len(lines) - 1,
                source=sources[i],
            ).bits
            history.add(sources[i], data)
        total += len(data)
        pending.append(line)
        if len(pending) == 8:  # the notepad stores lines only after they were scored
            mem.ingest(pending, scope=scope, name=name)
            pending = []
    out = {b: v / total for b, v in bits.items()}
    out.update(compressed_bpb("".join(lines).encode("utf-8", "surrogateescape")))
    return out


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random alert line scores above a random normal line (ties: half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def anomaly(mem: HybridMemory, shared: Path) -> dict:
    """AUROC of per-line surprise for BGL alerts, second half, after ingesting the first."""
    log = (shared / "data/loghub/BGL/BGL_2k.log").read_text().splitlines(keepends=True)
    with open(shared / "data/loghub/BGL/BGL_2k.log_structured.csv", newline="") as f:
        labels = [row["Label"] != "-" for row in csv.DictReader(f)]
    half = len(log) // 2
    scope = Scope(tenant="anomaly", user="bgl")
    mem.ingest(log[:half], scope=scope, name="BGL first half")
    mem.flush()
    out = {"lines": len(log) - half, "alerts": sum(labels[half:])}
    for weights in ("adapted", "initial"):
        surprise = mem.surprise("".join(log[half:]), scope=scope, weights=weights)
        for key, field in (("", "novelty"), ("_bits_per_byte", "bits_per_byte")):
            scores = [getattr(line, field) for line in surprise.lines]
            out[f"auroc_{weights}{key}"] = auroc(scores, labels[half:])
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    kinds = list(summary["by_kind"])
    width = 0.8 / len(ALL_BRANCHES)
    for i, branch in enumerate(ALL_BRANCHES):
        values = [summary["by_kind"][k][f"always {branch}"]["bits_per_byte"] for k in kinds]
        left.bar([x + i * width for x in range(len(kinds))], values, width, label=branch)
    left.set_xticks([x + 0.4 - width / 2 for x in range(len(kinds))], kinds)
    left.set_ylabel("bits per byte of the answer")
    left.set_title("held-out queries, by branch and kind")
    left.legend(fontsize=8)
    for name, figures in summary["all"].items():
        right.scatter(figures["retrieval_share"], figures["exact_match"], s=40)
        right.annotate(name, (figures["retrieval_share"], figures["exact_match"]), fontsize=7)
    right.set_xlabel("share of queries sent to retrieval (notepad or both)")
    right.set_ylabel("exact match of greedy decoding")
    right.set_title("accuracy versus retrieval share")
    right.grid(alpha=0.3)
    fig.tight_layout()
    partial = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(partial, dpi=110)
    os.replace(partial, path)


def ingest_part(
    mem: HybridMemory, shared: Path, name: str, source: tuple[str, int], args, scope: Scope
) -> tuple[list[str], list[str], list]:
    """Ingest the first three quarters of a stream (with its facts) into ``scope``; return the
    ingested lines, the rest and the fact queries. The facts' seed is the stream's name, so a
    scope of many streams holds different facts for each."""
    rng = random.Random(f"{args.seed}:{name}")
    lines = read_stream(shared, source, args.stream_bytes)
    cut = len(lines) * 3 // 4
    ingested, facts = insert_facts(lines[:cut], args.facts, rng)
    mem.ingest(ingested, scope=scope, name=name)
    return ingested, lines[cut:], facts


def tag_rows(rows: list[dict], name: str, calibrate: bool) -> list[dict]:
    for row in rows:
        row["stream"] = name
        if not calibrate:
            del row["route_calibrated"]  # mem.query routed with the default policy too
    return rows


def run_stream(
    mem: HybridMemory, shared: Path, name: str, source: tuple[str, int], args, calibrate: bool
) -> list[dict]:
    """A scope of its own for one stream: ingest, build the queries, calibrate, score."""
    scope = Scope(tenant="bench", user=name.replace("/", "-"))
    ingested, rest, facts = ingest_part(mem, shared, name, source, args, scope)
    mem.flush()
    queries = build_queries(mem, scope, ingested, rest, facts, args.queries, args.seed)
    if calibrate:
        mem.calibrate_router(scope=scope, probes=args.probes, seed=args.seed)
    return tag_rows(score_queries(mem, scope, queries), name, calibrate)


def run_one_scope(mem: HybridMemory, shared: Path, streams: dict, args) -> list[dict]:
    """Every stream, in turn, into one scope (a scope of many sources, as users have), then
    each stream's queries on it; the scope is calibrated once, on its own probes."""
    scope = Scope(tenant="bench", user="one-scope")
    parts = {
        name: ingest_part(mem, shared, name, src, args, scope) for name, src in streams.items()
    }
    mem.flush()
    stored = [line for ingested, _, _ in parts.values() for line in ingested]
    queries = {
        name: build_queries(
            mem, scope, ingested, rest, facts, args.queries, args.seed, source=name, stored=stored
        )
        for name, (ingested, rest, facts) in parts.items()
    }
    mem.calibrate_router(scope=scope, probes=args.probes, seed=args.seed)
    rows = []
    for name, own in queries.items():
        rows += tag_rows(score_queries(mem, scope, own), name, calibrate=True)
    return rows


def run_all(mem: HybridMemory, streams: dict, args) -> list[dict]:
    if args.one_scope:
        return run_one_scope(mem, args.shared, streams, args)
    rows = []
    for name, source in streams.items():
        rows += run_stream(mem, args.shared, name, source, args, calibrate=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stream-bytes", type=int, default=96 * 1024)
    parser.add_argument("--queries", type=int, default=40, help="needles and patterns each")
    parser.add_argument("--facts", type=int, default=10, help="facts inserted per stream")
    parser.add_argument("--probes", type=int, default=120, help="calibration probes per scope")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-default", action="store_true")
    parser.add_argument("--skip-prequential", action="store_true")
    parser.add_argument(
        "--one-scope",
        action="store_true",
        help="ingest every stream into one scope (many sources) instead of a scope per stream",
    )
    parser.add_argument(
        "--retention",
        default=MemoryConfig().weights_retention,
        help="MemoryConfig.weights_retention of the scopes (none: plain test-time training)",
    )
    args = parser.parse_args(argv)
    if args.one_scope and args.fit_default:
        parser.error("--fit-default fits on a scope per development stream; drop --one-scope")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "memory_one_scope" if args.one_scope else "memory"
    if args.retention != MemoryConfig().weights_retention:
        stem += f"_{args.retention}"
    started = time.perf_counter()
    # The anomaly figure scores the second half of BGL_2k (175 KiB) in one surprise() call.
    config = MemoryConfig(max_score_bytes=256 << 10, weights_retention=args.retention)
    with tempfile.TemporaryDirectory() as tmp, HybridMemory.open(tmp, config=config) as mem:
        if args.fit_default:
            rows = run_all(mem, DEVELOPMENT, args)
            features, bits = policy_inputs(rows)
            # One fold per stream: the default serves streams it has never seen.
            groups = [r["stream"] for r in rows]
            policy = fit_policy(features, bits, kind="default", groups=groups)
            atomic_write_bytes(DEFAULT_POLICY_PATH, policy.to_json())
            result = {
                "benchmark": "memory (development streams)",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "fitted": str(DEFAULT_POLICY_PATH.relative_to(REPO)),
                "default_routes_by_features": any(any(row) for row in policy.weights),
                "queries": len(rows),
                "all": summarize(rows),
                "by_stream": by_stream(rows, DEVELOPMENT),
                "within_stream_fit": within_stream_fit(rows),
                "seconds": time.perf_counter() - started,
            }
            atomic_write_bytes(args.out / "memory_dev.json", json.dumps(result, indent=1).encode())
            print(json.dumps({k: v for k, v in result.items() if k != "by_stream"}))
            return 0
        rows = run_all(mem, HELDOUT, args)
        result = {
            "benchmark": "memory (one scope of every stream)" if args.one_scope else "memory",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch threads "
            f"{torch.get_num_threads()}",
            "model": mem.weights.model_name(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "queries": len(rows),
            "needle_top5": sum(r["in_top5"] for r in rows if r["kind"] in ("needle", "fact"))
            / max(1, sum(r["kind"] in ("needle", "fact") for r in rows)),
            "all": summarize(rows),
            "by_kind": {
                k: summarize([r for r in rows if r["kind"] == k])
                for k in ("needle", "fact", "pattern", "repeat")
                if any(r["kind"] == k for r in rows)
            },
            "by_stream": by_stream(rows, HELDOUT),
            "within_stream_fit": within_stream_fit(rows),
            "route_ms_p50": sorted(r["route_ms"] for r in rows)[len(rows) // 2],
        }
        if not args.skip_prequential and not args.one_scope:  # the same with one scope
            result["prequential"] = {
                name: prequential(mem, read_stream(args.shared, source, args.stream_bytes), name)
                for name, source in HELDOUT.items()
            }
        if not args.one_scope:
            result["anomaly_bgl"] = anomaly(mem, args.shared)
        result["seconds"] = time.perf_counter() - started
        atomic_write_bytes(args.out / f"{stem}.json", json.dumps(result, indent=1).encode())
        atomic_write_bytes(args.out / f"{stem}_queries.json", json.dumps(rows, indent=1).encode())
        plot(result, args.out / f"{stem}.png")
        print(json.dumps({k: v for k, v in result.items() if k not in ("by_stream",)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
