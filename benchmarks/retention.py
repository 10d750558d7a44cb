"""Retention benchmark: does a scope's weight memory keep every source it absorbed?

Sources are text the model never trained on: the held-out streams of ``benchmarks/weights.py``
(the split of ``memsdk.engine.corpus``: three Loghub systems, BGL, HDFS and OpenStack, Python
standard library modules, man pages, issue-tracker tickets, and Linux and Python documentation
where installed) and two kinds no corpus source reads (:data:`EXTRA`: C headers and Debian
changelogs), each cut to ``--source-bytes``. Each source's last ``--tail-bytes`` are its unseen
tail; the rest is its head. The sources are taken in an order that alternates kinds.

For each retention method (``--method``, :mod:`memsdk.retention`) the benchmark measures, in a
clean child process per method (so peak RSS is the method's own):

- the bits per byte of each tail (``score_bytes`` in a fresh window, as ``bits_per_byte``
  reads it) in an empty scope, in the source's own scope (its head absorbed), and in one shared
  scope that absorbed every head in turn. Tails are never absorbed: score, then update;
- the retention curve: the first source's tail after its head and then 0, 0.1, 0.3, 1 and 3 MB
  of other held-out text (``--curve-max-mb`` stops earlier, for CPU time);
- absorb throughput (bytes/s of the shared scope), peak RSS, and the bytes on disk of the
  shared scope's weight memory (one 4-bit delta from the initial weights, as a scope saves it);
- needle, fact and pattern ``query`` answers on the ``--query-sources`` oldest sources, through
  ``HybridMemory`` (SQLite, FAISS), in a shared scope of every source and in each source's own
  scope (``--queries`` per kind, 0 skips; ``memory_bench.py``'s query makers and scoring);
- the hybrid over the whole multi-source sequence (``memory_bench.py``'s prequential
  whole-stream table, ``both`` among its branches, line by line) against ``xz -9e`` and
  ``zstd -19 --long`` on the same bytes: ``--hybrid-kb`` of each source, 0 skips.

Heads are absorbed in batches of ``--batch-bytes`` (the background worker's batch: 16 notepad
chunks of 512 bytes), each batch added to the rehearsal history only after it was absorbed.
Reference lines: ``xz -9e`` and ``zstd -19 --long`` of each tail conditioned on everything
before it (size of prefix + tail minus size of prefix). One JSON line goes to stdout; ``--out``
receives the JSON and, when matplotlib is installed, PNGs of the retention curve and of the
sources-by-method shared/own ratios.

Usage::

    python benchmarks/retention.py            # the full protocol: over an hour on 2 cores
    # as in benchmarks/README.md:
    python benchmarks/retention.py --method none,replay --source-bytes 32768 \\
        --tail-bytes 8192 --curve-max-mb 0.1
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path

import torch
from weights import COMPRESSORS, held_out_streams  # the sibling benchmark script

from memsdk.engine import TTTState, load_model, make_delta, score_bytes
from memsdk.files import atomic_write_bytes
from memsdk.retention import MemoryHistory, RetentionConfig, absorb

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "benchmarks" / "out"
# Kinds alternate, so every source is followed by text of another kind.
ORDER = (
    "logs/BGL",
    "prose/man",
    "logs/HDFS",
    "code/stdlib",
    "tickets/tickets",
    "code/c-headers",
    "logs/OpenStack",
    "prose/changelogs",
    "prose/linux-doc",
    "prose/python-doc",
)
# Text of this machine that no corpus source reads (engine/corpus.py), so never trained on:
# C headers (code of another language) and Debian package changelogs (prose).
EXTRA = {
    "code/c-headers": ("/usr/include", "**/*.h"),
    "prose/changelogs": ("/usr/share/doc", "*/changelog.Debian.gz"),
}
CURVE_MB = (0.0, 0.1, 0.3, 1.0, 3.0)
MB = 1_000_000
TARGETS = {"shared_over_own_max": 1.25, "newest_over_own_max": 1.05, "curve_3mb_over_own": 1.3}


def streams(shared: Path, size: int) -> dict[str, bytes]:
    """Name -> the first ``size`` bytes of each held-out source (whole files, concatenated)."""
    out = held_out_streams(shared, size)
    for name, (root, pattern) in EXTRA.items():
        files = sorted(Path(root).glob(pattern), key=lambda p: sha256(str(p).encode()).digest())
        parts, have = [], 0
        for path in files:
            if have >= size:
                break
            with open(path, "rb") as f:
                text = (gzip.GzipFile(fileobj=f) if path.suffix == ".gz" else f).read(size)
            parts.append(text)
            have += len(text)
        if have:
            out[name] = b"".join(parts)[:size]
    return out


def sources(shared: Path, size: int, tail: int) -> dict[str, tuple[bytes, bytes]]:
    """Name -> (head, tail) of each held-out source, in :data:`ORDER`."""
    streams_ = streams(shared, size)
    names = [n for n in ORDER if n in streams_] + sorted(set(streams_) - set(ORDER))
    return {n: (streams_[n][:-tail], streams_[n][-tail:]) for n in names}


def filler(shared: Path, names: list[str], block: int, total: int) -> bytes:
    """``total`` bytes of the other held-out sources, round robin in blocks of ``block``
    (each source's text from its start, so the first block of each is a head seen before)."""
    pool = streams(shared, max(block, total))
    parts, offsets = [], dict.fromkeys(names, 0)
    size = 0
    while size < total and any(offsets[n] < len(pool[n]) for n in names):
        for name in names:
            piece = pool[name][offsets[name] : offsets[name] + block]
            offsets[name] += block
            if piece:
                parts.append(piece)
                size += len(piece)
    return b"".join(parts)[:total]


def conditioned_bpb(prefix: bytes, data: bytes) -> dict[str, float | None]:
    """Bits per byte each compressor adds for ``data`` after ``prefix``."""
    out: dict[str, float | None] = {}
    for name, command in COMPRESSORS.items():
        if name == "gzip -9" or shutil.which(command[0]) is None:
            continue

        def size(text: bytes, command: list[str] = command) -> int:
            run = subprocess.run(command, input=text, capture_output=True, check=True)
            return len(run.stdout)

        out[name] = 8 * (size(prefix + data) - (size(prefix) if prefix else 0)) / len(data)
    return out


class Absorber:
    """One scope: a state, the history its rehearsals sample from, and its absorb time."""

    def __init__(self, model, config: RetentionConfig, batch_bytes: int) -> None:
        self.state = TTTState(model, model.default_ttt)
        self.history = MemoryHistory()
        self.config = config
        self.batch_bytes = batch_bytes
        self.rng = random.Random(config.seed)
        self.seconds = 0.0
        self.bytes = 0

    def feed(self, name: str, data: bytes) -> None:
        started = time.perf_counter()
        for start in range(0, len(data), self.batch_bytes):
            batch = data[start : start + self.batch_bytes]
            absorb(
                self.state,
                batch,
                history=self.history,
                config=self.config,
                rng=self.rng,
                source=name,
            )
            self.history.add(name, batch)
        self.seconds += time.perf_counter() - started
        self.bytes += len(data)

    def score(self, tail: bytes) -> float:
        return float(score_bytes(self.state, tail)[0].mean())


def method_config(spec: str, retention: str) -> RetentionConfig:
    """``replay`` or ``replay@every_chunks=2+batch=4``: a method and its own fields, over the
    fields of ``--retention`` (JSON)."""
    fields = json.loads(retention or "{}")
    method, _, rest = spec.partition("@")
    for item in filter(None, rest.split("+")):
        key, _, value = item.partition("=")
        fields[key] = float(value) if "." in value else int(value)
    return RetentionConfig(method=method, **fields)


def run_method(args: argparse.Namespace) -> dict:
    """Every figure of one method (the child process)."""
    torch.manual_seed(0)
    model, _, _ = load_model("default")
    config = method_config(args.method, args.retention)
    data = sources(args.shared, args.source_bytes, args.tail_bytes)
    names = list(data)
    empty = TTTState(model, model.default_ttt)
    out: dict = {"retention": config.__dict__, "sources": {}}
    shared = Absorber(model, config, args.batch_bytes)
    for name in names:
        head, tail = data[name]
        own = Absorber(model, config, args.batch_bytes)
        own.feed(name, head)
        shared.feed(name, head)
        out["sources"][name] = {
            "head_bytes": len(head),
            "tail_bytes": len(tail),
            "empty": float(score_bytes(empty, tail)[0].mean()),
            "own": own.score(tail),
        }
        print(f"{args.method} {name}: {out['sources'][name]}", file=sys.stderr)
    for name in names:
        out["sources"][name]["shared"] = shared.score(data[name][1])
    out["absorb_bytes_per_s"] = shared.bytes / shared.seconds
    base = {n: w.detach().clone() for n, w in shared.state.initial_weights().items()}
    out["delta_bytes_per_scope"] = len(make_delta(shared.state, base))
    out["rehearsal_steps"] = int(shared.state.extra.get("rehearsal_steps", "0"))
    first = names[0]
    head, tail = data[first]
    curve = Absorber(model, config, args.batch_bytes)
    curve.feed(first, head)
    points = [mb for mb in CURVE_MB if mb <= args.curve_max_mb]
    more = filler(args.shared, names[1:], args.source_bytes, int(points[-1] * MB))
    out["curve"], done = {}, 0
    for mb in points:
        upto = int(mb * MB)
        for start in range(done, upto, args.source_bytes):  # one source block at a time
            block = more[start : min(start + args.source_bytes, upto)]
            curve.feed(f"other-{start // args.source_bytes % (len(names) - 1)}", block)
        done = max(done, upto)
        out["curve"][str(mb)] = curve.score(tail)
        print(f"{args.method} curve {mb} MB: {out['curve'][str(mb)]:.3f}", file=sys.stderr)
    if args.anomaly_kb and args.method.partition("@")[0] != "ewc":  # not a MemoryConfig method
        out["anomaly"] = anomaly_after_other_logs(args)
        print(f"{args.method} anomaly: {out['anomaly']}", file=sys.stderr)
    if args.queries:
        out["queries"] = queries_on_oldest(args)
    if args.hybrid_kb:
        out["hybrid_sequence"] = hybrid_sequence(args)
        print(f"{args.method} hybrid: {out['hybrid_sequence']}", file=sys.stderr)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["threads"] = torch.get_num_threads()
    return out


def anomaly_after_other_logs(args: argparse.Namespace) -> dict:
    """The AUROC of ``surprise`` for BGL's alert lines in its second half, read in a memory
    (``MemoryConfig(weights_retention=...)``, SQLite, FAISS) whose scope absorbed BGL's first
    half and then ``--anomaly-kb`` of the other held-out logs (HDFS, then OpenStack), each a
    source of its own; also with nothing after BGL, as ``memory_bench.py`` measures it."""
    from memory_bench import auroc  # the sibling benchmark script

    from memsdk import HybridMemory, MemoryConfig, Scope

    loghub = args.shared / "data" / "loghub"
    log = (loghub / "BGL" / "BGL_2k.log").read_text().splitlines(keepends=True)
    with open(loghub / "BGL" / "BGL_2k.log_structured.csv", newline="") as f:
        labels = [row["Label"] != "-" for row in csv.DictReader(f)]
    half, budget = len(log) // 2, args.anomaly_kb * 1024
    others = []
    for system in ("HDFS", "OpenStack"):
        text = (loghub / system / f"{system}_2k.log").read_text()
        lines = text.splitlines(keepends=True)
        taken = []
        while lines and budget > 0:
            taken.append(lines.pop(0))
            budget -= len(taken[-1].encode())
        others.append((system, taken))
    method = args.method.partition("@")[0]
    out: dict = {"lines": len(log) - half, "alerts": sum(labels[half:])}
    with tempfile.TemporaryDirectory() as folder:
        config = MemoryConfig(weights_retention=method, max_score_bytes=256 << 10)
        with HybridMemory.open(folder, config=config) as mem:
            scope = Scope(tenant="anomaly", user="bgl")
            mem.ingest(log[:half], scope=scope, name="BGL first half")
            mem.flush()
            for when in ("alone", "after_other_logs"):
                if when == "after_other_logs":
                    for system, lines in others:
                        mem.ingest(lines, scope=scope, name=system)
                    mem.flush()
                    out["other_log_bytes"] = sum(len("".join(x).encode()) for _, x in others)
                surprise = mem.surprise("".join(log[half:]), scope=scope)
                # novelty (the letters' bits) is the documented anomaly score; the mean over
                # every byte is kept beside it (benchmarks/anomaly_score.py chose between them)
                for key, field in (("", "novelty"), ("_bits_per_byte", "bits_per_byte")):
                    scores = [getattr(line, field) for line in surprise.lines]
                    out[f"auroc_{when}{key}"] = auroc(scores, labels[half:])
    return out


def _lines(data: bytes) -> list[str]:
    """``data`` as whole lines (a partial last line dropped)."""
    data = data[: data.rfind(b"\n") + 1]
    return data.decode("utf-8", "surrogateescape").splitlines(keepends=True)


def queries_on_oldest(args: argparse.Namespace) -> dict:
    """Needle, fact and pattern ``query`` answers on the ``--query-sources`` oldest sources, in a
    memory (``MemoryConfig(weights_retention=...)``, SQLite, FAISS): in one shared scope that
    ingested every source's head (whole lines, each source by its name, facts inserted) and in
    each source's own scope. Queries and scoring are ``memory_bench.py``'s (``build_queries``,
    ``score_queries``): per kind and branch, the answers' mean bits per byte and exact match."""
    from memory_bench import build_queries, insert_facts, score_queries  # sibling script

    from memsdk import HybridMemory, MemoryConfig, Scope

    data = sources(args.shared, args.source_bytes, args.tail_bytes)
    method = args.method.partition("@")[0]
    parts = {}
    for name, (head, tail) in data.items():
        rng = random.Random(f"{args.seed}:{name}")
        ingested, facts = insert_facts(_lines(head), args.facts, rng)
        parts[name] = (ingested, _lines(tail), facts)
    oldest = list(data)[: args.query_sources]
    stored = [line for ingested, _, _ in parts.values() for line in ingested]
    out: dict = {"per_kind": args.queries, "facts": args.facts, "sources": {}}
    config = MemoryConfig(weights_retention=method)
    with tempfile.TemporaryDirectory() as folder, HybridMemory.open(folder, config=config) as mem:
        shared = Scope(tenant="retention", user="shared")
        for name, (ingested, _, _) in parts.items():
            mem.ingest(ingested, scope=shared, name=name)
        for name in oldest:
            mem.ingest(parts[name][0], scope=Scope(tenant="retention", user=_user(name)), name=name)
        mem.flush()
        for name in oldest:
            ingested, rest, facts = parts[name]
            row = out["sources"][name] = {}
            for where, scope, everything in (
                ("shared", shared, stored),
                ("own", Scope(tenant="retention", user=_user(name)), ingested),
            ):
                queries = build_queries(
                    mem, scope, ingested, rest, facts, args.queries, args.seed, name, everything
                )
                row[where] = _per_kind(score_queries(mem, scope, queries))
                print(f"{method} queries {name} {where}: {row[where]}", file=sys.stderr)
    return out


def _user(name: str) -> str:
    return "own-" + name.replace("/", "-")


def _per_kind(rows: list[dict]) -> dict:
    """Per query kind: how many, and per branch the mean bits per byte and exact match."""
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        out[kind] = {"queries": len(mine)}
        for branch in mine[0]["bits"]:
            out[kind][branch] = {
                "bits_per_byte": sum(r["bits"][branch] for r in mine) / len(mine),
                "exact_match": sum(r["exact"][branch] for r in mine) / len(mine),
            }
    return out


def hybrid_sequence(args: argparse.Namespace) -> dict:
    """``memory_bench.py``'s whole-stream table (``prequential``: every branch, the hybrid
    ``both`` among them, line by line, each line scored before anything learns or stores it)
    over the multi-source sequence: the first ``--hybrid-kb`` of every source (whole lines),
    in order, beside ``xz -9e`` and ``zstd -19 --long`` on the same bytes. The fast weights of
    ``weights`` and ``both`` absorb each line under its source with the method's retention
    (slots: one per source, read by their mixture)."""
    from memory_bench import prequential  # the sibling benchmark script

    from memsdk import HybridMemory, MemoryConfig

    data = sources(args.shared, args.source_bytes, args.tail_bytes)
    each = args.hybrid_kb * 1024
    pieces = {name: _lines((head + tail)[:each]) for name, (head, tail) in data.items()}
    lines = [line for piece in pieces.values() for line in piece]
    names = [name for name, piece in pieces.items() for _ in piece]
    config = MemoryConfig(weights_retention=args.method.partition("@")[0])
    with tempfile.TemporaryDirectory() as folder, HybridMemory.open(folder, config=config) as mem:
        out = prequential(mem, lines, "sequence", sources=names)
    out["bytes"] = sum(len(line.encode("utf-8", "surrogateescape")) for line in lines)
    out["sources"] = list(data)
    return out


def references(args: argparse.Namespace) -> dict:
    """Compressor lines: own (head then tail), shared (every head then tail), curve."""
    data = sources(args.shared, args.source_bytes, args.tail_bytes)
    names = list(data)
    heads = b"".join(head for head, _ in data.values())
    out: dict = {"sources": {}, "curve": {}}
    for name, (head, tail) in data.items():
        out["sources"][name] = {
            "own": conditioned_bpb(head, tail),
            "shared": conditioned_bpb(heads, tail),
        }
    head, tail = data[names[0]]
    points = [mb for mb in CURVE_MB if mb <= args.curve_max_mb]
    more = filler(args.shared, names[1:], args.source_bytes, int(points[-1] * MB))
    for mb in points:
        out["curve"][str(mb)] = conditioned_bpb(head + more[: int(mb * MB)], tail)
    return out


def summarize(method: dict) -> dict:
    """Ratios against the own-scope figures, and the issue's targets."""
    rows = method["sources"]
    ratios = {n: r["shared"] / r["own"] for n, r in rows.items()}
    newest = list(rows)[-1]
    first = next(iter(rows))
    curve = method["curve"]
    last_mb = max(curve, key=float)
    out = {
        "shared_over_own": ratios,
        "worst_shared_over_own": max(ratios.values()),
        "newest_shared_over_own": ratios[newest],
        "curve_last_mb": float(last_mb),
        "curve_last_over_own": curve[last_mb] / rows[first]["own"],
    }
    out["targets_met"] = {
        "shared_over_own": out["worst_shared_over_own"] <= TARGETS["shared_over_own_max"],
        "newest": out["newest_shared_over_own"] <= TARGETS["newest_over_own_max"],
        "curve_3mb": float(last_mb) >= 3.0
        and out["curve_last_over_own"] <= TARGETS["curve_3mb_over_own"],
        "throughput_15kBps": method["absorb_bytes_per_s"] >= 15_000,
        "peak_rss_under_2GB": method["peak_rss_mib"] < 2048,
    }
    return out


def plot(record: dict, out: Path) -> list[str]:
    """The retention curve and the sources-by-method heatmap (none without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    methods = record["methods"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, method in methods.items():
        xs = [float(mb) for mb in method["curve"]]
        ax.plot(xs, list(method["curve"].values()), marker="o", label=name)
    first = next(iter(record["references"]["sources"]))
    own = next(iter(methods.values()))["sources"][first]
    ax.axhline(own["empty"], color="grey", linestyle=":", label="empty scope")
    for label, style in (("xz -9e", "--"), ("zstd -19 --long", "-.")):
        ys = [ref.get(label) for ref in record["references"]["curve"].values()]
        if all(y is not None for y in ys):
            xs = [float(mb) for mb in record["references"]["curve"]]
            ax.plot(xs, ys, color="black", linestyle=style, linewidth=1, label=label)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel(f"MB of other sources after {first}'s head")
    ax.set_ylabel(f"{first} tail, bits per byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out / "retention_curve.png"))
    plt.close(fig)

    names = list(next(iter(methods.values()))["sources"])
    grid = [[methods[m]["summary"]["shared_over_own"][n] for m in methods] for n in names]
    fig, ax = plt.subplots(figsize=(3.5 + 1.4 * len(methods), 0.5 * len(names) + 1.5))
    # A fixed scale from 1 (no forgetting) up: a colour says how far from own scope, not how
    # the sources rank among themselves when all are within a thousandth of it.
    top = max(1.5, max(max(row) for row in grid))
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto", vmin=1.0, vmax=top)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ink = "black" if value < (1.0 + top) / 2 else "white"  # readable on light cells
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=ink, fontsize=8)
    ax.set_xticks(range(len(methods)), list(methods))
    ax.set_yticks(range(len(names)), names)
    ax.set_title("shared scope / own scope,\nbits per byte of each tail", fontsize=9)
    fig.colorbar(image)
    fig.tight_layout()
    written.append(_save(fig, out / "retention_heatmap.png"))
    plt.close(fig)
    return written


def _save(fig, path: Path) -> str:
    partial = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(partial, dpi=110)
    os.replace(partial, path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--method",
        default="none,replay",
        help="comma-separated methods, each with optional fields: replay@every_chunks=2+batch=4",
    )
    parser.add_argument(
        "--retention", default="", help="JSON of RetentionConfig fields (e.g. '{\"batch\": 4}')"
    )
    parser.add_argument("--source-bytes", type=int, default=81920)
    parser.add_argument("--tail-bytes", type=int, default=16384)
    parser.add_argument("--batch-bytes", type=int, default=8192)
    parser.add_argument("--curve-max-mb", type=float, default=3.0)
    parser.add_argument(
        "--anomaly-kb",
        type=int,
        default=512,
        help="other logs after BGL's first half before its alerts are scored (0: skip)",
    )
    parser.add_argument(
        "--queries", type=int, default=12, help="queries per kind on the oldest sources (0: skip)"
    )
    parser.add_argument("--query-sources", type=int, default=2)
    parser.add_argument("--facts", type=int, default=12, help="facts inserted per source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hybrid-kb",
        type=int,
        default=16,
        help="kB of each source in the prequential hybrid sequence (0: skip)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_method(args)))
        return 0

    methods = {}
    for method in args.method.split(","):
        child = [sys.executable, __file__, "--child", "--method", method]
        for flag, value in (
            ("--shared", args.shared),
            ("--retention", args.retention),
            ("--source-bytes", args.source_bytes),
            ("--tail-bytes", args.tail_bytes),
            ("--batch-bytes", args.batch_bytes),
            ("--curve-max-mb", args.curve_max_mb),
            ("--anomaly-kb", args.anomaly_kb),
            ("--queries", args.queries),
            ("--query-sources", args.query_sources),
            ("--facts", args.facts),
            ("--seed", args.seed),
            ("--hybrid-kb", args.hybrid_kb),
        ):
            child += [flag, str(value)]
        result = subprocess.run(child, stdout=subprocess.PIPE, check=True)
        methods[method] = json.loads(result.stdout.decode().strip().splitlines()[-1])
        methods[method]["summary"] = summarize(methods[method])
    record = {
        "benchmark": "retention",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
        },
        "args": {k: str(v) for k, v in vars(args).items() if k != "child"},
        "methods": methods,
        "references": references(args),
        "targets": TARGETS,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    record["plots"] = plot(record, args.out)
    atomic_write_bytes(args.out / "retention.json", json.dumps(record, indent=1).encode())
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
