"""Stored data is never lost, changed or mixed up by a refused or damaged write: update keeps
the exact bytes add keeps, a refused LangChain upsert keeps the old text, a forged delta
header is rebuilt from SQL, and a memory refuses files that belong to another history."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import event, select

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.errors import DuplicateError, InputError, StorageError
from memsdk.stores.sql import ChunkRow

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


def test_a_refused_langchain_upsert_keeps_the_old_text(tmp_path):
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
