"""The memory benchmark's queries are what its tables say they are.

A *pattern* is a line the scope never stored: one that the ingested part holds (ticket-template
boilerplate) is a *repeat*, reported apart. A *fact* query is one of the inserted facts, and a
needle never comes from a fact line, so each kind averages the queries it names.
"""

from __future__ import annotations

import random
import sys

from conftest import REPO, shared_path

from memsdk import HybridMemory, MemoryConfig, Scope

# benchmarks/ is a folder of scripts, not a package: on sys.path only while the script (and
# the sibling it imports) loads, since its kernels.py would shadow the PyPI package `kernels`.
sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import memory_bench
finally:
    sys.path.remove(str(REPO / "benchmarks"))


def test_patterns_are_never_stored_lines_and_kinds_are_counted_apart(tmp_path):
    name, source = "tickets", memory_bench.HELDOUT["tickets"]
    root = shared_path("data", source[0]).parents[2]  # ../shared, or skip
    lines = memory_bench.read_stream(root, source, 48 * 1024)
    cut = len(lines) * 3 // 4
    ingested, facts = memory_bench.insert_facts(lines[:cut], 6, random.Random(0))
    scope = Scope(tenant="bench", user=name)
    with HybridMemory.open(tmp_path / "m", config=MemoryConfig(weight_memory=False)) as mem:
        mem.ingest(ingested, scope=scope, name=name)
        queries = memory_bench.build_queries(mem, scope, ingested, lines[cut:], facts, 20, 0)
    stored = {memory_bench.normal_line(line) for line in ingested}
    kinds = {kind for kind, _, _ in queries}
    assert {"needle", "fact", "pattern", "repeat"} <= kinds
    for kind, query, answer in queries:
        line = memory_bench.normal_line(query + answer)
        if kind == "needle":  # a stored line, its answer cut at 120 characters
            assert any(s.startswith(line) for s in stored), query
        else:
            assert (line in stored) == (kind != "pattern"), (kind, query)
    assert sorted(q for k, q, _ in queries if k == "fact") == sorted(q for _, q, _ in facts)
    assert not any(q.startswith("FACT ref-") for k, q, _ in queries if k == "needle")


def test_in_one_scope_each_stream_asks_its_own_needles_and_counts_every_stream_as_stored(
    tmp_path,
):
    """``--one-scope``: needles come from the named stream's chunks only, and a line another
    stream stored is a repeat, not a pattern."""
    streams = {n: memory_bench.HELDOUT[n] for n in ("logs/HDFS", "logs/BGL")}
    root = shared_path("data", streams["logs/BGL"][0]).parents[3]  # ../shared, or skip
    parts = {}
    with HybridMemory.open(tmp_path / "m", config=MemoryConfig(weight_memory=False)) as mem:
        scope = Scope(tenant="bench", user="one-scope")
        for name, source in streams.items():
            lines = memory_bench.read_stream(root, source, 16 * 1024)
            cut = len(lines) * 3 // 4
            parts[name] = (lines[:cut], lines[cut:])
            mem.ingest(lines[:cut], scope=scope, name=name)
        # BGL's last quarter holds HDFS's lines too: a line stored by the other stream.
        borrowed = parts["logs/HDFS"][0][:5]
        rest = parts["logs/BGL"][1] + borrowed
        stored = [line for ingested, _ in parts.values() for line in ingested]
        queries = memory_bench.build_queries(
            mem, scope, parts["logs/BGL"][0], rest, [], 40, 0, source="logs/BGL", stored=stored
        )
    bgl = {memory_bench.normal_line(line) for line in parts["logs/BGL"][0]}
    needles = [q + a for k, q, a in queries if k == "needle"]
    assert needles and all(
        any(s.startswith(memory_bench.normal_line(n)) for s in bgl) for n in needles
    )
    borrowed_lines = {memory_bench.normal_line(line) for line in borrowed}
    for kind, query, answer in queries:
        if memory_bench.normal_line(query + answer) in borrowed_lines:
            assert kind == "repeat", query
