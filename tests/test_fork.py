"""A memory in a forked child (gunicorn ``--preload``, Celery's prefork pool, ``multiprocessing``
on Linux): opened again in the child, it works; the parent's open memory, inherited by the
child, refuses use there with an error that names the fix, and stays the parent's.

Before the fix the child hung forever in torch's ``layer_norm`` (the embedder): the parent had
started torch's CPU thread pool, which does not survive ``fork``. Each case runs in a
subprocess killed past a generous ceiling, so that a regression fails here instead of hanging
the suite.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CEILING_S = 300.0  # importing torch, two opens and a few trainings on a busy 2-core machine
CHILD_S = 120.0  # the child takes seconds; before the fix it never ended

SCRIPT = """
import json, multiprocessing, os, sys, time
from memsdk import HybridMemory, MemsdkError, Scope

path, report = sys.argv[1], sys.argv[2]
scope = Scope(tenant="f")
parent = HybridMemory.open(path)
parent.add("from the parent", scope=scope)
parent.flush()  # the parent has run the embedder and trained: torch's thread pool is up


def child():
    out = {}
    try:
        parent.search("parent", scope=scope)
    except MemsdkError as exc:
        out["inherited"] = str(exc)
    parent.close()  # the child's copy only: the parent's memory stays open
    with HybridMemory.open(path) as mem:
        mem.add("from the child process", scope=scope)
        mem.flush()
        out["hits"] = [h.text for h in mem.search("child process", scope=scope, k=5)]
        out["bpb"] = mem.bits_per_byte("from the child process", scope=scope)
    with open(report, "w") as f:
        json.dump(out, f)


worker = multiprocessing.get_context("fork").Process(target=child)
worker.start()
started = time.monotonic()
worker.join(float(sys.argv[3]))
child_s = time.monotonic() - started
hung = worker.is_alive()
if hung:
    worker.kill()
    worker.join()
parent.add("the parent after the fork", scope=scope)
parent.flush()
hits = [h.text for h in parent.search("parent", scope=scope, k=5)]
parent.close()
print(json.dumps({"hung": hung, "exitcode": worker.exitcode, "parent_hits": hits,
                  "child_s": child_s}))
"""


def test_a_memory_opened_in_a_forked_child_works(tmp_path, figures) -> None:
    report = tmp_path / "child.json"
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-c", SCRIPT, str(tmp_path / "m"), str(report), str(CHILD_S)],
            capture_output=True,
            text=True,
            timeout=CEILING_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fork test did not end within {CEILING_S:.0f} s")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["hung"], f"the forked child still ran after {CHILD_S:.0f} s"
    assert result["exitcode"] == 0, done.stderr
    child = json.loads(report.read_text())
    assert "from the child process" in child["hits"]
    assert "from the parent" in child["hits"]  # the same memory, seen from the child
    assert child["bpb"] > 0
    assert "is process" in child["inherited"]
    assert "Open the memory again in this process" in child["inherited"]
    # The child's close of its inherited copy left the parent's memory working.
    assert {"the parent after the fork", "from the child process"} <= set(result["parent_hits"])
    figures.record("fork_hang", child_s=result["child_s"], ceiling_s=CHILD_S)
