"""The notepad benchmark's report: the machine it ran on, the JSON and the latency plot.

Split from ``benchmarks/notepad.py``, which measures; this module only describes and writes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _git() -> dict[str, Any] | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": head, "dirty": bool(status.strip())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def disk_bytes(directory: Path) -> int:
    """Bytes of the memory directory's files (SQL, its WAL, the index, the weights)."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews the latencies."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """The machine and software the figures were measured with."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "memsdk": package_metadata.version("memsdk"),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": load_average(),
        "git": _git(),
    }


def plot_latency(sizes: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """p50 (solid) and p95 (dashed) latency by memory size, one colour per query kind."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"path": None, "note": "matplotlib is not installed: pip install matplotlib"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [s["memory_chunks"] for s in sizes]
    for kind in sorted({kind for s in sizes for kind in s["latency"]}):
        rows = [(xi, s["latency"].get(kind)) for xi, s in zip(x, sizes, strict=True)]
        rows = [(xi, lat) for xi, lat in rows if lat is not None]
        (line,) = ax.plot([r[0] for r in rows], [r[1]["p50_ms"] for r in rows], "o-", label=kind)
        ax.plot([r[0] for r in rows], [r[1]["p95_ms"] for r in rows], "s--", color=line.get_color())
    hits = ", ".join(f"{s['memory_chunks']:,}: {s['needle_hit_rate']['overall']}" for s in sizes)
    ax.set(
        xscale="log" if max(x) > 3 * min(x) else "linear",
        xlabel="chunks in memory",
        ylabel="search latency (ms); solid p50, dashed p95",
        title=f"memsdk notepad search (k={sizes[0]['k']}); needle hit rate {hits}",
    )
    ax.set_xticks(x, labels=[f"{n:,}" for n in x])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.title.set_fontsize(9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"path": str(path)}


def _write_json(result: dict[str, Any], path: Path) -> None:
    """Atomic write: a reader of an interrupted long run never sees a half-written file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """Write ``notepad.json`` and, once a size was measured, ``notepad.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if result["sizes"]:
        result["plot"] = plot_latency(result["sizes"], out / "notepad.png")
    _write_json(result, out / "notepad.json")
