"""No pattern memsdk applies to text can hang: the worst inputs of the router's regular
expressions, at the largest size a call accepts, each run in a subprocess that is killed
past a generous ceiling, so that a regression fails here instead of hanging the suite.

Before the fix, ``search("a_" * 26 + "a=")`` (54 bytes) took 4.8 s and each ``a_`` more
doubled it (the identifier pattern split ``a_a_...`` in exponentially many ways), and
``line_shape`` was quadratic (1.4 s on a 16 KB line without digits).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time

import pytest

# Seconds a call may take once its subprocess has imported memsdk (they take milliseconds;
# the ceiling only has to tell a linear pattern from a runaway one on a loaded machine).
CEILING_S = 20.0
IMPORT_TIMEOUT_S = 300.0  # importing torch and opening a memory on a busy 2-core machine
QUERY = 8192  # MemoryConfig.max_query_bytes: the longest query search() and query() accept
LINE = 1 << 20  # a line as long as a stored chunk can hold with max_line_bytes=1 MiB

# The calls, each timed on its own; a child process runs one group's calls after its setup.
ROUTER = "from memsdk.router import identifier_spans, line_shape, make_probes"
ROUTER_CALLS = {
    "identifier: a_a_...a= (exponential before)": (
        f"identifier_spans('a_' * {(QUERY - 2) // 2} + 'a=')"
    ),
    "identifier: a_ runs between separators": (
        f"identifier_spans(('a_' * 40 + '-') * {QUERY // 81} + '=')"
    ),
    "identifier: a run of underscores": f"identifier_spans('_' * {QUERY})",
    "identifier: a run of separators": f"identifier_spans('/.-:' * {QUERY // 4})",
    "identifier: word runs, one digit at the end": (
        f"identifier_spans('/' + 'ab.' * {QUERY // 3 - 1} + '1=')"
    ),
    "line_shape: 1 MiB without digits (quadratic before)": f"line_shape('a' * {LINE})",
    "line_shape: 1 MiB of separators": f"line_shape('-./:' * {LINE // 4})",
    "line_shape: 1 MiB, one digit at the end": f"line_shape('ab_' * {LINE // 3} + '1')",
    "make_probes on stored hostile lines (calibration)": (
        "make_probes([(1, 'a_' * 40000 + 'a= then the rest of a line ' * 3)] * 4, "
        "is_rare=lambda span: True, needles=2, patterns=2)"
    ),
}
MEMORY = (
    "import tempfile\n"
    "from memsdk import HybridMemory, MemoryConfig, Scope\n"
    "scope = Scope(tenant='t')\n"
    "mem = HybridMemory.open(tempfile.mkdtemp() + '/m', config=MemoryConfig(weight_memory=False))\n"
    "mem.add('a_a_a_a= blk_-160 R02-M1-N0-C:J12-U11 ' + 'a_' * 200 + 'a=', scope=scope)\n"
    f"query = 'a_' * {(QUERY - 2) // 2} + 'a='"
)
MEMORY_CALLS = {
    "search with the worst query": "mem.search(query, scope=scope)",
    "a routed query with the worst query": "mem.query(query, scope=scope, route='notepad')",
}

CHILD = """
import json, sys, time
exec(sys.argv[1])
print("ready", flush=True)
for call in json.loads(sys.argv[2]):
    started = time.perf_counter()
    exec(call)
    print(json.dumps(time.perf_counter() - started), flush=True)
"""

SLOWEST: dict[str, float] = {}  # seconds per call, for RELIABILITY.md


def _line(process: subprocess.Popen[str], timeout: float) -> str | None:
    """The child's next stdout line, or None if it writes none within ``timeout`` seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("setup", "calls"), [(ROUTER, ROUTER_CALLS), (MEMORY, MEMORY_CALLS)], ids=["router", "memory"]
)
def test_the_worst_inputs_end_within_the_ceiling(setup, calls, tmp_path, figures):
    process = subprocess.Popen(
        [sys.executable, "-P", "-c", CHILD, setup, json.dumps(list(calls.values()))],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _line(process, IMPORT_TIMEOUT_S)
        assert ready == "ready\n", process.stderr.read()  # type: ignore[union-attr]
        for name in calls:
            started = time.monotonic()
            done = _line(process, CEILING_S)
            if done is None:
                pytest.fail(
                    f"{name}: still running after {time.monotonic() - started:.0f} s (ceiling "
                    f"{CEILING_S:.0f} s): a pattern backtracks on this input"
                )
            assert done, f"{name}: " + process.stderr.read()  # type: ignore[union-attr]
            SLOWEST[name] = json.loads(done)
    finally:
        process.kill()
        process.wait()
    figures.record(
        "regex_hang",
        inputs=len(SLOWEST),
        slowest_s=max(SLOWEST.values()),
        ceiling_s=CEILING_S,
        query_bytes=QUERY,
        line_kib=LINE >> 10,
    )
