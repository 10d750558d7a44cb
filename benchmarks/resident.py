"""The benchmark process's resident memory, read from Linux's /proc/self/status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["peak_above_start", "resident_kb"]


def resident_kb() -> dict[str, int]:
    """``{"VmRSS": now, "VmHWM": peak}`` of this process, in kB."""
    with open("/proc/self/status") as f:
        rows = (line.split(":", 1) for line in f)
        return {k: int(v.split()[0]) for k, v in rows if k in ("VmRSS", "VmHWM")}


def peak_above_start(action: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``action``; its seconds and how far the process's resident memory rose above where
    it started, at its peak and at the end (the peak is reset through /proc/self/clear_refs
    first)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = resident_kb()["VmRSS"]
    start = time.perf_counter()
    out = action()
    seconds = time.perf_counter() - start
    after = resident_kb()
    return out, {
        "s": round(seconds, 2),
        "peak_rss_above_start_mb": round((after["VmHWM"] - before) / 1024),
        "rss_above_start_at_end_mb": round((after["VmRSS"] - before) / 1024),
    }
