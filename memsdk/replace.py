"""Replacing stored memories with a new text in one transaction (the LangChain upsert).

Deleting the old memories and then adding the new text loses the old text whenever the add is
refused (an empty text, bad metadata, a duplicate, a full disk). Here the new text is checked,
chunked and embedded first, and the old chunks are deleted and the new ones inserted in one
SQL transaction: the scope holds either the old text or the new one, never neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memsdk.chunking import chunk_stream, decode_chunk
from memsdk.filters import validate_metadata
from memsdk.inputs import text_to_store
from memsdk.memory import HybridMemory
from memsdk.scope import Scope
from memsdk.stores.sql_records import NewChunk

__all__ = ["replace_text"]


def replace_text(
    memory: HybridMemory,
    old_ids: Sequence[int],
    text: str | bytes,
    *,
    scope: Scope,
    metadata: Mapping[str, Any] | None = None,
) -> list[int]:
    """Store ``text`` as :meth:`HybridMemory.add` would, removing the scope's memories
    ``old_ids`` in the same transaction. Returns the new memory ids.

    Raises:
        InputError: what ``add`` refuses (empty, oversized or non-text input, bad metadata
            or scope); nothing was changed.
        DuplicateError: the text repeats content the scope keeps outside ``old_ids`` (or one
            of its chunks repeats another); nothing was changed.
        StorageError: the database refused the write; nothing was changed.
    """
    data = text_to_store(text, memory.config.max_text_bytes)
    meta = validate_metadata(metadata)
    scope_id = memory._scope_id(scope, create=True)
    assert scope_id is not None
    chunks = list(
        chunk_stream(
            [data],
            chunk_bytes=memory.config.chunk_bytes,
            max_line_bytes=memory.config.max_line_bytes,
        )
    )
    rows = []
    step = memory.config.embed_batch_chunks
    for start in range(0, len(chunks), step):
        part = chunks[start : start + step]
        decoded = [decode_chunk(c.data) for c in part]
        vectors = memory.embedder.embed([t for t, _ in decoded])
        rows += [
            NewChunk(c.seq, c.start_byte, c.end_byte, t, raw, c.content_hash, meta, v)
            for c, (t, raw), v in zip(part, decoded, vectors, strict=True)
        ]
    ids = memory.notepad.sql.replace_chunks(scope_id, list(old_ids), "<add>", meta, rows)
    memory.notepad.sync()
    if memory.weights is not None:
        memory.weights.notify(scope_id)
    return ids
