"""Write RELIABILITY.md from the figures the reliability tests recorded in their last run
(``benchmarks/out/reliability.json``, written by ``tests/conftest.py``).

Usage::

    make test                                  # or: pytest tests/test_crash.py tests/test_...
    python scripts/reliability_table.py        # RELIABILITY.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "benchmarks" / "out" / "reliability.json"

# (figure group, what was done, how the figures read, the test that produced them)
ROWS = [
    (
        "crash",
        "writer processes killed with SIGKILL at random points (forked, saving the index and "
        "weight deltas at every chance), each kill followed by a reopen and a full check",
        "{kills} kills over {memories} memories; {documents_acknowledged} documents "
        "acknowledged, {lost} lost; every delta file read whole, SQL and index ids equal",
        "tests/test_crash.py::test_sigkill_at_random_points_loses_no_acknowledged_write",
    ),
    (
        "concurrency_sqlite",
        "threads of one process and a second process writing and querying one SQLite memory",
        "{threads} threads + {processes} processes for {seconds:.0f} s: {writes} writes, "
        "{queries} queries answered, {errors} errors; no write lost or stored twice; the weight "
        "memory one consistent lineage",
        "tests/test_concurrency.py::test_threads_and_a_second_process_share_one_memory[sqlite]",
    ),
    (
        "concurrency_postgres",
        "the same on one PostgreSQL server (two processes sharing the database and the "
        "memory directory)",
        "{threads} threads + {processes} processes for {seconds:.0f} s: {writes} writes, "
        "{queries} queries answered, {errors} errors",
        "tests/test_concurrency.py::test_threads_and_a_second_process_share_one_memory[postgres]",
    ),
    (
        "hostile",
        "hypothesis examples tried, per property (one run of each backend adds up)",
        "text and bytes {text_and_bytes}, streams {streams}, filters {filters}, metadata "
        "{metadata}, scope names {scope_names}, forged or truncated files {forged_files}; "
        "every one a clear error or correct behaviour",
        "tests/test_hostile_input.py",
    ),
    (
        "isolation",
        "near-identical tenants probed through search, query, completion, get, history, "
        "update, delete, get_all, stats and the LangChain adapters",
        "{tenants} scopes, {probes} probes, no other tenant's data returned; each scope's fast "
        "weights equal to a state trained on its own chunks alone",
        "tests/test_isolation.py",
    ),
    (
        "disk_full",
        "ingesting into a memory on a {filesystem_mb} MB tmpfs until the disk is full, then "
        "freeing space",
        "{documents_acknowledged} documents acknowledged, {lost} lost; the failed write a "
        "StorageError, ingest goes on once space is free",
        "tests/test_limits.py::test_a_full_disk_keeps_every_committed_chunk",
    ),
    (
        "model",
        "a hypothesis state machine over the public API (add, update, delete, delete_all, "
        "reopen, LangChain upserts) against a plain dict of each scope's exact bytes",
        "{examples} examples of up to {steps_per_example} steps; after every step each scope "
        "held exactly its bytes, no scope reached another's memories, every refused call "
        "changed nothing",
        "tests/test_model_state_machine.py",
    ),
    (
        "refused_upserts",
        "LangChain upserts of an existing id refused ({kinds})",
        "{refusals} refusals; the old text, its metadata and its id kept by each",
        "tests/test_stored_data.py::test_a_refused_langchain_upsert_keeps_the_old_text",
    ),
    (
        "forged_headers",
        "weight deltas with one forged header field (parent, through_chunk_id, group size, "
        "shapes, kept counts, position, inner-loop settings)",
        "{forgeries} forgeries, each a FormatError: the memory opened, the other scope "
        "untouched, the damaged scope rebuilt from SQL",
        "tests/test_stored_data.py::test_a_forged_delta_header_is_rebuilt_from_sql",
    ),
    (
        "embedding_kill",
        "a process killed with SIGKILL while its background stage embedded an ingested real "
        "log (HDFS, Loghub), then reopened",
        "{chunks} chunks acknowledged, {pending_at_kill} still without a vector at the kill, "
        "{lost} lost; after the reopen's flush every chunk has its vector and SQL and index "
        "ids are equal",
        "tests/test_embedding_stage.py::test_a_kill_during_background_embedding_loses_nothing",
    ),
    (
        "embedding_shared",
        "two processes ingesting real logs (HDFS, BGL; Loghub) into one memory at once, each "
        "running its embedding stage",
        "{chunks} chunks, {embedded_by_first} embedded by one process and "
        "{embedded_by_second} by the other (each once, by the holder of the embedding lease); "
        "both flushes returned with every vector in SQL and in their own index",
        "tests/test_embedding_stage.py::test_two_processes_sharing_a_memory_embed_each_chunk_once",
    ),
    (
        "embedding_takeover",
        "the process holding a memory's embedding lease (an hour long) killed with SIGKILL "
        "while another process that had the memory open waited",
        "{chunks} chunks, {pending_at_kill} still without a vector at the kill; taken over at "
        "once (the holder was a process of this machine), {embedded} embedded by the other "
        "process, {lost} lost; SQL and index ids equal",
        "tests/test_embedding_stage.py::"
        "test_a_process_waiting_for_the_embedding_lease_takes_over_from_a_killed_holder",
    ),
    (
        "delete_all_kill",
        "a process killed with SIGKILL right after delete_all's SQL commit, then reopened",
        "the deleted scope scores its old text at {after_bits:.2f} bits per byte, an empty "
        "scope at {blank_bits:.2f} (before the delete: {learned_bits:.2f}); its router policy "
        "removed",
        "tests/test_crash.py::test_sigkill_right_after_delete_all_commits_still_resets_the_weights",
    ),
    (
        "stale_files",
        "memory.db removed, truncated to 0 bytes, or restored from an older backup",
        "each open refused with StaleFilesError until `memsdk repair`; then a new tenant under "
        "the old scope id scores the old tenant's secret at {removed_bits:.2f} bits per byte "
        "(an empty scope: {blank_bits:.2f}), and a new chunk under a reused id is found by its "
        "own vector (similarity {backup_similarity:.2f})",
        "tests/test_stored_data.py",
    ),
    (
        "regex_hang",
        "the worst inputs of the patterns memsdk applies to text (identifiers in a "
        "{query_bytes}-byte query, shapes of {line_kib} KiB lines, calibration probes, search "
        "and a routed query), each call in a subprocess killed past {ceiling_s:.0f} s",
        "{inputs} inputs, slowest {slowest_s:.2f} s",
        "tests/test_hangs.py",
    ),
    (
        "fork_hang",
        "a memory opened in a child forked (multiprocessing) after the parent ran the embedder "
        "and the weight memory; the parent's open memory inherited by the child",
        "the child added, flushed and searched in {child_s:.1f} s (it hung forever before; "
        "ceiling {ceiling_s:.0f} s); the inherited memory refused with a MemsdkError naming "
        "the fix, the parent's kept working",
        "tests/test_fork.py",
    ),
    (
        "close_race",
        "close() from one thread while 8 others call delete_all, flush, reset_weights, "
        "compact_weights, add, ingest, search and bits_per_byte",
        "{trials} trials, {calls} calls: {finished} finished, {refused} refused with a "
        "MemsdkError, {raw} raw errors, {hung} hung; every call after close() a MemsdkError",
        "tests/test_close.py::test_close_while_calls_are_in_flight",
    ),
    (
        "async_cancel",
        "an async ingest of an endless stream cancelled, another closed under it",
        "both stopped at their next block ({chunks} chunks committed before stay); nothing "
        "read after close(); asyncio.run returned (ceiling {ceiling_s:.0f} s)",
        "tests/test_close.py::test_cancelled_and_closed_async_ingests_stop",
    ),
    (
        "scopes_loaded",
        "a memory of {scopes} scopes with saved weights, reopened: flush, stats and queries "
        "of {used} scopes",
        "states loaded: none at open, after flush or after stats; {used} after using {used}",
        "tests/test_scopes.py",
    ),
    (
        "scopes_10k",
        "a memory of {scopes} scopes, each with a chunk and a saved weight delta, opened in a "
        "fresh process",
        "open {open_s:.2f} s; RSS {rss_after_open_mb} MB after open, {rss_after_flush_mb} MB "
        "after an idle poll and a flush ({flush_s:.1f} s), {rss_after_one_scope_mb} MB after "
        "using one scope; {loaded_states} state loaded (before: every state, about 0.8 MB "
        "each)",
        "benchmarks/scopes.py",
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    parser.add_argument("--commit", help="the commit the tests ran at (default: HEAD)")
    args = parser.parse_args(argv)
    figures = json.loads(args.figures.read_text())
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    )
    lines = [
        "# Reliability",
        "",
        "What memsdk survives, as measured by tests the suite runs (`make test`; the "
        "PostgreSQL rows need a server, see the README). Each figure below is the one its test "
        "recorded; `python scripts/reliability_table.py` rewrites this file from the last run.",
        "",
        f"Written {datetime.now(UTC):%Y-%m-%d} from tests run at commit {commit or 'unknown'}, "
        f"on {os.cpu_count()} CPU cores; each row gives the day its test ran.",
        "",
        "| what | figures | test |",
        "| --- | --- | --- |",
    ]
    missing = []
    for group, what, how, test in ROWS:
        values = figures.get(group)
        if values is None:
            missing.append(group)
            continue
        when = str(values.get("recorded_at", "?"))[:10]
        lines.append(f"| {what.format(**values)} | {how.format(**values)} | `{test}` ({when}) |")
    lines.append("")
    if missing:
        lines += [f"Not measured in this run: {', '.join(missing)}.", ""]
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(ROWS) - len(missing)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
