"""The one progress-bar helper: every long loop that takes ``progress: bool`` uses it."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


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
