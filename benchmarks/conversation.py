"""Conversational memory: does search find the turns that answer a question about a long chat?

LoCoMo (Maharana et al., 2024) holds long two-person conversations of many sessions, weeks
apart, with questions that name the turns ("evidence") holding each answer. This script runs
the development split in ``../shared/data/locomo-dev`` (three conversations, 497 questions);
the other seven conversations are a held-out test kept outside the project, never tuned on.

Each turn is stored as an agent would store it: ``add("Speaker: text", metadata={"dia_id": ...,
"session": N, "date": "1:56 pm on 8 May, 2023"})``, one scope per conversation. Each question
then goes through ``search(question, k=10)``. Evidence recall@k is the share of a question's
evidence turns among its top k hits; MRR is the reciprocal rank of the first evidence turn.
Figures per LoCoMo category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop,
5 adversarial), with the search latency (p50, p95), for memsdk's hybrid search and, as
baselines, its keyword ranking alone (BM25) and its vector ranking alone (MiniLM + FAISS).

One JSON line goes to stdout; ``--out`` receives ``conversation.json``.

Usage::

    python benchmarks/conversation.py                  # ~10 min on 2 cores (1,800 adds)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
K = 10


def turns(sample: dict) -> list[tuple[str, dict]]:
    """A conversation's turns in order, as ``(text, metadata)`` an agent would store."""
    conv = sample["conversation"]
    out = []
    session = 1
    while f"session_{session}" in conv:
        date = conv.get(f"session_{session}_date_time", "")
        for turn in conv[f"session_{session}"]:
            text = f"{turn['speaker']}: {turn['text']}"
            out.append((text, {"dia_id": turn["dia_id"], "session": session, "date": date}))
        session += 1
    return out


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


def run(mem: HybridMemory, samples: list[dict]) -> dict[str, dict]:
    """Store every conversation, ask every question under each system, and score them."""
    rows: dict[str, list[dict]] = {"memsdk search": [], "keyword only": [], "vector only": []}
    latency: list[float] = []
    for sample in samples:
        scope = Scope(tenant="locomo", user=sample["sample_id"])
        dia_of: dict[int, str] = {}
        for text, meta in turns(sample):
            for memory_id in mem.add(text, scope=scope, metadata=meta).ids:
                dia_of[memory_id] = meta["dia_id"]
        scope_id = mem.notepad.sql.find_scope(scope.key())
        for qa in sample["qa"]:
            evidence = set(qa.get("evidence") or [])
            if not evidence:
                continue
            question = qa["question"]
            started = time.perf_counter()
            hits = [h.id for h in mem.search(question, scope=scope, k=K)]
            latency.append(1000 * (time.perf_counter() - started))
            keyword = mem.notepad.sql.keyword_search(scope_id, question, limit=K)
            vector = mem.notepad.vector_search(scope_id, mem.embedder.embed_query(question), k=K)
            ranked = {
                "memsdk search": hits,
                "keyword only": [cid for cid, _ in keyword],
                "vector only": [cid for cid, _ in vector],
            }
            for system, ids in ranked.items():
                found = [dia_of.get(cid) for cid in ids]
                first = next((r for r, d in enumerate(found, 1) if d in evidence), None)
                rows[system].append(
                    {
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
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    path = args.shared / "data" / "locomo-dev" / "locomo_dev.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: this benchmark reads ../shared")
    samples = json.loads(path.read_text())
    started = time.perf_counter()
    config = MemoryConfig(weight_memory=False)  # search only: the weights play no part here
    with tempfile.TemporaryDirectory() as tmp, HybridMemory.open(tmp, config=config) as mem:
        systems = run(mem, samples)
    result = {
        "benchmark": "conversation (LoCoMo development split)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "conversations": [s["sample_id"] for s in samples],
        "k": K,
        "systems": systems,
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "conversation.json", json.dumps(result, indent=1).encode())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
