"""Stored data is never lost, changed or mixed up by a refused or damaged write: update keeps
the exact bytes add keeps, a refused LangChain upsert keeps the old text, a forged delta
header is rebuilt from SQL, and a memory refuses files that belong to another history."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct

import pytest
from sqlalchemy import delete, event, select

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.cli import main as cli_main
from memsdk.engine import read_delta
from memsdk.errors import DuplicateError, FormatError, InputError, StaleFilesError, StorageError
from memsdk.stores.sql import SQLStore
from memsdk.stores.sql_schema import ChunkRow, IdentityRow
from memsdk.stores.weights import WeightDeltas

NOTEPAD_ONLY = MemoryConfig(weight_memory=False)


def test_update_stores_exactly_what_add_stores(tmp_path):
    """The same input, by add or by update: the same text, raw bytes and content hash (so
    adding the update's bytes again is a duplicate, and adding other bytes is not)."""
    scope = Scope(tenant="acme")
    original = b"col1\x00col2 \xff\xfe end"
    intended = b"col1\x00col3 \xff\xfe end"
    with HybridMemory.open(tmp_path / "m", config=NOTEPAD_ONLY) as mem:
        memory_id = mem.add(original, scope=scope).ids[0]
        assert mem.get(memory_id, scope=scope).raw == original
        as_str = intended.decode("utf-8", "surrogateescape")  # "col1\x00col3 \udcff\udcfe end"
        updated = mem.update(memory_id, scope=scope, text=as_str)
        assert updated.raw == intended
        assert updated.text == "col1\ufffdcol3 \ufffd\ufffd end"
        # Bytes are taken as add() takes them.
        updated = mem.update(memory_id, scope=scope, text=original)
        assert updated.raw == original
        updated = mem.update(memory_id, scope=scope, text=intended)
        assert mem.get(memory_id, scope=scope).raw == intended
        # The content hash is the hash of the stored bytes: the same bytes are a duplicate...
        assert mem.add(intended, scope=scope).duplicates_skipped == 1
        # ...and the bytes it replaced are new again.
        again = mem.add(original, scope=scope)
        assert again.duplicates_skipped == 0 and mem.get(again.ids[0], scope=scope).raw == original
        with pytest.raises(DuplicateError):
            mem.update(memory_id, scope=scope, text=original)
        # Valid UTF-8 keeps no raw copy, by either call.
        plain = mem.update(memory_id, scope=scope, text=b"plain text")
        assert plain.raw is None and plain.text == "plain text"
        with mem.notepad.sql.reading() as s:
            stored = s.scalar(select(ChunkRow.content_hash).where(ChunkRow.id == memory_id))
        assert stored == hashlib.sha256(b"plain text").hexdigest()


def _capped(engine, pages: int):
    """Make every new connection of ``engine`` refuse to grow the SQLite file past ``pages``
    (SQLite's max_page_count: the database then fails as on a full disk)."""

    def cap(dbapi_connection, _record) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count={pages}")

    event.listen(engine, "connect", cap)
    engine.dispose()
    return cap


def test_a_refused_langchain_upsert_keeps_the_old_text(tmp_path, figures):
    """An upsert whose new text is refused (blank, NaN metadata, a copy of another text, a
    full database) leaves the old text, its metadata and its id exactly as they were."""
    pytest.importorskip("langchain_core", reason="the langchain extra")
    from memsdk.integrations.langchain import MemsdkVectorStore

    scope = Scope(tenant="lc", user="u1")
    with HybridMemory.open(tmp_path / "m", config=NOTEPAD_ONLY) as mem:
        store = MemsdkVectorStore(mem, scope=scope)
        store.add_texts(
            ["Ticket 4812: VPN drops after sleep"], metadatas=[{"ticket": 4812}], ids=["t-4812"]
        )
        store.add_texts(["Ticket 4813: printer offline"], ids=["t-4813"])
        before = store.get_by_ids(["t-4812"])
        chunks_before = sorted(i.id for i in mem.get_all(scope=scope))

        def unchanged() -> None:
            assert store.get_by_ids(["t-4812"]) == before
            assert sorted(i.id for i in mem.get_all(scope=scope)) == chunks_before
            assert [d.id for d in store.similarity_search("VPN drops after sleep", k=1)] == [
                "t-4812"
            ]

        with pytest.raises(InputError):
            store.add_texts(["   "], ids=["t-4812"])
        unchanged()
        with pytest.raises(InputError):
            store.add_texts(["Ticket 4812: fixed"], metadatas=[{"x": float("nan")}], ids=["t-4812"])
        unchanged()
        with pytest.raises(DuplicateError, match="t-4812"):
            store.add_texts(["Ticket 4813: printer offline"], ids=["t-4812"])
        unchanged()
        engine = mem.notepad.sql._write_engine
        with engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        cap = _capped(engine, pages)
        with pytest.raises(StorageError):
            store.add_texts(["Ticket 4812: " + "new words " * 20_000], ids=["t-4812"])
        event.remove(engine, "connect", cap)
        engine.dispose()
        unchanged()
        figures.record(
            "refused_upserts",
            refusals=4,
            kinds="blank text, NaN metadata, a duplicate, a full database",
        )
        # Accepted upserts replace the text, including with the same text again or a text
        # that shares chunks with the old one.
        store.add_texts(["Ticket 4812: VPN drops after sleep"], ids=["t-4812"])
        assert [d.page_content for d in store.get_by_ids(["t-4812"])] == [
            "Ticket 4812: VPN drops after sleep"
        ]
        store.add_texts(["Ticket 4812: fixed by a driver update"], ids=["t-4812"])
        assert [d.page_content for d in store.get_by_ids(["t-4812"])] == [
            "Ticket 4812: fixed by a driver update"
        ]
        assert len(mem.get_all(scope=scope)) == 2


def _forge(data: bytes, **changes: object) -> bytes:
    """``data`` (a safetensors file) with header fields replaced: a top-level field by its
    name, a field of a JSON-valued field as ``labels__parent`` or ``extra__through_chunk_id``.
    The tensors are kept as they are (their offsets are relative to the header's end)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = header["__metadata__"]
    for key, value in changes.items():
        if "__" in key:
            outer, inner = key.split("__")
            fields = json.loads(meta[outer])
            fields[inner] = value
            meta[outer] = json.dumps(fields)
        else:
            meta[key] = value
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + data[8 + size :]


FORGERIES = {
    "parent not a number": {"labels__parent": "x"},
    "parent ahead of the file": {"labels__parent": "7"},
    "through not a number": {"extra__through_chunk_id": "x"},
    "through past 64 bits": {"extra__through_chunk_id": str(10**30)},
    "through past the database": {"extra__through_chunk_id": "999"},
    "group size zero": {"group_size": "0"},
    "group size not a power of two": {"group_size": "48"},
    "huge shape": {"shapes": json.dumps({"w": [2**20, 2**20]})},
    "shape of another model": {"shapes": json.dumps({"w": [3, 3]})},
    "kept not a number": {"kept": json.dumps({"w": "x"})},
    "negative position": {"position": "-5"},
    "config of the wrong type": {"ttt_config": json.dumps({"chunk_bytes": "512"})},
    "header not an object": {"labels": "[1, 2]"},
}


@pytest.fixture(scope="module")
def weighted_memory(tmp_path_factory):
    """A memory with two scopes whose weights absorbed a few lines each, closed."""
    path = tmp_path_factory.mktemp("weighted") / "m"
    with HybridMemory.open(path) as mem:
        for tenant in ("victim", "bystander"):
            lines = "".join(f"{tenant} order {n}: shipped to depot {n % 7}\n" for n in range(40))
            mem.add(lines, scope=Scope(tenant=tenant))
        mem.flush()
    with HybridMemory.open(path) as mem:  # as saved: 4-bit deltas
        figures = {s.scope.tenant: s.weights for s in mem.stats().scopes}
        bits = {t: mem.bits_per_byte(f"{t} order 3:", scope=Scope(tenant=t)) for t in figures}
    return path, figures, bits


FORGED: set[str] = set()


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_delta_header_is_rebuilt_from_sql(
    tmp_path, weighted_memory, forgery, caplog, figures
):
    """Each forged header field is a FormatError: the memory opens, the other scope is
    untouched, and the damaged scope is rebuilt from its chunks in SQL."""
    template, saved, bits = weighted_memory
    path = tmp_path / "m"
    shutil.copytree(template, path)
    deltas = WeightDeltas(path)
    victim_id = 1
    (version,) = deltas.versions(victim_id)
    original = deltas.read(victim_id, version)
    changes = dict(FORGERIES[forgery])
    if "shapes" in changes or "kept" in changes:  # name a real fast weight
        name = next(iter(read_delta(original).packed))
        for key in ("shapes", "kept"):
            if key in changes:
                changes[key] = changes[key].replace('"w"', json.dumps(name))
    forged = _forge(original, **changes)
    if not any(key.startswith(("labels__", "extra__")) for key in changes):  # fields memsdk reads
        with pytest.raises(FormatError):
            read_delta(forged, shapes={n: p.shape for n, p in read_delta(original).packed.items()})
    deltas.write(victim_id, version, forged)
    with caplog.at_level(logging.WARNING), HybridMemory.open(path) as mem:
        victim, bystander = Scope(tenant="victim"), Scope(tenant="bystander")
        assert mem.bits_per_byte("bystander order 3:", scope=bystander) == bits["bystander"]
        mem.flush()
        rebuilt = {s.scope.tenant: s.weights for s in mem.stats().scopes}
        assert rebuilt["bystander"] == saved["bystander"]
        assert rebuilt["victim"].through_chunk_id == saved["victim"].through_chunk_id
        assert rebuilt["victim"].bytes_absorbed == saved["victim"].bytes_absorbed
        assert mem.bits_per_byte("victim order 3:", scope=victim) < 0.9 * mem.bits_per_byte(
            "victim order 3:", scope=Scope(tenant="nobody")
        )
    assert "rebuilding the weight memory of scope 1" in caplog.text
    for v in WeightDeltas(path).versions(victim_id):  # the forged file is gone
        read_delta(deltas.read(victim_id, v))
    FORGED.add(forgery)
    figures.record("forged_headers", forgeries=len(FORGED))


SECRET = "".join(f"alice secret password is hunter2{n:02d} for account {n}\n" for n in range(40))


def _alice_memory(path) -> float:
    """A memory whose first scope (alice, scope id 1) absorbed a secret; returns the bits per
    byte of the secret in a scope that holds nothing."""
    with HybridMemory.open(path) as mem:
        mem.add(SECRET, scope=Scope(tenant="alice"))
        mem.flush()
        blank = mem.bits_per_byte(SECRET, scope=Scope(tenant="nobody"))
        assert mem.bits_per_byte(SECRET, scope=Scope(tenant="alice")) < 0.8 * blank
    return blank


def _remove_database(path) -> None:
    for name in ("memory.db", "memory.db-wal", "memory.db-shm"):
        (path / name).unlink(missing_ok=True)


STALE: dict[str, float] = {}


@pytest.mark.parametrize("damage", ["removed", "truncated"])
def test_a_lost_database_is_refused_until_repaired(tmp_path, damage, capsys, figures):
    """A memory whose database was removed or emptied does not open on a fresh one: the
    files of the old history would give a new tenant the old tenant's weights and vectors.
    ``memsdk repair`` moves them aside; then a new tenant starts clean."""
    path = tmp_path / "m"
    blank = _alice_memory(path)
    _remove_database(path)
    if damage == "truncated":
        (path / "memory.db").write_bytes(b"")
    with pytest.raises(StaleFilesError, match=r"memsdk repair --memory"):
        HybridMemory.open(path)
    with pytest.raises(StaleFilesError):  # the failed open changed nothing it checks
        HybridMemory.open(path)
    assert cli_main(["repair", "--memory", str(path), "--quiet"]) == 0
    assert "moved aside" in capsys.readouterr().out
    assert list(path.glob("stale-*/weights/scope-1"))
    bob = Scope(tenant="bob")
    with HybridMemory.open(path) as mem:
        bob_text = "bob ordered a blue kettle for the kitchen\n"
        (memory_id,) = mem.add(bob_text, scope=bob).ids
        assert mem.notepad.sql.find_scope(bob.key()) == 1  # the id alice's files were under
        mem.flush()
        assert "hunter2" not in mem.complete("alice secret password is", scope=bob)
        leaked = mem.bits_per_byte(SECRET, scope=bob)
        assert leaked > 0.9 * blank
        STALE[f"{damage}_bits"], STALE["blank_bits"] = leaked, blank
        (hit,) = mem.search(bob_text, scope=bob, k=1)
        assert hit.id == memory_id and hit.similarity > 0.9  # its own vector, not alice's
        assert mem.stats().scopes[0].weights.through_chunk_id == memory_id  # absorbed
    with HybridMemory.open(path) as mem:
        assert mem.notepad.index.memory_id == mem.notepad.memory_id
    figures.record("stale_files", **STALE)


def test_an_older_database_backup_is_refused_until_the_index_is_rebuilt(tmp_path, caplog, figures):
    """A database restored from a backup older than the index and the weights: the index is
    refused (it would rank new chunks by the vectors of chunks the backup never had), and the
    weights, which claim chunks past the backup, are rebuilt from it."""
    path = tmp_path / "m"
    alice = Scope(tenant="alice")
    _alice_memory(path)
    backup = (path / "memory.db").read_bytes()
    assert not (path / "memory.db-wal").exists()  # closed: everything is in the file
    with HybridMemory.open(path) as mem:
        later = [
            mem.add(f"alice later note {n}: the cat is grey\n", scope=alice).ids[0]
            for n in range(5)
        ]
        mem.flush()
    _remove_database(path)
    (path / "memory.db").write_bytes(backup)
    with pytest.raises(StaleFilesError, match=r"memsdk rebuild-index --memory"):
        HybridMemory.open(path)
    assert cli_main(["repair", "--memory", str(path), "--quiet"]) == 0
    with caplog.at_level(logging.WARNING), HybridMemory.open(path) as mem:
        text = "alice bought a red bicycle on tuesday\n"
        (memory_id,) = mem.add(text, scope=alice).ids
        assert memory_id == later[0]  # the backup gives the id again
        (hit,) = mem.search(text, scope=alice, k=1)
        assert hit.id == memory_id and hit.similarity > 0.9
        mem.flush()
        assert mem.stats().scopes[0].weights.through_chunk_id == memory_id
    assert "rebuilding the weight memory of scope 1" in caplog.text
    figures.record("stale_files", backup_similarity=float(hit.similarity))


def test_a_memory_without_an_identity_adopts_one(tmp_path):
    """Memories made before identities (no id in the manifest, the database or the index
    file) keep opening, and take one on their first open."""
    path = tmp_path / "m"
    scope = Scope(tenant="acme")
    with HybridMemory.open(path, config=NOTEPAD_ONLY) as mem:
        (memory_id,) = mem.add("a note from before identities", scope=scope).ids
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["memory_id"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with SQLStore(f"sqlite:///{path / 'memory.db'}").writing() as s:
        s.execute(delete(IdentityRow))
    blob = (path / "notepad.faiss").read_bytes()  # back to the version 1 header
    magic, _, synced_to, digest, _ = struct.unpack_from("<8sIq32s16s", blob)
    (path / "notepad.faiss").write_bytes(
        struct.pack("<8sIq32s", magic, 1, synced_to, digest)
        + blob[struct.calcsize("<8sIq32s16s") :]
    )
    with HybridMemory.open(path, config=NOTEPAD_ONLY) as mem:
        identity = mem.notepad.memory_id
        assert len(identity) == 32
        assert mem.get(memory_id, scope=scope).text == "a note from before identities"
        assert mem.search("a note from before", scope=scope)[0].id == memory_id
    with HybridMemory.open(path, config=NOTEPAD_ONLY) as mem:
        assert mem.notepad.memory_id == identity
        assert mem.notepad.sql.identity() == identity
        assert mem.notepad.index.memory_id == identity
    assert json.loads((path / "manifest.json").read_text())["memory_id"] == identity
