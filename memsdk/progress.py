"""The one progress-bar helper: every long loop that takes ``progress: bool`` uses it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar", "wait_showing"]


def progress_bar(
    enabled: bool, *, total: float | None, desc: str, unit: str = "it", unit_scale: bool = False
) -> Any:
    """A tqdm bar when ``enabled``, else a bar that shows nothing (same interface)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        disable=not enabled,
        dynamic_ncols=True,
        leave=True,
    )


def wait_showing(
    wait: Callable[[], None],
    lag: Callable[[], int],
    *,
    progress: bool,
    desc: str,
    interval_s: float = 0.5,
) -> None:
    """Run ``wait()`` (a stage's flush); with ``progress``, a bar in bytes shows how much of
    the stage's lag at the start (``lag()``, in bytes) is done, polled from
    another thread every ``interval_s`` while ``wait`` runs."""
    if not progress:
        wait()
        return
    total = lag()
    done = threading.Event()
    with progress_bar(True, total=total, desc=desc, unit="B", unit_scale=True) as bar:

        def poll() -> None:
            while not done.wait(interval_s):
                try:
                    bar.n = max(0, total - lag())
                    bar.refresh()
                except Exception:  # a figure missed is only a bar not moved
                    pass

        poller = threading.Thread(target=poll, name=f"memsdk-progress-{desc}", daemon=True)
        poller.start()
        try:
            wait()
        finally:
            done.set()
            poller.join()
        bar.n = total
        bar.refresh()
