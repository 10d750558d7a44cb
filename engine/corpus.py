"""The training corpus: real text any Debian machine can get, split by whole files.

Sources (each optional; a missing one is reported and skipped):

============  ===================================================================
stdlib        ``/usr/lib/python3.11/**/*.py`` (the Python standard library, code)
man           ``/usr/share/man/man[1-8]/*.gz`` (English man pages, roff source)
linux-doc     ``/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz`` (Debian linux-doc-6.1)
python-doc    ``/usr/share/doc/python3.11/html/_sources/**/*.txt`` (Debian python3.11-doc)
loghub        ``<shared>/data/loghub/<System>/*.log`` (real system logs, 2k lines each)
tickets       ``<shared>/data/tickets/*.csv`` (real issue-tracker tickets)
============  ===================================================================

The split is by whole files and never changes between runs:

- held out entirely: the loghub systems in :data:`HELDOUT_SYSTEMS` and every ticket file, so the
  benchmarks have log systems and a non-log source the model never saw;
- of every other source, the files whose SHA-256 of their path (relative to the source root)
  falls in the lowest :data:`HELDOUT_PERCENT` percent, at least one file per source.

Held out means held out by content, not only by name. Debian ships many files twice under two
names (``man1/as.1.gz`` and ``man1/x86_64-linux-gnu-as.1.gz`` are the same bytes), and many more
nearly so (one page per alias, a translated page that keeps the English options). So a held-out
file is dropped from the split (listed in :attr:`Split.dropped`, used by neither side) when its
bytes equal a training file's, or when at least :data:`NEAR_DUPLICATE_SHARE` of its distinct
telling lines occur in training files. A telling line has :data:`MIN_LINE_BYTES` or more and is
in fewer than :data:`COMMON_LINE_FILES` training files: a line that many files share is the
source's boilerplate (roff preambles, licence headers), which a held-out file may fairly hold;
``gcloud_alpha_*`` pages copied from their ``gcloud_beta_*`` twins are not. The assignment stays by
path: the shipped models were trained on that side of it, and a file moved from training to
held-out would be a file they learned.

Training text is the concatenation of the training files, each preceded by a NUL byte (the
model's start-of-stream context), capped per source so that no source dominates; log files
are repeated (:data:`REPEAT`) because logs are the main use and the smallest source.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memsdk.engine.model import START_BYTE
from memsdk.files import atomic_write_bytes

__all__ = [
    "HELDOUT_SYSTEMS",
    "CorpusFile",
    "Split",
    "build_corpus",
    "copied_share",
    "long_lines",
    "split_files",
]

HELDOUT_SYSTEMS = ("BGL", "HDFS", "OpenStack")
HELDOUT_PERCENT = 5
# A held-out file with this share of its telling lines in training text is a near-copy.
NEAR_DUPLICATE_SHARE = 0.5
MIN_LINE_BYTES = 24  # shorter lines (blank, braces, ".PP", "}") say nothing about copying
COMMON_LINE_FILES = 3  # a line in this many training files is boilerplate, not copying
MAX_FILE_BYTES = 4 * 1024 * 1024
# Logs are what the weight memory streams most, but the smallest source: repeat them.
REPEAT = {"loghub": 4}


@dataclass(frozen=True)
class CorpusFile:
    source: str
    path: str  # absolute
    name: str  # relative to the source root: what the split hashes


@dataclass
class Split:
    train: list[CorpusFile] = field(default_factory=list)
    heldout: list[CorpusFile] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    # held-out by path but copied in training: (file, why), used by neither side
    dropped: list[tuple[CorpusFile, str]] = field(default_factory=list)


def _source_files(shared: Path | None) -> dict[str, tuple[Path, list[Path]]]:
    """Each source's root and its files (sorted, so the listing is stable)."""
    sources: dict[str, tuple[Path, list[Path]]] = {}
    stdlib = Path("/usr/lib/python3.11")
    sources["stdlib"] = (
        stdlib,
        [p for p in stdlib.rglob("*.py") if not {"site-packages", "dist-packages"} & set(p.parts)],
    )
    man = Path("/usr/share/man")
    sources["man"] = (man, [p for n in range(1, 9) for p in (man / f"man{n}").glob("*.gz")])
    linux = Path("/usr/share/doc/linux-doc-6.1/Documentation")
    sources["linux-doc"] = (linux, list(linux.rglob("*.rst.gz")))
    pydoc = Path("/usr/share/doc/python3.11/html/_sources")
    sources["python-doc"] = (pydoc, list(pydoc.rglob("*.txt")))
    if shared is not None:
        loghub = shared / "data" / "loghub"
        sources["loghub"] = (loghub, list(loghub.glob("*/*.log")))
        tickets = shared / "data" / "tickets"
        sources["tickets"] = (tickets, list(tickets.glob("*.csv")))
    return {
        name: (root, sorted(p for p in files if p.is_file()))
        for name, (root, files) in sources.items()
    }


