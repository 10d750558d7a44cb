"""What ingest reads from the file system, and what it lists instead.

A directory walk stays inside the directory it was given; every entry it does not read is
listed with its reason; the walk ends on loops and never opens a FIFO or a device; a directory
deeper than Python's recursion limit is walked; a stream that fails midway leaves no empty
document and no ``started`` ledger row behind.

Everything is real: symlinks, a FIFO, a Unix socket, devices, file modes. The tests run as root
on CI, and root reads a mode-000 file: where a file must be unreadable, the reader is a process
that really lacks the permission (the CLI without the capabilities that let root bypass file
modes, or a forked child that switched to the ``nobody`` user). A walk that could hang runs in
another process under a generous ceiling, so that a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import AsyncHybridMemory, HybridMemory, MemoryConfig, Scope
from memsdk.cli import main
from memsdk.sources import Skipped, first_block, resolve_sources
from memsdk.stores.sql_schema import DocumentRow, LedgerRow

SCOPE = Scope(tenant="walks")
NOTEPAD_ONLY = MemoryConfig(weight_memory=False)
NOBODY = 65534
CEILING_S = 120  # a walk that has not ended by then is taken to hang
OUTSIDE = b"OUTSIDE-SECRET-7f3a9c"  # in every file outside the walked directory


# ---- helpers ------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _without_root_file_powers() -> None:
    """``preexec_fn`` under root: drop the capabilities that let root ignore file modes from the
    bounding set, so that the program it runs has none of them and a mode-000 file refuses it."""
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def memsdk_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``memsdk ARGS`` in a new process that file modes bind, under ``CEILING_S``."""
    return subprocess.run(
        [sys.executable, "-P", "-m", "memsdk.cli", *args],
        capture_output=True,
        text=True,
        timeout=CEILING_S,
        preexec_fn=_without_root_file_powers if os.geteuid() == 0 else None,
    )


