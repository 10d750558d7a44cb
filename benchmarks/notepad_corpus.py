"""The corpus of the notepad benchmark (benchmarks/notepad.py): which files it ingests, in
which order.

Two streams of real text, replayed file by file in a fixed order:

- a log stream: the Loghub samples in ``../shared/data/loghub`` (12 systems, 2,000 lines each),
  then, with ``replay_mb``, that many MB of SYNTHETIC replayed logs (``log_replay.py``: the
  samples' own templates with field values resampled from the same samples), one 1 MiB file per
  system in turn, written on first use under ``benchmarks/out/log-replay``;
- a prose/code stream: the Python standard library (``.py`` files, then its text test data),
  then the plain-text files of ``/usr/share/doc``.

:func:`build_plan` interleaves them, their byte counts kept level while logs last, so every
size the benchmark grows to holds both.
"""

from __future__ import annotations

import functools
import logging
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from log_replay import ReplaySystem, load_systems, write_replay

logger = logging.getLogger("benchmarks.notepad")

LOG_STREAM = "log"
PROSE_STREAM = "prose_code"
# Larger files would overshoot a size by thousands of chunks (nodejs's all.html is 8 MB).
MAX_FILE_BYTES = 1 << 20
STDLIB_TEXT_SUFFIXES = frozenset(
    {".txt", ".rst", ".decTest", ".html", ".xml", ".json", ".cfg", ".c", ".h", ".css", ".toml"}
)
DOC_ROOT = Path("/usr/share/doc")
DOC_SUFFIXES = frozenset({"", ".md", ".txt", ".html"})
REPLAY_DIR = Path(__file__).resolve().parent / "out" / "log-replay"
REPLAY_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Source:
    """One file of the plan and the metadata its chunks carry."""

    path: Path
    stream: str  # LOG_STREAM or PROSE_STREAM: the throughput figures are per stream
    kind: str  # the source_kind metadata: log, code, text or doc
    dataset: str  # the Loghub system, "stdlib" or "usr-share-doc"
    size: int  # for a replayed file not yet written, the bytes it will hold at most
    # Set for a SYNTHETIC replayed log (log_replay.py): its seed and the samples it replays.
    replay_seed: str | None = None
    replay_loghub: Path | None = None

    def metadata(self) -> dict[str, str]:
        meta = {"source_kind": self.kind, "dataset": self.dataset, "stream": self.stream}
        return meta | ({"synthetic": "log replay"} if self.replay_seed else {})

    def materialise(self) -> None:
        """Write a replayed log's file if it is not there yet (the same bytes every time)."""
        if self.replay_seed is None or self.replay_loghub is None or self.path.exists():
            return
        system = _replay_systems(self.replay_loghub)[self.dataset.removesuffix("-replay")]
        write_replay(system, self.path, size=self.size, seed=self.replay_seed)


def _files(root: Path, suffixes: frozenset[str], *, exclude: frozenset[str]) -> list[Path]:
    """Regular files under ``root`` with one of ``suffixes``, sorted; no symlinks, no caches."""
    found = []
    for path in root.rglob("*"):
        if path.suffix not in suffixes or set(path.relative_to(root).parts) & exclude:
            continue
        if path.is_file() and not path.is_symlink():
            found.append(path)
    return sorted(found)


def log_sources(shared: Path) -> list[Source]:
    """The Loghub ``.log`` files under ``shared/data/loghub``, sorted; [] when absent."""
    root = shared / "data" / "loghub"
    paths = sorted(root.glob("*/*.log")) if root.is_dir() else []
    return [Source(p, LOG_STREAM, "log", p.parent.name, p.stat().st_size) for p in paths]


@functools.cache
def _replay_systems(loghub: Path) -> dict[str, ReplaySystem]:
    return {system.name: system for system in load_systems(loghub)}


def replay_sources(shared: Path, replay_mb: int) -> list[Source]:
    """``replay_mb`` SYNTHETIC 1 MiB log files, the Loghub systems in turn; [] without logs."""
    loghub = shared / "data" / "loghub"
    systems = sorted(p.parent.name for p in loghub.glob("*/*.log")) if loghub.is_dir() else []
    sources = []
    for i in range(replay_mb if systems else 0):
        name = systems[i % len(systems)]
        path = REPLAY_DIR / name / f"{name}_replay_{i // len(systems):04d}.log"
        seed = f"log-replay-{name}-{i // len(systems)}"
        dataset = f"{name}-replay"
        sources.append(Source(path, LOG_STREAM, "log", dataset, REPLAY_FILE_BYTES, seed, loghub))
    return sources


def prose_sources() -> list[Source]:
    """Standard-library code, then its text test data, then ``/usr/share/doc`` text files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = frozenset({"site-packages", "dist-packages", "__pycache__"})
    groups = [
        ("code", "stdlib", _files(stdlib, frozenset({".py"}), exclude=skip)),
        ("text", "stdlib", _files(stdlib, STDLIB_TEXT_SUFFIXES, exclude=skip)),
    ]
    if DOC_ROOT.is_dir():
        groups.append(("doc", "usr-share-doc", _files(DOC_ROOT, DOC_SUFFIXES, exclude=skip)))
    return [
        Source(p, PROSE_STREAM, kind, dataset, p.stat().st_size)
        for kind, dataset, paths in groups
        for p in paths
    ]


def interleave(logs: list[Source], prose: list[Source]) -> list[Source]:
    """Merge the streams file by file: the next file is a log while logs have fewer bytes."""
    plan, log_bytes, prose_bytes = [], 0, 0
    logs_left, prose_left = list(reversed(logs)), list(reversed(prose))
    while logs_left or prose_left:
        if logs_left and (log_bytes <= prose_bytes or not prose_left):
            plan.append(logs_left.pop())
            log_bytes += plan[-1].size
        else:
            plan.append(prose_left.pop())
            prose_bytes += plan[-1].size
    return plan


def build_plan(shared: Path, *, replay_mb: int = 0) -> tuple[list[Source], dict[str, Any]]:
    """The deterministic list of files to ingest (``replay_mb`` MB of replayed logs after the
    real ones), and a description of it for the JSON."""
    logs = log_sources(shared)
    replayed = replay_sources(shared, replay_mb)
    candidates = interleave(logs + replayed, prose_sources())
    plan = [s for s in candidates if 0 < s.size <= MAX_FILE_BYTES]
    info: dict[str, Any] = {
        "shared": str(shared),
        "log_files": len(logs),
        "replayed_log_files": len(replayed),
        "replayed_logs": "SYNTHETIC: the Loghub samples' templates with field values resampled "
        "from the same samples (benchmarks/log_replay.py), after the real logs"
        if replayed
        else None,
        "log_fallback": None,
        "prose_roots": [sysconfig.get_paths()["stdlib"]]
        + ([str(DOC_ROOT)] if DOC_ROOT.is_dir() else []),
        "order": "log and prose/code files interleaved, byte counts level while logs last",
        "plan_files": len(plan),
        "plan_bytes": sum(s.size for s in plan),
        "max_file_bytes": MAX_FILE_BYTES,
        "files_over_max_skipped": sum(s.size > MAX_FILE_BYTES for s in candidates),
        "man_pages": "not used (gzip-compressed troff)",
    }
    if not logs:
        info["log_fallback"] = (
            f"no Loghub logs under {shared / 'data' / 'loghub'}: only the standard library and "
            "system docs are ingested; identifier queries use Python names and hex constants"
        )
        logger.warning(info["log_fallback"])
    return plan, info