def _held_out(source: str, name: str) -> bool:
    if source == "loghub":
        return name.split("/")[0] in HELDOUT_SYSTEMS
    if source == "tickets":
        return True
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def split_files(shared: Path | None) -> Split:
    """List every source file and assign it to train or held-out (see the module docstring)."""
    split = Split()
    for source, (root, paths) in _source_files(shared).items():
        if not paths:
            split.missing.append(source)
            continue
        files = [CorpusFile(source, str(p), p.relative_to(root).as_posix()) for p in paths]
        heldout = [f for f in files if _held_out(source, f.name)]
        if not heldout and source not in ("loghub", "tickets"):
            heldout = [min(files, key=lambda f: hashlib.sha256(f.name.encode()).hexdigest())]
        chosen = {f.path for f in heldout}
        split.heldout.extend(heldout)
        split.train.extend(f for f in files if f.path not in chosen)
    _drop_copies(split)
    return split


def long_lines(data: bytes) -> set[bytes]:
    """The distinct lines of ``data`` (stripped) of at least :data:`MIN_LINE_BYTES` bytes."""
    return {s for line in data.splitlines() if len(s := line.strip()) >= MIN_LINE_BYTES}


def copied_share(data: bytes, line_files: Counter[int]) -> float:
    """The share of ``data``'s telling lines that occur in training text, where ``line_files``
    counts the training files holding each long line (by hash); 0 when it has none."""
    counts = [line_files[hash(line)] for line in long_lines(data)]
    telling = [n for n in counts if n < COMMON_LINE_FILES]
    return sum(n > 0 for n in telling) / len(telling) if telling else 0.0


def _drop_copies(split: Split) -> None:
    """Move every held-out file whose content is, or nearly is, a training file's to
    ``split.dropped`` (see the module docstring). Reads every file once."""
    if not split.heldout:
        return
    seen_files: set[bytes] = set()
    line_files: Counter[int] = Counter()  # hashes, not lines: the training text is ~100 MB
    for file in split.train:
        data = read_text(file)
        seen_files.add(hashlib.sha256(data).digest())
        line_files.update(hash(line) for line in long_lines(data))
    kept = []
    for file in split.heldout:
        data = read_text(file)
        if hashlib.sha256(data).digest() in seen_files:
            split.dropped.append((file, "identical to a training file"))
        elif (share := copied_share(data, line_files)) >= NEAR_DUPLICATE_SHARE:
            split.dropped.append((file, f"{share:.0%} of its telling lines are in training files"))
        else:
            kept.append(file)
    split.heldout = kept


def read_text(file: CorpusFile) -> bytes:
    """The file's bytes, gunzipped when needed, at most :data:`MAX_FILE_BYTES`."""
    with open(file.path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        raw = gzip.GzipFile(fileobj=f) if head == b"\x1f\x8b" else f
        return raw.read(MAX_FILE_BYTES)


def _ordered(files: list[CorpusFile]) -> Iterator[CorpusFile]:
    """Files in a stable shuffled order (by hash), so a cap takes a spread of each source."""
    yield from sorted(files, key=lambda f: hashlib.sha256(f.path.encode()).hexdigest())


def build_corpus(
    out_dir: str | os.PathLike[str],
    *,
    shared: str | os.PathLike[str] | None,
    max_source_bytes: int = 24 * 1024 * 1024,
) -> dict:
    """Write ``train.bin`` (concatenated training text) and ``corpus.json`` (the split: every
    file with its source and size, held-out files listed by path) into ``out_dir``.

    Returns the ``corpus.json`` content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = split_files(Path(shared) if shared else None)
    parts: list[bytes] = []
    used: dict[str, int] = {}
    train_listing = []
    for file in _ordered(split.train):
        if used.get(file.source, 0) >= max_source_bytes:
            continue
        text = read_text(file)
        if not text:
            continue
        parts.extend([bytes([START_BYTE]) + text] * REPEAT.get(file.source, 1))
        used[file.source] = used.get(file.source, 0) + len(text)
        train_listing.append({**asdict(file), "bytes": len(text)})
    data = b"".join(parts)
    atomic_write_bytes(out_dir / "train.bin", data)
    summary = {
        "train_bytes": len(data),
        "train_bytes_by_source": used,
        "train_files": len(train_listing),
        "heldout_systems": list(HELDOUT_SYSTEMS),
        "heldout_percent": HELDOUT_PERCENT,
        "missing_sources": split.missing,
        "train": train_listing,
        "heldout": [asdict(f) for f in split.heldout],
        "dropped": [{**asdict(f), "why": why} for f, why in split.dropped],
    }
    atomic_write_bytes(out_dir / "corpus.json", json.dumps(summary, indent=1).encode())
    return summary
