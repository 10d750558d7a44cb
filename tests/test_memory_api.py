"""The public API end to end on a real memory: SQLite, FAISS and the MiniLM embedder."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from memsdk import (
    AsyncHybridMemory,
    ConfigError,
    DuplicateError,
    FilterError,
    FormatError,
    HybridMemory,
    IndexCorruptedError,
    InputError,
    MemoryConfig,
    MemsdkError,
    NotFoundError,
    Scope,
)


def _consistent(mem: HybridMemory) -> None:
    """SQL and FAISS hold the same ids once the embedding stage has caught up."""
    mem.embedding.flush()
    sql_ids = np.sort(mem.notepad.sql.all_chunk_ids())
    index_ids = np.sort(mem.notepad.index.ids())
    assert sql_ids.tolist() == index_ids.tolist()


def test_lifecycle_add_search_get_update_delete_history(mem, scope):
    added = mem.add("Ticket 4812: VPN drops after sleep", scope=scope, metadata={"ticket": 4812})
    mem.add("Ticket 3100: printer on floor 2 jams", scope=scope, metadata={"ticket": 3100})
    (memory_id,) = added.ids

    hits = mem.search("VPN drops after sleep", scope=scope, k=5, filters={"ticket": {"gte": 4000}})
    assert [h.id for h in hits] == [memory_id]
    assert hits[0].metadata == {"ticket": 4812} and hits[0].source == "<add>"
    assert hits[0].similarity > 0.8 and hits[0].keyword_rank == 1 and hits[0].vector_rank == 1

    item = mem.get(memory_id, scope=scope)
    assert item.text == "Ticket 4812: VPN drops after sleep"
    assert (item.start_byte, item.end_byte) == (0, len(item.text))

    updated = mem.update(memory_id, scope=scope, text="Ticket 4812: VPN drops after hibernate")
    assert updated.text.endswith("hibernate") and updated.metadata == {"ticket": 4812}
    assert mem.search("hibernate", scope=scope, k=1)[0].id == memory_id
    mem.update(memory_id, scope=scope, metadata={"ticket": 4812, "status": "open"})

    mem.delete(memory_id, scope=scope)
    with pytest.raises(NotFoundError, match=f"memory {memory_id} not found"):
        mem.get(memory_id, scope=scope)
    events = mem.history(memory_id, scope=scope)
    assert [e.event for e in events] == ["ADD", "UPDATE", "UPDATE", "DELETE"]
    assert events[0].new_text == "Ticket 4812: VPN drops after sleep"
    assert events[1].old_text == events[0].new_text
    assert events[1].new_text == "Ticket 4812: VPN drops after hibernate"
    assert events[2].new_metadata == {"ticket": 4812, "status": "open"}
    assert events[3].old_text == "Ticket 4812: VPN drops after hibernate"
    assert [h.text for h in mem.get_all(scope=scope)] == ["Ticket 3100: printer on floor 2 jams"]
    _consistent(mem)


def test_ingest_file_directory_fileobj_and_iterable(mem, scope, tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    text = "".join(
        f"2026-11-0{i % 9 + 1} host{i} sshd: session opened for user{i}\n" for i in range(60)
    )
    (docs / "a.log").write_text(text)
    (docs / "sub" / "b.txt").write_text("notes about the quarterly audit\n" * 3)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    (docs / ".hidden").write_text("never ingested\n")

    report = mem.ingest(docs, scope=scope, metadata={"kind": "docs"})
    assert report.documents == 2 and report.chunks > 2
    assert report.bytes == len(text) + len("notes about the quarterly audit\n") * 3
    reasons = {Path(s.source).name: s.reason for s in report.skipped}
    assert reasons == {
        ".hidden": "hidden (the name starts with '.')",
        "blob.bin": "binary (NUL bytes)",
        "empty.txt": "empty",
    }

    items = mem.get_all(scope=scope, filters={"kind": "docs"}, limit=1000)
    raw = (docs / "a.log").read_bytes()
    for item in items:
        if item.source.endswith("a.log"):
            assert raw[item.start_byte : item.end_byte] == item.data
            assert item.text.endswith("\n")  # whole lines only
    assert not any("never ingested" in i.text for i in items)

    again = mem.ingest(docs / "a.log", scope=scope)
    assert again.chunks == 0 and again.documents == 0
    assert again.duplicates_skipped == sum(1 for i in items if i.source.endswith("a.log"))

    stream = io.BytesIO(b"kernel: eth0 link up\nkernel: eth0 link down\n")
    assert mem.ingest(stream, scope=scope, name="dmesg").chunks == 1
    lines = (f"worker {i} finished job {i * 7}\n" for i in range(30))
    report = mem.ingest(lines, scope=scope, name="jobs")
    assert report.chunks >= 2 and report.document_ids
    assert mem.search("worker 12 finished job 84", scope=scope, k=1)[0].source == "jobs"
    _consistent(mem)


def test_invalid_utf8_is_searchable_and_recoverable(mem, scope):
    data = b"disk error on \xff\xfe sector 77123 of sda\n"
    mem.ingest([data], scope=scope, name="kern.log")
    hit = mem.search("sector 77123", scope=scope, k=1)[0]
    assert hit.raw == data and hit.data == data and "\ufffd" in hit.text


def test_text_file_object_with_bad_bytes_names_the_fix(mem, scope, tmp_path):
    path = tmp_path / "bad.log"
    path.write_bytes(b"ok line\n" + b"\xff\xfe broken\n")
    with open(path, encoding="utf-8") as f, pytest.raises(InputError, match="binary mode"):
        mem.ingest(f, scope=scope)
    with open(path, "rb") as f:
        assert mem.ingest(f, scope=scope).chunks == 1


def test_a_huge_single_line_streams_without_reading_it_whole(memory_dir, scope, tmp_path):
    import tracemalloc

    path = tmp_path / "one-line.log"
    block = b"x" * (1 << 20)
    with open(path, "wb") as f:
        for _ in range(100):
            f.write(block)
    with HybridMemory.open(memory_dir) as mem:
        tracemalloc.start()
        report = mem.ingest(path, scope=scope)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert report.bytes == 100 << 20
    assert report.chunks == 1 and report.duplicates_skipped == (100 << 20) // (1 << 16) - 1
    assert peak < 32 << 20, f"peak Python allocation {peak / 2**20:.0f} MiB for a 100 MiB line"


def test_reopen_keeps_everything(memory_dir, scope):
    with HybridMemory.open(memory_dir) as mem:
        ids = [
            mem.add(f"fact {i}: the build server is bld-{i:03d}", scope=scope).ids[0]
            for i in range(20)
        ]
        mem.delete(ids[3], scope=scope)
        before = [(h.id, h.score) for h in mem.search("build server bld-007", scope=scope, k=5)]
    with HybridMemory.open(memory_dir) as mem:
        after = [(h.id, h.score) for h in mem.search("build server bld-007", scope=scope, k=5)]
        assert after == before and after[0][0] == ids[7]
        assert len(mem.get_all(scope=scope)) == 19
        assert [e.event for e in mem.history(ids[3], scope=scope)] == ["ADD", "DELETE"]
        _consistent(mem)


def test_scopes_are_isolated(mem):
    acme, globex = Scope(tenant="acme"), Scope(tenant="globex")
    acme_user = Scope(tenant="acme", user="u1")
    a = mem.add("the root password rotates on Mondays", scope=acme).ids[0]
    g = mem.add("the root password rotates on Mondays!", scope=globex).ids[0]
    mem.add("the root password rotates on Mondays?", scope=acme_user)

    for scope, own in ((acme, a), (globex, g)):
        hits = mem.search("root password rotates", scope=scope, k=10)
        assert [h.id for h in hits] == [own]
        assert [i.id for i in mem.get_all(scope=scope)] == [own]
    with pytest.raises(NotFoundError):
        mem.get(g, scope=acme)
    with pytest.raises(NotFoundError):
        mem.history(g, scope=acme)
    with pytest.raises(NotFoundError):
        mem.update(g, scope=acme, text="overwritten")
    with pytest.raises(NotFoundError):
        mem.delete(g, scope=acme)
    assert mem.delete_all(scope=acme) == 1
    assert mem.get(g, scope=globex).text == "the root password rotates on Mondays!"
    assert len(mem.get_all(scope=acme_user)) == 1
    _consistent(mem)


def test_unknown_scope_reads_are_empty_or_not_found(mem):
    ghost = Scope(tenant="nobody")
    assert mem.search("anything", scope=ghost) == []
    assert mem.get_all(scope=ghost) == []
    assert mem.delete_all(scope=ghost) == 0
    with pytest.raises(NotFoundError, match="not found in Scope\\(tenant='nobody'\\)"):
        mem.get(1, scope=ghost)


def test_duplicates_are_skipped_and_update_refuses_a_duplicate(mem, scope):
    first = mem.add("the same sentence", scope=scope)
    again = mem.add("the same sentence", scope=scope)
    assert again.ids == [] and again.duplicates_skipped == 1 and again.document_id is None
    other = mem.add("another sentence", scope=scope).ids[0]
    with pytest.raises(DuplicateError, match=f"memory {first.ids[0]} of this scope already"):
        mem.update(other, scope=scope, text="the same sentence")
    assert mem.get(other, scope=scope).text == "another sentence"


def test_deletes_keep_sql_and_faiss_consistent(memory_dir, scope):
    with HybridMemory.open(memory_dir) as mem:
        mem.ingest(
            (f"line {i} of the deploy log for service-{i % 7}\n" for i in range(400)), scope=scope
        )
        items = mem.get_all(scope=scope, limit=1000)
        for item in items[::3]:
            mem.delete(item.id, scope=scope)
        _consistent(mem)
        victim = items[1]
        assert victim.id in [h.id for h in mem.search(victim.text, scope=scope, k=3)]
        mem.delete(victim.id, scope=scope)
        assert victim.id not in [h.id for h in mem.search(victim.text, scope=scope, k=50)]
    with HybridMemory.open(memory_dir) as mem:
        _consistent(mem)
        assert mem.delete_all(scope=scope) == len(items) - len(items[::3]) - 1
        assert len(mem.notepad.index) == 0
        _consistent(mem)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"ticket": 4812}, {"a"}),
        ({"ticket": {"eq": 4812}}, {"a"}),
        ({"ticket": {"ne": 4812}}, {"b", "c", "d"}),
        ({"ticket": {"gt": 3100}}, {"a"}),
        ({"ticket": {"gte": 3100}}, {"a", "b"}),
        ({"ticket": {"lt": 4812}}, {"b"}),
        ({"ticket": {"lte": 4812, "gt": 0}}, {"a", "b"}),
        ({"ticket": {"in": [3100, 9999]}}, {"b"}),
        ({"ticket": {"nin": [3100]}}, {"a", "c", "d"}),
        ({"team": {"contains": "net"}}, {"a", "c"}),
        ({"team": {"icontains": "NET"}}, {"a", "c"}),
        ({"team": "network"}, {"a"}),
        ({"urgent": True}, {"c"}),
        ({"ticket": "4812"}, {"d"}),
        ({"AND": [{"team": {"contains": "net"}}, {"urgent": False}]}, {"a"}),
        ({"OR": [{"ticket": 3100}, {"urgent": True}]}, {"b", "c"}),
        ({"NOT": {"team": "network"}}, {"b", "c", "d"}),
        (
            {"or": [{"ticket": {"gte": 4000}}, {"NOT": [{"team": {"contains": "o"}}]}]},
            {"a", "b", "d"},
        ),
    ],
)
def test_filters(mem, scope, filters, expected):
    rows = {
        "a": {"ticket": 4812, "team": "network", "urgent": False},
        "b": {"ticket": 3100, "team": "print"},
        "c": {"team": "subnet ops", "urgent": True},
        "d": {"ticket": "4812"},
    }
    for name, meta in rows.items():
        mem.add(f"record {name}", scope=scope, metadata=meta)
    got = {i.text[-1] for i in mem.get_all(scope=scope, filters=filters)}
    assert got == expected
    hits = mem.search("record", scope=scope, k=10, filters=filters)
    assert {h.text[-1] for h in hits} == expected


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"ticket": {"gtx": 1}}, "unknown filter operator 'gtx' on key 'ticket': expected one of"),
        ({"ticket": {"in": 5}}, "expected a non-empty list"),
        ({"ticket": [1, 2]}, "use {'ticket': {'in': \\[...\\]}}"),
        ({"AND": {"a": 1}}, "expects a non-empty list of filters"),
        ({"ticket": {}}, "empty operator dict"),
        ({"ticket": {"gt": True}}, "booleans can only be tested with eq / ne"),
        ({"ticket": {"contains": 5}}, "expected a string"),
        ({"ticket": {"eq": {"x": 1}}}, "expected a string, number or bool"),
        ("ticket=5", "filters must be a dict"),
        ({'ti"cket': 1}, "double quote"),
        ({"ticket": 2**63}, "outside the 64-bit integers"),
        ({"ticket": {"in": [1, -(2**63) - 1]}}, "outside the 64-bit integers"),
    ],
)
def test_malformed_filters_are_clear_errors(mem, scope, filters, message):
    mem.add("something", scope=scope)
    with pytest.raises(FilterError, match=message):
        mem.search("something", scope=scope, filters=filters)
    with pytest.raises(FilterError, match=message):
        mem.get_all(scope=scope, filters=filters)


def test_bad_input_is_a_clear_error_and_changes_nothing(mem, scope, tmp_path):
    mem.add("keep me", scope=scope)
    cases = [
        (lambda: mem.add("", scope=scope), InputError, "text is empty"),
        (lambda: mem.add("   \n", scope=scope), InputError, "text is empty"),
        (lambda: mem.add(42, scope=scope), InputError, "text must be str or bytes, got int"),
        (
            lambda: mem.add("x", scope={"tenant": "acme"}),
            InputError,
            "scope must be a memsdk.Scope",
        ),
        (lambda: mem.add("x", scope=scope, metadata={"n": float("nan")}), InputError, "finite"),
        (lambda: mem.add("x", scope=scope, metadata={"s": {1, 2}}), InputError, "is a set"),
        (
            lambda: mem.add("x", scope=scope, metadata={"id": [2**64]}),
            InputError,
            r"metadata value at id\[0\] is 18446744073709551616, outside the 64-bit",
        ),
        (lambda: mem.add("x", scope=scope, metadata=["a"]), InputError, "metadata must be a dict"),
        (lambda: mem.search("", scope=scope), InputError, "query must be a non-empty string"),
        (
            lambda: mem.search("q" * 9000, scope=scope),
            InputError,
            "query is 9000 bytes, at most 8192",
        ),
        (lambda: mem.search("q", scope=scope, k=0), InputError, "k must be an int from 1 to 1000"),
        (lambda: mem.get("1", scope=scope), InputError, "memory id must be an int"),
        (lambda: mem.update(1, scope=scope), InputError, "update needs text=, metadata= or both"),
        (
            lambda: mem.ingest(tmp_path / "missing.log", scope=scope),
            NotFoundError,
            "no file or directory",
        ),
        (lambda: mem.ingest(b"raw bytes", scope=scope), InputError, "ingest got bytes"),
        (lambda: mem.ingest([b"ok", 3], scope=scope), InputError, "item 1 is a int"),
        (lambda: mem.ingest(42, scope=scope), InputError, "ingest cannot read a int"),
        (lambda: mem.get_all(scope=scope, limit=0), InputError, "limit must be an int >= 1"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    with pytest.raises(TypeError):
        mem.add("no scope")  # type: ignore[call-arg]
    assert [i.text for i in mem.get_all(scope=scope)] == ["keep me"]
    with pytest.raises(ValueError, match="tenant"):
        Scope(tenant="")
    with pytest.raises(ValueError, match="control characters"):
        Scope(tenant="a\x00b")
    odd = Scope(tenant="../../etc", user="x'; DROP TABLE chunks; --")
    assert mem.add("odd scope names are plain data", scope=odd).ids
    assert mem.get_all(scope=odd)[0].scope == odd


def test_config_from_dict_and_file(tmp_path):
    config = MemoryConfig.model_validate({"chunk_bytes": 1024})
    assert config.chunk_bytes == 1024
    (tmp_path / "c.json").write_text(json.dumps({"search_candidates": 20}))
    assert MemoryConfig.from_file(tmp_path / "c.json").search_candidates == 20
    (tmp_path / "c.toml").write_text("chunk_bytes = 256\n")
    assert MemoryConfig.from_file(tmp_path / "c.toml").chunk_bytes == 256
    (tmp_path / "bad.toml").write_text("chunk_bytez = 256\n")
    with pytest.raises(ValueError, match="chunk_bytez"):
        MemoryConfig.from_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="max_line_bytes"):
        MemoryConfig(chunk_bytes=4096, max_line_bytes=1024)


def test_memory_directory_guards(tmp_path, scope):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match=r"is not empty and has no manifest\.json"):
        HybridMemory.open(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    with pytest.raises(InputError, match="is a file"):
        HybridMemory.open(foreign / "thesis.tex")

    newer = tmp_path / "newer"
    with HybridMemory.open(newer) as mem:
        mem.add("written by this version", scope=scope)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        FormatError, match="format version 99, this memsdk reads up to version 1: upgrade"
    ):
        HybridMemory.open(newer)
    manifest["format_version"], manifest["embedder_dim"] = 1, 768
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match=r"written with embedder .* \(dim 768\)"):
        HybridMemory.open(newer)
    (newer / "manifest.json").write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        HybridMemory.open(newer)


def test_a_manifest_of_the_wrong_shape_is_a_format_error(memory_dir, scope):
    with HybridMemory.open(memory_dir) as mem:
        mem.add("written before the manifest was damaged", scope=scope)
    path = memory_dir / "manifest.json"
    good = json.loads(path.read_text())
    for field, value, expected in (
        ("database", None, "string"),
        ("database", 5, "string"),
        ("embedder_name", ["minilm"], "string"),
        ("embedder_dim", "384", "whole number"),
        ("embedder_dim", True, "whole number"),
        ("created_at", {"day": 1}, "string"),
    ):
        path.write_text(json.dumps({**good, field: value}))
        with pytest.raises(
            FormatError, match=rf'has "{field}": .*, expected a {expected}: restore the manifest'
        ):
            HybridMemory.open(memory_dir)
    path.unlink()
    path.mkdir()  # manifest.json as a directory
    with pytest.raises(FormatError, match=r"manifest\.json is a directory, not a memsdk manifest"):
        HybridMemory.open(memory_dir)
    path.rmdir()
    path.write_text(json.dumps(good))
    with HybridMemory.open(memory_dir) as mem:  # restored: nothing was lost
        assert [i.text for i in mem.get_all(scope=scope)] == [
            "written before the manifest was damaged"
        ]


def test_open_with_create_false_only_reopens(tmp_path, scope):
    missing = tmp_path / "typo"
    with pytest.raises(NotFoundError, match=f"no memory at {missing}: check the path"):
        HybridMemory.open(missing, create=False)
    with pytest.raises(NotFoundError, match="no memory at"):
        asyncio.run(AsyncHybridMemory.open(missing, create=False))
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotFoundError, match="no memory at"):
        HybridMemory.open(empty, create=False)
    assert list(empty.iterdir()) == []
    with HybridMemory.open(tmp_path / "real") as mem:
        mem.add("a fact", scope=scope)
    with HybridMemory.open(tmp_path / "real", create=False) as mem:
        assert mem.get_all(scope=scope)[0].text == "a fact"


def test_a_memory_path_must_be_text(tmp_path, scope, database):
    if database != "sqlite":
        pytest.skip("the same check on both backends; the PostgreSQL harness resolves paths first")
    with pytest.raises(InputError, match=r"holds the lone surrogate U\+D800 at index"):
        HybridMemory.open(str(tmp_path / "mem\ud800ory"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "garbage"])
def test_a_broken_index_names_the_rebuild_command_and_rebuild_recovers(memory_dir, scope, damage):
    with HybridMemory.open(memory_dir) as mem:
        mem.ingest((f"event {i}: cache node cn-{i:04d} evicted\n" for i in range(300)), scope=scope)
        expected = [h.id for h in mem.search("cache node cn-0042", scope=scope, k=3)]
    index = memory_dir / "notepad.faiss"
    blob = index.read_bytes()
    if damage == "truncate":
        index.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        index.write_bytes(blob[:-10] + bytes(b ^ 0xFF for b in blob[-10:]))
    elif damage == "delete":
        index.unlink()
    else:
        index.write_bytes(b"\x00" * 100)
    with pytest.raises(IndexCorruptedError, match=f"memsdk rebuild-index --memory {memory_dir}"):
        HybridMemory.open(memory_dir)
    with HybridMemory.open(memory_dir, rebuild_index=True) as mem:
        assert [h.id for h in mem.search("cache node cn-0042", scope=scope, k=3)] == expected
        _consistent(mem)
    with HybridMemory.open(memory_dir) as mem:
        _consistent(mem)


def test_an_index_saved_before_a_crash_catches_up_from_sql(memory_dir, scope):
    with HybridMemory.open(memory_dir) as mem:
        first = mem.add("alpha fact about the gateway", scope=scope).ids[0]
    stale = (memory_dir / "notepad.faiss").read_bytes()
    with HybridMemory.open(memory_dir) as mem:
        second = mem.add("beta fact about the load balancer", scope=scope).ids[0]
        mem.delete(first, scope=scope)
    # As if the process died after committing to SQL but before saving the index.
    (memory_dir / "notepad.faiss").write_bytes(stale)
    with HybridMemory.open(memory_dir) as mem:
        _consistent(mem)
        assert [h.id for h in mem.search("load balancer", scope=scope, k=5)] == [second]


def test_a_second_instance_sees_writes_of_the_first(memory_dir, scope):
    with HybridMemory.open(memory_dir) as writer, HybridMemory.open(memory_dir) as reader:
        memory_id = writer.add("the on-call phone is in drawer 3", scope=scope).ids[0]
        assert reader.search("where is the on-call phone", scope=scope, k=1)[0].id == memory_id
        writer.delete(memory_id, scope=scope)
        assert reader.search("where is the on-call phone", scope=scope, k=1) == []


def test_using_a_closed_memory_is_a_clear_error(memory_dir, scope):
    mem = HybridMemory.open(memory_dir)
    mem.close()
    mem.close()
    with pytest.raises(MemsdkError, match="is closed: open it again"):
        mem.add("late", scope=scope)


def test_a_process_killed_before_closing_loses_nothing_acknowledged(memory_dir):
    with HybridMemory.open(memory_dir) as mem:
        url = mem.notepad.sql.url  # SQLite or, in the PostgreSQL run, the test's database
    script = (
        "import os, sys\n"
        "from memsdk import HybridMemory, MemoryConfig, Scope\n"
        "mem = HybridMemory.open(sys.argv[1], config=MemoryConfig(database_url=sys.argv[2]))\n"
        "for i in range(5):\n"
        "    mem.add(f'fact {i}: rack r{i} holds spare disks', scope=Scope(tenant='t'))\n"
        "os._exit(9)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(memory_dir), url], timeout=300)
    assert run.returncode == 9
    with HybridMemory.open(memory_dir) as mem:
        _consistent(mem)
        assert len(mem.get_all(scope=Scope(tenant="t"))) == 5
        assert "rack r3" in mem.search("rack r3", scope=Scope(tenant="t"), k=1)[0].text


def test_identifier_spans_of_a_query():
    from memsdk.router import identifier_spans

    query = (
        "what happened to blk_-1234567. on R02-M1-N0-C:J12-U11? see /var/log/syslog; ticket 4812"
    )
    assert identifier_spans(query) == [
        "blk_-1234567",
        "R02-M1-N0-C:J12-U11",
        "/var/log/syslog",
        "4812",
    ]
    assert identifier_spans("how do I rotate logs every night?") == []


def test_a_memory_opens_only_with_the_database_it_was_made_with(memory_dir, scope):
    with HybridMemory.open(memory_dir) as mem:
        mem.add("Ticket 4812: VPN drops after sleep", scope=scope)
    elsewhere = MemoryConfig(database_url="postgresql+psycopg://ops:s3cret@db.example:5432/mem")
    with pytest.raises(ConfigError, match="keeps its records in") as raised:
        HybridMemory.open(memory_dir, config=elsewhere)
    assert "s3cret" not in str(raised.value)
    manifest = memory_dir / "manifest.json"
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**recorded, "database": "postgresql+psycopg://ops:***@db/m"}))
    with pytest.raises(ConfigError, match="keeps its records in postgresql"):
        HybridMemory.open(memory_dir)
    manifest.write_text(json.dumps(recorded))
    with HybridMemory.open(memory_dir) as mem:
        assert len(mem.get_all(scope=scope)) == 1


def test_a_query_without_identifiers_is_embedded_beside_the_keyword_side(mem, scope, monkeypatch):
    mem.add("datanode stopped sending heartbeats to the namenode", scope=scope)
    mem.add("PacketResponder 1 for block blk_-1608999687919862906 terminating", scope=scope)
    mem.embedding.flush()
    threads: list[str] = []
    embed_query = mem.embedder.embed_query

    def recording(text: str) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return embed_query(text)

    monkeypatch.setattr(mem.embedder, "embed_query", recording)
    hits = mem.search("why did the datanode stop its heartbeats", scope=scope, k=1)
    assert "heartbeats" in hits[0].text
    assert len(threads) == 1 and threads[0].startswith("memsdk-query")
    # k memories hold the query's identifier verbatim: the vectors could only reorder them.
    hits = mem.search("blk_-1608999687919862906", scope=scope, k=1)
    assert "blk_-1608999687919862906" in hits[0].text and len(threads) == 1
    hits = mem.search("blk_-1608999687919862906 and the datanode", scope=scope, k=2)
    assert len(threads) == 2 and threads[1] == threading.current_thread().name
