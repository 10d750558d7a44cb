"""The memsdk command line on a real memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from memsdk.cli import main


def test_ingest_search_stats_rebuild(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text(
        "".join(f"2026-11-22 req-{i:05d} GET /api/orders/{i} 200\n" for i in range(200))
    )
    memory = str(tmp_path / "memory")
    scope = ["--memory", memory, "--tenant", "acme", "--user", "u1"]

    assert main(["ingest", str(logs), *scope, "--quiet"]) == 0
    assert "1 documents" in capsys.readouterr().out

    assert main(["search", "req-00042", *scope, "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and "req-00042" in hits[0]["text"]

    assert main(["search", "orders", *scope, "--filters", '{"x": {"bad": 1}}']) == 2
    assert "unknown filter operator 'bad'" in capsys.readouterr().err
    assert main(["search", "orders", *scope, "--filters", "{nope"]) == 2
    assert "--filters is not valid JSON" in capsys.readouterr().err

    assert main(["stats", "--memory", memory]) == 0
    out = capsys.readouterr().out
    assert "tenant='acme'" in out and "1 documents" in out
    # ingest waited for both background stages, and showed a bar for each
    assert "pending  vectors 0 chunks (0 bytes), weights 0 chunks (0 bytes)" in out
    (logs / "more.log").write_text("".join(f"2026-11-23 job-{i} done\n" for i in range(99)))
    assert main(["ingest", str(logs / "more.log"), *scope]) == 0
    bars = capsys.readouterr().err
    assert "ingest" in bars and "vectors" in bars and "weights" in bars

    (tmp_path / "memory" / "notepad.faiss").unlink()
    assert main(["search", "req-00042", *scope]) == 2
    assert "memsdk rebuild-index --memory" in capsys.readouterr().err
    assert main(["rebuild-index", "--memory", memory, "--quiet"]) == 0
    assert main(["search", "req-00042", *scope, "--json"]) == 0
    assert "req-00042" in json.loads(capsys.readouterr().out.split("\n", 1)[1])[0]["text"]


def test_console_script_is_installed():
    # Beside the interpreter: `make test` runs .venv/bin/python without activating the venv.
    exe = Path(sys.executable).parent / "memsdk"
    assert exe.exists(), f"no memsdk console script at {exe}: pip install -e ."
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "rebuild-index" in out.stdout


def test_read_commands_never_create_a_memory_at_a_mistyped_path(tmp_path, capsys):
    memory = tmp_path / "memory"
    assert main(["ingest", str(_log(tmp_path)), "--memory", str(memory), "--tenant", "acme"]) == 0
    capsys.readouterr()
    typo = tmp_path / "memroy"
    scope = ["--tenant", "acme"]
    for argv in (
        ["search", "req-00042", "--memory", str(typo), *scope],
        ["query", "req-00042", "--memory", str(typo), *scope],
        ["calibrate", "--memory", str(typo), *scope, "--quiet"],
        ["stats", "--memory", str(typo)],
        ["sessions", "--memory", str(typo)],
        ["rebuild-index", "--memory", str(typo), "--quiet"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"memsdk {argv[0]}: error: no memory at {typo}: check the path" in err, err
        assert not typo.exists(), argv
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["stats", "--memory", str(empty)]) == 2
    assert "no memory at" in capsys.readouterr().err
    assert list(empty.iterdir()) == []
    assert main(["stats", "--memory", str(memory)]) == 0  # the real one still reads


def _log(tmp_path: Path) -> Path:
    log = tmp_path / "app.log"
    log.write_text("".join(f"2026-11-22 req-{i:05d} GET /api/orders/{i} 200\n" for i in range(50)))
    return log