def read_in_child(
    path: Path | str, *, follow_symlinks: bool, before_reading: Callable[[], None] | None = None
) -> dict:
    """Resolve ``path`` and read every source as ingest does (``first_block`` then the rest), in
    a forked child that runs as ``nobody`` when the tests run as root, under ``CEILING_S``;
    ``before_reading`` runs in the child between the walk and the reads.

    Returns ``{"read": [[name, hex bytes], ...], "skipped": [[name, reason], ...]}``; fails the
    test when the child raises or does not end."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no torch, only the file system and memsdk.sources
        os.close(r)
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            out: dict = {"read": [], "skipped": [], "error": None}
            found = resolve_sources(path, None, follow_symlinks=follow_symlinks)
            if before_reading is not None:
                before_reading()
            for item in found:
                if isinstance(item, Skipped):
                    out["skipped"].append([item.name, item.reason])
                    continue
                opened = first_block(item, limit=1 << 20)
                if isinstance(opened, str):
                    out["skipped"].append([item.name, opened])
                    continue
                first, rest = opened
                out["read"].append([item.name, (first + b"".join(rest)).hex()])
        except BaseException:
            out = {"error": traceback.format_exc()}
        with os.fdopen(w, "wb") as f:
            f.write(json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + CEILING_S
    received = []
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the walk of {path} did not end within {CEILING_S} s")
            block = os.read(r, 1 << 16)
            if not block:
                break
            received.append(block)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    result = json.loads(b"".join(received))
    assert result["error"] is None, result["error"]
    return result


def open_tmp_dir() -> Path:
    """A fresh directory that ``nobody`` may enter (pytest's ``tmp_path`` is under a folder
    only its owner may enter), for the reading child of :func:`read_in_child`."""
    base = Path(tempfile.mkdtemp(prefix="memsdk-walk-"))
    base.chmod(0o755)
    return base


def build_issue_tree(base: Path) -> dict[str, Path]:
    """The directory of the issue: a log, ``shadow.log -> /etc/shadow``, a symlink to a file
    outside made here, ``sub/loop -> ..``, a symlink to ``/dev/zero``, a FIFO, a Unix socket
    and a mode-000 file."""
    logs, outside = base / "logs", base / "outside"
    (logs / "sub").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(OUTSIDE + b" root:$6$not-a-real-hash:19000:0:99999:7:::\n")
    app = logs / "app.log"
    app.write_text("".join(f"2026-11-22 app-{i:03d} worker started ok\n" for i in range(40)))
    (logs / "shadow.log").symlink_to("/etc/shadow")
    (logs / "secret.log").symlink_to(secret)
    (logs / "sub" / "loop").symlink_to("..")
    (logs / "zero").symlink_to("/dev/zero")
    os.mkfifo(logs / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(logs / "sock"))
    locked = logs / "locked.log"
    locked.write_text("LOCKED-LINE only its owner may read this\n")
    locked.chmod(0)
    return {"logs": logs, "app": app, "secret": secret, "locked": locked}


def outside_reason(target: str, root: Path) -> str:
    return (
        f"symlink to {target}, outside {root} (a walk stays inside the directory it was given; "
        "follow_symlinks=True or --follow-symlinks reads it)"
    )


def shadow_expected(logs: Path) -> tuple[str, str]:
    if os.path.exists("/etc/shadow"):
        return str(logs / "shadow.log"), outside_reason("/etc/shadow", logs)
    return str(logs / "shadow.log"), "broken symlink (its target does not exist)"


def all_texts(mem: HybridMemory) -> str:
    return "\n".join(i.text for i in mem.get_all(scope=SCOPE, limit=1000))


def remove_deep(top: Path) -> None:
    """Remove a tree of nested ``d`` directories bottom up (shutil.rmtree recurses once per
    level in Python 3.11 and would hit the recursion limit)."""
    chain = [top]
    while (chain[-1] / "d").is_dir():
        chain.append(chain[-1] / "d")
    for directory in reversed(chain):
        for entry in directory.iterdir():
            if not entry.is_dir():
                entry.unlink()
        directory.rmdir()


# ---- the tree of the issue ----------------------------------------------------------------------


def test_the_issue_tree_through_the_cli_reads_the_log_and_lists_every_other_entry(tmp_path):
    tree = build_issue_tree(tmp_path)
    logs = tree["logs"]
    memory = str(tmp_path / "memory")
    args = [str(logs), "--memory", memory, "--tenant", SCOPE.tenant, "--quiet"]

    done = memsdk_cli("ingest", *args, "--json")
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["path"] == str(logs)
    assert report["documents"] == 1 and report["document_ids"] == [1]
    assert report["bytes"] == tree["app"].stat().st_size
    assert sorted(map(tuple, (s.values() for s in report["skipped"]))) == sorted(
        [
            shadow_expected(logs),
            (str(logs / "secret.log"), outside_reason(str(tree["secret"]), logs)),
            (str(logs / "zero"), outside_reason("/dev/zero", logs)),
            (str(logs / "sub" / "loop"), f"symlink loop: {logs} contains it"),
            (str(logs / "pipe"), "a FIFO, not read"),
            (str(logs / "sock"), "a socket, not read"),
            (str(tree["locked"]), "unreadable (Permission denied)"),
        ]
    )

    # The text report of the same walk lists the same entries (all chunks are duplicates now).
    done = memsdk_cli("ingest", *args)
    assert done.returncode == 0, done.stderr
    assert f"{logs}: 0 documents, 0 chunks" in done.stdout
    assert "7 entries skipped" in done.stdout
    for skipped in report["skipped"]:
        assert f"  skipped {skipped['source']}: {skipped['reason']}\n" in done.stdout

    with HybridMemory.open(memory, config=NOTEPAD_ONLY) as mem:
        (scope_stats,) = mem.stats().scopes
        assert scope_stats.documents == 1
        texts = all_texts(mem)
        assert "app-039 worker started ok" in texts
        assert OUTSIDE.decode() not in texts and "LOCKED-LINE" not in texts
        assert not any(
            OUTSIDE.decode() in h.text for h in mem.search("OUTSIDE-SECRET", scope=SCOPE)
        )
        if os.access("/etc/shadow", os.R_OK):
            shadow_lines = [x for x in Path("/etc/shadow").read_text().splitlines() if len(x) > 4]
            assert not any(line in texts for line in shadow_lines)
            hits = mem.search("root", scope=SCOPE, k=20)
            assert all(h.source == str(tree["app"]) for h in hits)


def test_the_issue_tree_with_follow_symlinks_reads_outside_but_lists_loops_and_devices(tmp_path):
    tree = build_issue_tree(tmp_path)
    (tree["logs"] / "shadow.log").unlink()  # no reason to copy the machine's secrets here
    logs = tree["logs"]

    async def scenario() -> tuple:
        async with await AsyncHybridMemory.open(tmp_path / "memory", config=NOTEPAD_ONLY) as mem:
            kept_inside = await mem.ingest(logs, scope=SCOPE)
            inside_texts = all_texts(mem.sync)
            followed = await mem.ingest(logs, scope=SCOPE, follow_symlinks=True)
            return kept_inside, inside_texts, followed, all_texts(mem.sync)

    kept_inside, inside_texts, followed, texts = asyncio.run(scenario())
    assert OUTSIDE.decode() not in inside_texts
    assert {s.source: s.reason for s in kept_inside.skipped}[str(logs / "secret.log")] == (
        outside_reason(str(tree["secret"]), logs)
    )

    assert followed.documents == 1 and OUTSIDE.decode() in texts  # the secret, read once
    reasons = {s.source: s.reason for s in followed.skipped}
    assert str(tree["secret"]) not in reasons and str(logs / "secret.log") not in reasons
    assert reasons[str(logs / "sub" / "loop")] == f"symlink loop: {logs} contains it"
    assert reasons[str(logs / "zero")] == "a character device, not read"
    assert reasons[str(logs / "pipe")] == "a FIFO, not read"
    assert reasons[str(logs / "sock")] == "a socket, not read"


def test_a_file_named_directly_is_read_like_cat_and_a_fifo_named_directly_is_not_opened(tmp_path):
    tree = build_issue_tree(tmp_path)
    link = tree["logs"] / "secret.log"
    # Named directly, a symlink is followed wherever it leads, as `cat` follows it.
    with HybridMemory.open(tmp_path / "memory", config=NOTEPAD_ONLY) as mem:
        report = mem.ingest(link, scope=SCOPE)
        assert report.documents == 1 and report.skipped == []
        (item,) = mem.get_all(scope=SCOPE)
        assert item.source == str(tree["secret"]) and item.data == tree["secret"].read_bytes()
    # A FIFO or a device named directly is listed, never opened (a FIFO would block its reader
    # until a writer comes; /dev/zero never ends).
    base = open_tmp_dir()
    try:
        os.mkfifo(base / "pipe")
        (base / "zero").symlink_to("/dev/zero")
        for name, kind in [("pipe", "a FIFO"), ("zero", "a character device")]:
            result = read_in_child(base / name, follow_symlinks=False)
            assert result == {
                "read": [],
                "skipped": [
                    [str(base / name), f"{kind}, not read (pass an open file object to stream it)"]
                ],
                "error": None,
            }
    finally:
        shutil.rmtree(base)


def test_an_entry_swapped_after_the_walk_is_not_read():
    base, elsewhere = open_tmp_dir(), open_tmp_dir()
    base.chmod(0o777)  # the child, nobody under root, swaps the entries
    (elsewhere / "secret.txt").write_bytes(OUTSIDE + b"\n")
    for name in ("fifo.log", "link.log", "other.log"):
        (base / name).write_text(f"the {name} the walk listed\n")
    (base / "spare.log").write_text("another file, moved over other.log\n")

    def swap() -> None:
        (base / "fifo.log").unlink()
        os.mkfifo(base / "fifo.log")
        (base / "link.log").unlink()
        (base / "link.log").symlink_to(elsewhere / "secret.txt")
        (base / "spare.log").replace(base / "other.log")

    try:
        result = read_in_child(base, follow_symlinks=False, before_reading=swap)
    finally:
        shutil.rmtree(base)
        shutil.rmtree(elsewhere)
    assert result["read"] == []
    assert dict(result["skipped"]) == {
        str(base / "fifo.log"): "unreadable (changed after the walk listed it: now a FIFO)",
        str(base / "link.log"): "unreadable (changed after the walk listed it: now a symlink)",
        str(base / "other.log"): "unreadable (changed after the walk listed it: now another file)",
        str(base / "spare.log"): "unreadable (No such file or directory)",
    }


def test_permission_denied_files_and_directories_are_listed(tmp_path):
    logs = tmp_path / "logs"
    (logs / "closed").mkdir(parents=True)
    (logs / "open.log").write_text("a line anyone may read\n")
    (logs / "closed" / "inner.log").write_text("INNER-LINE behind a closed directory\n")
    (logs / "locked.log").write_text("LOCKED-LINE only its owner may read this\n")
    (logs / "locked.log").chmod(0)
    (logs / "closed").chmod(0)
    try:
        done = memsdk_cli(
            "ingest", str(logs), "--memory", str(tmp_path / "m"), "--tenant", "t", "--json"
        )
    finally:
        (logs / "closed").chmod(0o755)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["documents"] == 1
    assert {s["source"]: s["reason"] for s in report["skipped"]} == {
        str(logs / "locked.log"): "unreadable (Permission denied)",
        str(logs / "closed"): "unreadable directory (Permission denied)",
    }


# ---- random trees -------------------------------------------------------------------------------

KINDS = ["file", "file", "dir", "dir", "link", "link", "link", "fifo", "hidden", "empty"]
KINDS += ["locked", "closed"]
ENTRY = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 1 << 10),  # which directory holds it
    st.integers(0, 1 << 10),  # a symlink's target
    st.booleans(),  # a relative symlink
    st.text("abcdefgh \n", min_size=1, max_size=40),
)


class RandomTree:
    """A tree under ``base/root`` beside ``base/outside``; it records what each file holds and
    the kind of each entry."""

    def __init__(self, base: Path) -> None:
        self.base, self.root, outside = base, base / "root", base / "outside"
        self.root.mkdir()
        (outside / "dir").mkdir(parents=True)
        self.content: dict[str, bytes] = {}
        self.closed: list[Path] = []
        self.kinds: dict[Path, str] = {}
        for name, data in [("secret.txt", OUTSIDE + b"-1\n"), ("dir/deep.txt", OUTSIDE + b"-2\n")]:
            (outside / name).write_bytes(data)
            self.content[str(outside / name)] = data
        (outside / "back").symlink_to(self.root)  # a loop through the outside
        os.mkfifo(outside / "pipe")
        self.targets: list[Path] = [outside / n for n in ("secret.txt", "dir", "back", "pipe")]
        self.targets += [outside, Path("/dev/zero"), Path("/dev/null"), Path("/etc/passwd")]
        self.targets += [base / "missing", self.root]

    def add(self, entries: list[tuple]) -> None:
        dirs = [self.root]
        for i, (kind, where, target, relative, text) in enumerate(entries):
            parent = dirs[where % len(dirs)]
            path = parent / (f".h{i}" if kind == "hidden" else f"e{i}")
            data = text.encode()
            if kind in ("file", "hidden", "locked", "empty"):
                path.write_bytes(b"" if kind == "empty" else data)
                self.content[str(path)] = data
                if kind == "locked":
                    path.chmod(0)
            elif kind == "dir":
                path.mkdir()
                dirs.append(path)
            elif kind == "closed":
                path.mkdir()
                (path / "inner").write_bytes(data)
                self.content[str(path / "inner")] = data
                path.chmod(0)
                self.closed.append(path)
            elif kind == "fifo":
                os.mkfifo(path)
            else:
                pool = [*self.targets, path]  # the last: a symlink to itself
                aim = pool[target % len(pool)]
                path.symlink_to(os.path.relpath(aim, parent) if relative else aim)
            self.targets.append(path)
            self.kinds[path] = kind

    def remove(self) -> None:
        for path in self.closed:
            path.chmod(0o755)
        shutil.rmtree(self.base)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(entries=st.lists(ENTRY, max_size=24), follow=st.booleans())
def test_random_trees_end_never_read_outside_and_account_for_every_entry(entries, follow):
    tree = RandomTree(open_tmp_dir())
    try:
        tree.add(entries)
        check_walk(tree, read_in_child(tree.root, follow_symlinks=follow), follow=follow)
    finally:
        tree.remove()


def check_walk(tree: RandomTree, result: dict, *, follow: bool) -> None:
    """What the walk read is what the tree holds (and inside the root unless following), and
    every entry is read or listed."""
    read = {name: bytes.fromhex(data) for name, data in result["read"]}
    assert len(read) == len(result["read"]), "a file was read twice"
    skipped = dict(result["skipped"])
    assert len(skipped) == len(result["skipped"]), "an entry was listed twice"
    root = str(tree.root)

    for name, data in read.items():
        if not follow:
            assert os.path.commonpath([root, name]) == root, f"{name} is outside {root}"
        expected = tree.content.get(name)
        if expected is None:  # a system file a followed symlink led to
            assert follow and name == "/etc/passwd"
            expected = Path(name).read_bytes()
        assert data == expected
        assert OUTSIDE not in data or follow

    for path, kind in tree.kinds.items():
        if any(p.name.startswith(".") or p in tree.closed for p in path.parents):
            continue  # inside an entry that is listed as a whole
        if kind == "file":
            assert str(path) in read
        elif kind == "hidden":
            assert skipped[str(path)] == "hidden (the name starts with '.')"
        elif kind == "empty":
            assert skipped[str(path)] == "empty"
        elif kind == "locked":
            assert skipped[str(path)] == "unreadable (Permission denied)"
        elif kind == "closed":
            assert skipped[str(path)] == "unreadable directory (Permission denied)"
        elif kind == "fifo":
            assert skipped[str(path)] == "a FIFO, not read"
        elif kind == "link" and str(path) not in skipped:
            real = os.path.realpath(path)
            assert os.path.isdir(real) or real in read, f"{path} -> {real} is unaccounted for"
            if not follow:
                assert os.path.commonpath([root, real]) == root
    if not follow:
        outside = [n for n, r in skipped.items() if r.startswith("symlink to ")]
        assert all(os.path.commonpath([root, os.path.realpath(n)]) != root for n in outside)


# ---- depth and failing streams (issue 23, ingest) -----------------------------------------------


def test_a_directory_deeper_than_the_recursion_limit_is_walked(tmp_path, capsys):
    top = tmp_path / "deep"
    bottom = top
    for _ in range(1100):  # os.makedirs recurses once per level too
        bottom = bottom / "d"
    path = top
    path.mkdir()
    for _ in range(1100):
        path = path / "d"
        path.mkdir()
    (bottom / "floor.log").write_text("the floor of a 1100-deep directory\n")
    (top / "top.log").write_text("the top of a deep directory\n")
    try:
        with HybridMemory.open(tmp_path / "memory", config=NOTEPAD_ONLY) as mem:
            report = mem.ingest(top, scope=SCOPE)
            assert report.documents == 2 and report.skipped == []
            assert "floor of a 1100-deep" in all_texts(mem)
        memory = str(tmp_path / "cli-memory")
        assert main(["ingest", str(top), "--memory", memory, "--tenant", "t", "--quiet"]) == 0
        out, err = capsys.readouterr()
        assert f"{top}: 2 documents" in out and "Traceback" not in err
    finally:
        remove_deep(top)


def test_the_cli_reports_an_error_of_the_system_in_one_line(tmp_path, capsys):
    (tmp_path / "note.txt").write_text("a note\n")
    memory = tmp_path / "note.txt" / "memory"  # under a file: the system refuses it
    args = ["ingest", str(tmp_path / "note.txt"), "--memory", str(memory), "--tenant", "t"]
    assert main([*args, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err == f"memsdk ingest: error: [Errno 20] Not a directory: '{memory}'\n"


def _ledger(mem: HybridMemory) -> dict[str, tuple]:
    with mem.notepad.sql.reading() as s:
        rows = s.query(LedgerRow).all()
        return {r.source: (r.status, r.document_id, r.chunks_added, r.finished_at) for r in rows}


def _document_rows(mem: HybridMemory) -> dict[str, int]:
    with mem.notepad.sql.reading() as s:
        return {d.source: d.chunk_count for d in s.query(DocumentRow).all()}


def test_a_stream_that_fails_midway_keeps_its_batches_and_leaves_no_empty_document(tmp_path):
    config = MemoryConfig(weight_memory=False, chunk_bytes=64, embed_batch_chunks=2)
    lines = [f"2026-11-22 line {i:02d} of a stream that breaks off\n" for i in range(12)]

    def broken(after: int):
        yield from lines[:after]
        raise RuntimeError("the source broke")

    with HybridMemory.open(tmp_path / "memory", config=config) as mem:
        with pytest.raises(RuntimeError, match="the source broke"):
            mem.ingest(broken(1), scope=SCOPE, name="early")  # before any batch committed
        with pytest.raises(RuntimeError, match="the source broke"):
            mem.ingest(broken(9), scope=SCOPE, name="late")  # after some batches committed

        kept = [i for i in mem.get_all(scope=SCOPE, limit=100) if i.source == "late"]
        assert 0 < len(kept) < 9 and len(kept) % 2 == 0  # whole batches of two chunks
        assert _document_rows(mem) == {"late": len(kept)}  # no empty row for "early"
        (scope_stats,) = mem.stats().scopes
        assert scope_stats.documents == 1 and scope_stats.chunks == len(kept)
        ledger = _ledger(mem)
        assert {source: row[:3] for source, row in ledger.items()} == {
            "early": ("failed", None, 0),
            "late": ("failed", ledger["late"][1], len(kept)),
        }
        assert all(row[3] is not None for row in ledger.values())  # each closed, none "started"

        # Running the whole stream again completes the document.
        again = mem.ingest(lines, scope=SCOPE, name="late")
        assert again.duplicates_skipped == len(kept) and again.chunks == len(lines) - len(kept)
        assert {i.text for i in mem.get_all(scope=SCOPE, limit=100)} == set(lines)
