"""Stored data is never lost, changed or mixed up by a refused or damaged write: update keeps
the exact bytes add keeps, a refused LangChain upsert keeps the old text, a forged delta
header is rebuilt from SQL, and a memory refuses files that belong to another history."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.errors import DuplicateError
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
