"""Conversational memory: does search find the turns that answer a question about a long chat?

LoCoMo (Maharana et al., 2024) holds long two-person conversations of many sessions, weeks
apart, with questions that name the turns ("evidence") holding each answer. This script runs
the development split in ``../shared/data/locomo-dev`` (three conversations, 497 questions);
the other seven conversations are a held-out test kept outside the project, never tuned on.

Each turn is stored as an agent would store it: ``add("Speaker: text", metadata={"dia_id": ...,
"session": N}, time=<the session's date>, context=<the previous turn of the session>)``, one
scope per conversation. Each question then goes through ``search(question, k=10)``. Evidence
recall@k is the share of a question's evidence turns among its top k hits; MRR is the
reciprocal rank of the first evidence turn. Figures per LoCoMo category (1 multi-hop,
2 temporal, 3 open-domain, 4 single-hop, 5 adversarial), with the search latency (p50, p95).

Systems: ``memsdk search`` (the API, every technique on); the ablation rows, built from the
same stores' keyword and vector rankings, add one technique at a time to the search memsdk had
before (equal-weight RRF with k=60 over BM25 on the whole question and MiniLM on the turn
alone); and, as baselines, BM25 alone and MiniLM + FAISS alone. The turn-alone vectors of the
ablation are the embedder's vectors of the stored texts, searched exactly (as the flat index
does).

One JSON line goes to stdout; ``--out`` receives ``conversation.json``.

Usage::

    python benchmarks/conversation.py                  # ~10 min on 2 cores (1,800 adds)
    python benchmarks/conversation.py --latency        # search latency alone, largest conversation

``--latency`` stores only the largest development conversation and times ``search`` alone, each
question asked twice (the first pass warms the caches, the second is timed): wall time and the
calling thread's CPU time, p50 and p95, with the load average, into ``conversation_latency.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.files import atomic_write_bytes
from memsdk.search import PERIOD_BOOST, group_by_session, keyword_query
from memsdk.stores.sql_keywords import CONTEXT_RANK_WEIGHT
from memsdk.timeline import named_period

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
K = 10


def session_time(date: str) -> datetime | None:
    """LoCoMo's session date, ``1:56 pm on 8 May, 2023``, as a datetime (None if absent)."""
    try:
        return datetime.strptime(date.strip(), "%I:%M %p on %d %B, %Y")
    except ValueError:
        return None


def turns(sample: dict) -> list[tuple[str, dict, datetime | None, str | None]]:
    """A conversation's turns in order, as ``(text, metadata, time, context)`` an agent would
    store: the context is the previous turn of the same session."""
    conv = sample["conversation"]
    out = []
    session = 1
    while f"session_{session}" in conv:
        date = conv.get(f"session_{session}_date_time", "")
        previous = None
        for turn in conv[f"session_{session}"]:
            text = f"{turn['speaker']}: {turn['text']}"
            meta = {"dia_id": turn["dia_id"], "session": session}
            out.append((text, meta, session_time(date), previous))
            previous = text
        session += 1
    return out


def fuse(
    rankings: list[tuple[list[int], float]],
    rrf: int,
    times: dict[int, datetime | None],
    query: str,
    sessions: dict[int, int] | None = None,
) -> list[int]:
    """Weighted reciprocal-rank fusion of ``(ids best first, weight)``, as memsdk.search does
    (weights scaled to sum to 2), and its period boost when ``times`` is not empty. With
    ``sessions`` (memory id -> session), memsdk.search's grouping by session."""
    total = sum(w for _, w in rankings)
    scores: dict[int, float] = {}
    for ids, weight in rankings:
        for rank, cid in enumerate(ids, 1):
            scores[cid] = scores.get(cid, 0.0) + 2 * weight / total / (rrf + rank)
    period = named_period(query) if times else None
    if period is not None:
        for cid in scores:
            moment = times.get(cid)
            if moment is not None and period[0] <= moment.replace(tzinfo=UTC) < period[1]:
                scores[cid] *= 1 + PERIOD_BOOST
    if sessions:
        group_by_session(scores, sessions)
    return sorted(scores, key=lambda cid: (-scores[cid], cid))[:K]


