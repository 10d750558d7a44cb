"""Every example runs as written, from a clean directory, and says what it shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# What each example must print (a sign that it did its job, not just exited).
EXPECTED = {
    "quickstart.py": "ADD",
    "demo.py": "== routed query, pattern",
    "multi_tenant.py": "initech (no data): [] hits, 0 memories",
    "tail_log.py": "weight memory absorbed",
    "langchain_chain.py": "[memsdk route: ",
    "mcp_agent.py": "A: Root cause of ACME-118",
}


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(example, tmp_path):
    assert example in EXPECTED, f"add {example} to EXPECTED with what it must print"
    command = [sys.executable, str(EXAMPLES / example)]
    if example != "quickstart.py":  # the README's example writes ./agent-memory
        command += ["--memory", str(tmp_path / "memory")]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert EXPECTED[example] in run.stdout, run.stdout[-3000:]
