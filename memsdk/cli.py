"""The ``memsdk`` command line: ingest, search, query, calibrate, stats, sessions,
rebuild-index, repair, keys, and the servers (mcp, serve)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from memsdk.errors import MemsdkError
from memsdk.memory import HybridMemory
from memsdk.scope import Scope

__all__ = ["main"]


def _scope(args: argparse.Namespace) -> Scope:
    return Scope(tenant=args.tenant, user=args.user, agent=args.agent, run=args.run)


def _add_scope_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", required=True, help="scope tenant (required)")
    p.add_argument("--user", help="scope user")
    p.add_argument("--agent", help="scope agent")
    p.add_argument("--run", help="scope run")


def _memory_arg(p: argparse.ArgumentParser) -> None:
    # Only ingest makes a new memory: the other commands read or repair one, and a mistyped
    # DIR is an error (exit 2) instead of a new empty memory.
    p.add_argument("--memory", required=True, metavar="DIR", help="the memory directory")


def _cmd_ingest(args: argparse.Namespace) -> int:
    reports = []
    with HybridMemory.open(args.memory) as mem:
        scope = _scope(args)
        for path in args.paths:
            report = mem.ingest(
                path,
                scope=scope,
                follow_symlinks=args.follow_symlinks,
                progress=not (args.quiet or args.json),
            )
            reports.append({"path": path, **report.model_dump(mode="json")})
            if args.json:
                continue
            print(
                f"{path}: {report.documents} documents, {report.chunks} chunks, "
                f"{report.bytes} bytes, {report.duplicates_skipped} duplicates skipped, "
                f"{len(report.skipped)} entries skipped, {report.seconds:.1f} s"
            )
            for skipped in report.skipped:
                print(f"  skipped {skipped.source}: {skipped.reason}")
        # Ingest acknowledged the chunks once SQL held them; the background stages (vectors,
        # then the weight memory) finish here, each with its own progress bar on stderr.
        mem.flush(progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    filters = json.loads(args.filters) if args.filters else None
    with HybridMemory.open(args.memory, create=False) as mem:
        hits = mem.search(args.query, scope=_scope(args), k=args.k, filters=filters)
    if args.json:
        print(json.dumps([h.model_dump(mode="json") for h in hits], indent=2))
        return 0
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        where = f"{hit.source}:{hit.start_byte}-{hit.end_byte}"
        print(f"{rank}. [id {hit.id}] score {hit.score:.4f}  {where}")
        for line in hit.text.strip().splitlines()[: args.lines]:
            print(f"     {line[:200]}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    filters = json.loads(args.filters) if args.filters else None
    with HybridMemory.open(args.memory, create=False) as mem:
        ans = mem.query(
            args.query,
            scope=_scope(args),
            route=args.route,
            k=args.k,
            filters=filters,
            max_bytes=args.max_bytes,
        )
    if args.json:
        print(ans.model_dump_json(indent=2))
        return 0
    route = ans.route
    print(f"branch      {route.branch} ({'forced' if route.forced else route.policy + ' policy'})")
    print(f"reason      {route.reason}")
    f = route.features
    print(
        f"features    identifiers {f.identifiers}, exact hits {f.exact_hits}, similarity "
        f"{f.top_similarity:.2f} (margin {f.similarity_margin:.2f}), query {f.query_bits:.2f} "
        f"bits/byte ({f.query_bits_gain:+.2f} vs initial), unabsorbed "
        f"{f.unconsolidated_share:.0%}"
    )
    print(f"completion  {args.query}⟨{ans.completion}⟩")
    for rank, hit in enumerate(ans.passages, 1):
        first = hit.text.strip().splitlines()[0][:160] if hit.text.strip() else ""
        mark = " (exact id)" if hit.exact_match else ""
        print(f"{rank}. [id {hit.id}] score {hit.score:.4f}{mark}  {first}")
    timings = ", ".join(f"{stage} {ms:.0f}" for stage, ms in ans.timings.items())
    print(f"timings ms  {timings}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    with HybridMemory.open(args.memory, create=False) as mem:
        cal = mem.calibrate_router(scope=_scope(args), probes=args.probes, progress=not args.quiet)
    print(
        f"calibrated the router of {cal.scope} on {cal.probes} probes ({cal.needle_probes} "
        f"needles, {cal.pattern_probes} patterns) in {cal.seconds:.1f} s"
    )
    bits = ", ".join(f"{name} {value:.3f}" for name, value in cal.mean_bits.items())
    print(f"mean bits per byte of the answers: {bits}")
    print("routes: " + ", ".join(f"{b} {n}" for b, n in cal.chosen.items()))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with HybridMemory.open(args.memory, create=False) as mem:
        stats = mem.stats()
    if args.json:
        print(stats.model_dump_json(indent=2))
        return 0
    print(f"memory     {stats.path}")
    print(f"database   {stats.database} (format {stats.format_version})")
    print(f"embedder   {stats.embedder}")
    print(f"index      {stats.index_vectors} vectors, {stats.index_bytes} bytes on disk")
    if stats.index_kind == "ivf":
        print(
            f"           IVF: probes {stats.index_nprobe} of {stats.index_nlist} lists, "
            f"recall@10 {stats.index_recall:.3f} against exact search"
        )
    if stats.index_training:
        print("           an IVF layout is being trained in the background")
    keywords = {
        "sql": "SQL full-text index",
        "building": "SQL full-text index (the tantivy text index is being built)",
        "tantivy": "tantivy text index, in memory",
    }
    print(f"keywords   {keywords[stats.keyword_index]}")
    if stats.embedding_holder:
        print(f"embedding  vectors computed by process {stats.embedding_holder}")
    print(f"weights    {stats.weights_model or 'off (weight_memory=False)'}")
    for s in stats.scopes:
        print(f"scope      {s.scope}: {s.documents} documents, {s.chunks} chunks, {s.bytes} bytes")
        lags = [("vectors", s.vectors_lag), ("weights", s.weights_lag)]
        print(
            "  pending  "
            + ", ".join(
                f"{name} {lag.pending_chunks} chunks ({lag.pending_bytes} bytes)"
                for name, lag in lags
                if lag is not None
            )
        )
        if s.weights is not None:
            w = s.weights
            print(
                f"  weights  {w.bytes_absorbed} bytes absorbed in {w.steps} steps "
                f"({w.rejected_steps} rejected), through chunk {w.through_chunk_id}, "
                f"drift {w.drift:.4f}, {w.deltas} deltas of {w.delta_bytes} bytes"
            )
    return 0


def _cmd_sessions(args: argparse.Namespace) -> int:
    with HybridMemory.open(args.memory, create=False) as mem:
        if args.drop:
            if not args.tenant:
                raise ValueError("--drop needs the scope: give --tenant (and --user ...)")
            mem.reset_weights(scope=_scope(args))
            print(f"dropped the weight memory of {_scope(args)}")
        if args.compact:
            print(f"compacted the deltas of {mem.compact_weights()} scopes")
        stats = mem.stats()
    if stats.weights_model is None:
        print("this memory has no weight memory (weight_memory=False)")
        return 0
    if args.json:
        rows = [
            {"scope": s.scope.model_dump(mode="json"), **s.weights.model_dump(mode="json")}
            for s in stats.scopes
        ]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'deltas':>6} {'delta bytes':>12} {'absorbed':>12}  {'last update (UTC)':<19}  scope")
    for s in stats.scopes:
        w = s.weights
        saved = w.saved_at.strftime("%Y-%m-%d %H:%M:%S") if w.saved_at else "never"
        print(f"{w.deltas:>6} {w.delta_bytes:>12} {w.bytes_absorbed:>12}  {saved:<19}  {s.scope}")
    return 0


def _cmd_repair(args: argparse.Namespace) -> int:
    from memsdk.repair import repair

    report = repair(args.memory, progress=not args.quiet)
    for path in report.moved:
        print(f"moved aside (another history than the database): {path}")
    print(f"rebuilt the vector index of {args.memory}: {report.index_vectors} vectors")
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    with HybridMemory.open(
        args.memory, rebuild_index=True, progress=not args.quiet, create=False
    ) as mem:
        print(f"rebuilt the vector index of {mem.path}: {len(mem.notepad.index)} vectors")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from memsdk.server.keys import open_key_store

    store = open_key_store(args.memory, args.database_url)
    try:
        if args.keys_command == "create":
            scope = _scope(args)  # checks each part as any scope is checked
            key, record = store.create(scope.key(), read_only=args.read_only, label=args.label)
            mode = "read-only" if record.read_only else "read-write"
            print(key)
            print(
                f"key {record.key_id} ({mode}) for {scope}: shown once, only its hash is kept",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            records = store.list()
            if args.json:
                rows = [
                    {
                        "key_id": r.key_id,
                        "scope": dict(
                            zip(("tenant", "user", "agent", "run"), r.scope, strict=True)
                        ),
                        "read_only": r.read_only,
                        "label": r.label,
                        "created_at": r.created_at.isoformat(),
                        "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                    }
                    for r in records
                ]
                print(json.dumps(rows, indent=2))
                return 0
            if not records:
                print("no keys")
            for r in records:
                state = "revoked" if r.revoked else ("read-only" if r.read_only else "read-write")
                parts = [
                    f"{n}={v!r}"
                    for n, v in zip(("tenant", "user", "agent", "run"), r.scope, strict=True)
                    if v
                ]
                label = f"  {r.label}" if r.label else ""
                print(f"{r.key_id}  {state:<10}  {', '.join(parts)}{label}")
        else:
            record = store.revoke(args.key_id)
            print(f"revoked key {record.key_id}")
    finally:
        store.close()
    return 0


def _cmd_mcp(args: argparse.Namespace) -> int:
    from memsdk.server.mcp_tools import run_stdio

    run_stdio(
        args.memory,
        scope=_scope(args),
        allow_paths=args.allow_path or [],
        read_only=args.read_only,
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from memsdk.server.http import serve

    serve(
        args.memory,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        allow_paths=args.allow_path or [],
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memsdk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="stream files or directories into a memory")
    p.add_argument("paths", nargs="+", metavar="PATH")
    _memory_arg(p)
    _add_scope_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow symlinks that lead outside a directory (loops are still skipped)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one report per path, skipped entries included"
    )
    p.set_defaults(handler=_cmd_ingest)

    p = sub.add_parser("search", help="hybrid keyword + vector search in one scope")
    p.add_argument("query")
    _memory_arg(p)
    _add_scope_args(p)
    p.add_argument("-k", type=int, default=5, help="number of hits (default 5)")
    p.add_argument("--filters", help='metadata filter as JSON, e.g. \'{"ticket": {"gte": 4000}}\'')
    p.add_argument("--lines", type=int, default=3, help="lines of each hit to show")
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    p.set_defaults(handler=_cmd_search)

    p = sub.add_parser("query", help="routed query: notepad, weights or both, and why")
    p.add_argument("query")
    _memory_arg(p)
    _add_scope_args(p)
    p.add_argument("--route", default="auto", choices=["auto", "notepad", "weights", "both"])
    p.add_argument("-k", type=int, default=5, help="number of passages (default 5)")
    p.add_argument("--filters", help="metadata filter as JSON (as for search)")
    p.add_argument("--max-bytes", type=int, default=200, help="longest completion (default 200)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(handler=_cmd_query)

    p = sub.add_parser("calibrate", help="fit a scope's router on probes from its own data")
    _memory_arg(p)
    _add_scope_args(p)
    p.add_argument("--probes", type=int, default=200, help="probes to make (default 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_calibrate)

    p = sub.add_parser("stats", help="what a memory holds")
    _memory_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_stats)

    p = sub.add_parser("sessions", help="each scope's saved weight memory: deltas, size, age")
    _memory_arg(p)
    p.add_argument("--compact", action="store_true", help="merge each scope's deltas into one")
    p.add_argument("--drop", action="store_true", help="forget the given scope's weight memory")
    p.add_argument("--tenant", help="scope tenant (for --drop)")
    p.add_argument("--user", help="scope user")
    p.add_argument("--agent", help="scope agent")
    p.add_argument("--run", help="scope run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_sessions)

    p = sub.add_parser("rebuild-index", help="rebuild the vector index from the database")
    _memory_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_rebuild)

    p = sub.add_parser(
        "repair",
        help="keep the database, move the index, weight deltas and router policies of another "
        "history aside, rebuild the index",
    )
    _memory_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_repair)

    p = sub.add_parser("keys", help="API keys of the HTTP server: create, list, revoke")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="make a key bound to one scope (printed once)")
    _memory_arg(k)
    _add_scope_args(k)
    k.add_argument("--read-only", action="store_true", help="the key may read, never write")
    k.add_argument("--label", default="", help="a note shown by `keys list`")
    k = keys.add_parser("list", help="every key: id, scope, read-only or revoked")
    _memory_arg(k)
    k.add_argument("--json", action="store_true")
    k = keys.add_parser("revoke", help="refuse a key from now on")
    k.add_argument("key_id", help="the key id that `keys list` shows")
    _memory_arg(k)
    for k in keys.choices.values():
        k.add_argument(
            "--database-url",
            help="the memory's database when it is not the SQLite file in DIR",
        )
    p.set_defaults(handler=_cmd_keys)

    p = sub.add_parser("mcp", help="an MCP server over stdio, bound to one scope")
    p.add_argument("--memory", required=True, metavar="DIR", help="the memory directory")
    _add_scope_args(p)
    p.add_argument(
        "--allow-path",
        action="append",
        metavar="DIR",
        help="a directory ingest_path may read (repeatable; without it ingest_path refuses all)",
    )
    p.add_argument("--read-only", action="store_true", help="offer only the reading tools")
    p.set_defaults(handler=_cmd_mcp)

    p = sub.add_parser("serve", help="the HTTP API (/v1, /mcp) with per-scope API keys")
    p.add_argument("--memory", required=True, metavar="DIR", help="the memory directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        help="largest request body accepted (default 1 MiB)",
    )
    p.add_argument(
        "--allow-path",
        action="append",
        metavar="DIR",
        help="a directory /v1/ingest and ingest_path may read (repeatable; default: none)",
    )
    p.set_defaults(handler=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except json.JSONDecodeError as e:
        print(f"memsdk {args.command}: error: --filters is not valid JSON: {e}", file=sys.stderr)
        return 2
    except (MemsdkError, ValueError) as e:
        print(f"memsdk {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"memsdk {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