def load_average() -> float:
    """The machine's 1-minute load average: latency figures mean little on a busy machine."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def evaluate(rows: list[dict]) -> dict:
    """Mean recall@5, recall@10 and MRR over ``rows``, overall and per category."""

    def mean(group: list[dict]) -> dict:
        return {
            m: sum(r[m] for r in group) / len(group) for m in ("recall@5", "recall@10", "mrr")
        } | {"questions": len(group)}

    out = {"all": mean(rows)}
    for number, name in CATEGORIES.items():
        group = [r for r in rows if r["category"] == number]
        if group:
            out[name] = mean(group)
    return out


ABLATION = (
    "before: RRF k=60, equal weights, whole question, turn alone",
    "+ question words out of the keyword query",
    "+ keyword weight 3, RRF k=20",
    "+ contextual embeddings (previous turn, weight 0.3)",
    "+ period boost",
    "+ grouping by session (0.3 of the session's best other candidate)",
    "+ previous turn in the keyword index (weight 0.5; = memsdk search)",
)


# The context's keyword weight (stores.sql_keywords.CONTEXT_RANK_WEIGHT) against these, each in
# the full fusion: ``context_weight_choice`` says which one leaving one conversation out picks.
CONTEXT_WEIGHTS = (0.1, 0.3, 0.5, 1.0)


def weight_row(weight: float) -> str:
    return f"previous turn in the keyword index at weight {weight}"


def run(mem: HybridMemory, samples: list[dict]) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Store every conversation, ask every question under each system, and score them:
    ``(figures per system, per-question rows per system)``."""
    systems = ["memsdk search", *ABLATION, "keyword only (BM25)", "vector only (MiniLM + FAISS)"]
    systems += [weight_row(w) for w in CONTEXT_WEIGHTS]
    rows: dict[str, list[dict]] = {system: [] for system in systems}
    latency: list[float] = []
    n = mem.config.search_candidates
    for sample in samples:
        scope = Scope(tenant="locomo", user=sample["sample_id"])
        dia_of: dict[int, str] = {}
        times: dict[int, datetime | None] = {}
        texts: dict[int, str] = {}
        session_of: dict[int, int] = {}
        for text, meta, moment, context in turns(sample):
            for memory_id in mem.add(
                text, scope=scope, metadata=meta, time=moment, context=context
            ).ids:
                dia_of[memory_id], times[memory_id], texts[memory_id] = meta["dia_id"], moment, text
                session_of[memory_id] = meta["session"]
        scope_id = mem.notepad.sql.find_scope(scope.key())
        mem.notepad.text_index.wait_ready()  # built only past MemoryConfig.text_index_threshold
        ids = np.array(list(texts))
        alone = mem.embedder.embed(list(texts.values()))  # (N, 384): the turns without context
        for qa in sample["qa"]:
            evidence = set(qa.get("evidence") or [])
            if not evidence:
                continue
            question = qa["question"]
            started = time.perf_counter()
            hits = [h.id for h in mem.search(question, scope=scope, k=K)]
            latency.append(1000 * (time.perf_counter() - started))
            q = mem.embedder.embed_query(question)
            keywords = functools.partial(mem.notepad.sql.keyword_search, scope_id, limit=n)
            # The rows before the last rank the turn's own words only (context weight 0).
            stripped_query = keyword_query(question)
            whole = [cid for cid, _ in keywords(question, context_weight=0)]
            stripped = [cid for cid, _ in keywords(stripped_query, context_weight=0)]
            with_context = [cid for cid, _ in keywords(stripped_query)]
            plain = ids[np.argsort(-(alone @ q), kind="stable")[:n]].tolist()
            contextual = [cid for cid, _ in mem.notepad.vector_search(scope_id, q, k=n)]
            ranked = {
                "memsdk search": hits,
                ABLATION[0]: fuse([(whole, 1), (plain, 1)], 60, {}, question),
                ABLATION[1]: fuse([(stripped, 1), (plain, 1)], 60, {}, question),
                ABLATION[2]: fuse([(stripped, 3), (plain, 1)], 20, {}, question),
                ABLATION[3]: fuse([(stripped, 3), (contextual, 1)], 20, {}, question),
                ABLATION[4]: fuse([(stripped, 3), (contextual, 1)], 20, times, question),
                ABLATION[5]: fuse(
                    [(stripped, 3), (contextual, 1)], 20, times, question, session_of
                ),
                ABLATION[6]: fuse(
                    [(with_context, 3), (contextual, 1)], 20, times, question, session_of
                ),
                "keyword only (BM25)": whole[:K],
                "vector only (MiniLM + FAISS)": plain[:K],
            }
            for w in CONTEXT_WEIGHTS:
                if w == CONTEXT_RANK_WEIGHT:  # the shipped weight: the row above
                    ranked[weight_row(w)] = ranked[ABLATION[6]]
                    continue
                weighted = [cid for cid, _ in keywords(stripped_query, context_weight=w)]
                ranked[weight_row(w)] = fuse(
                    [(weighted, 3), (contextual, 1)], 20, times, question, session_of
                )
            for system, found_ids in ranked.items():
                found = [dia_of.get(cid) for cid in found_ids]
                first = next((r for r, d in enumerate(found, 1) if d in evidence), None)
                rows[system].append(
                    {
                        "conversation": sample["sample_id"],
                        "category": qa["category"],
                        "recall@5": len(evidence & set(found[:5])) / len(evidence),
                        "recall@10": len(evidence & set(found[:K])) / len(evidence),
                        "mrr": 1.0 / first if first else 0.0,
                    }
                )
    result = {system: evaluate(r) for system, r in rows.items()}
    result["memsdk search"]["latency_ms"] = {
        "p50": percentile(latency, 0.5),
        "p95": percentile(latency, 0.95),
    }
    return result, rows


def context_weight_choice(rows: dict[str, list[dict]]) -> list[dict]:
    """Leave one conversation out: the context weight with the best mean recall@10 on the
    other conversations' questions, and what it scores on the one left out."""

    def recall(weight: float, conversation: str, *, inside: bool) -> float:
        picked = [
            r["recall@10"]
            for r in rows[weight_row(weight)]
            if (r["conversation"] == conversation) == inside
        ]
        return sum(picked) / len(picked)

    folds = []
    for left_out in sorted({r["conversation"] for r in rows["memsdk search"]}):
        chosen = max(CONTEXT_WEIGHTS, key=lambda w: recall(w, left_out, inside=False))
        folds.append(
            {
                "left_out": left_out,
                "chosen": chosen,
                "held_out_recall@10": recall(chosen, left_out, inside=True),
            }
        )
    return folds


def latency(mem: HybridMemory, sample: dict) -> dict:
    """Search latency on one conversation's scope: wall and thread CPU milliseconds."""
    scope = Scope(tenant="locomo", user=sample["sample_id"])
    stored = turns(sample)
    for text, meta, moment, context in stored:
        mem.add(text, scope=scope, metadata=meta, time=moment, context=context)
    questions = [qa["question"] for qa in sample["qa"] if qa.get("evidence")]
    for question in questions:  # warm-up pass: first calls pay for lazy loading and caches
        mem.search(question, scope=scope, k=K)
    wall: list[float] = []
    cpu: list[float] = []
    load_before = load_average()
    for question in questions:
        started, started_cpu = time.perf_counter(), time.thread_time()
        mem.search(question, scope=scope, k=K)
        wall.append(1000 * (time.perf_counter() - started))
        cpu.append(1000 * (time.thread_time() - started_cpu))
    return {
        "conversation": sample["sample_id"],
        "memories": len(stored),
        "questions": len(questions),
        "wall_ms": {"p50": percentile(wall, 0.5), "p95": percentile(wall, 0.95)},
        "thread_cpu_ms": {"p50": percentile(cpu, 0.5), "p95": percentile(cpu, 0.95)},
        "load_average_1min": {"start": load_before, "end": load_average()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--latency", action="store_true", help="time search alone on the largest conversation"
    )
    parser.add_argument(
        "--text-index",
        action="store_true",
        help="memsdk search ranks keywords on the text index (tantivy) as a memory past "
        "MemoryConfig.text_index_threshold does; the other rows stay on FTS5 "
        "(writes conversation_text_index.json)",
    )
    args = parser.parse_args(argv)
    path = args.shared / "data" / "locomo-dev" / "locomo_dev.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: this benchmark reads ../shared")
    samples = json.loads(path.read_text())
    started = time.perf_counter()
    load_before = load_average()
    # Search only: the weights play no part here.
    forced = {"text_index_threshold": 0} if args.text_index else {}
    config = MemoryConfig(weight_memory=False, **forced)
    if args.latency:
        largest = max(samples, key=lambda s: len(turns(s)))
        with tempfile.TemporaryDirectory() as tmp, HybridMemory.open(tmp, config=config) as mem:
            result = {"benchmark": "conversation search latency"} | latency(mem, largest)
        result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out / "conversation_latency.json", json.dumps(result).encode())
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp, HybridMemory.open(tmp, config=config) as mem:
        systems, rows = run(mem, samples)
    result = {
        "benchmark": "conversation (LoCoMo development split)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "conversations": [s["sample_id"] for s in samples],
        "k": K,
        "systems": systems,
        "context_weight_choice": context_weight_choice(rows),
        "seconds": time.perf_counter() - started,
        "load_average_1min": {"start": load_before, "end": load_average()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "conversation_text_index.json" if args.text_index else "conversation.json"
    result["text_index"] = args.text_index
    atomic_write_bytes(args.out / name, json.dumps(result, indent=1).encode())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
