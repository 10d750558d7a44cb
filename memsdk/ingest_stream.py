"""Documents into the notepad: chunk, deduplicate, (embed,) commit, batch by batch.

Both writes go through :func:`ingest_stream`: :meth:`HybridMemory.add` with vectors computed
inline, :meth:`HybridMemory.ingest` with ``defer_vectors`` set, so that each batch is
acknowledged once SQL holds it with its full-text entry and the embedding stage
(:mod:`memsdk.embedding_stage`) computes its vectors in the background.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from memsdk.chunking import RawChunk, chunk_stream, decode_chunk
from memsdk.context import blend
from memsdk.errors import MemsdkError
from memsdk.progress import progress_bar
from memsdk.results import IngestReport, SkippedSource
from memsdk.sources import LIMIT_HINT, CountedBlocks, Skipped, Source, document_label, first_block
from memsdk.stores.sql_records import NewChunk
from memsdk.templates import TemplateVectors

if TYPE_CHECKING:
    from memsdk.memory import HybridMemory

__all__ = ["ingest_sources", "ingest_stream"]

logger = logging.getLogger(__name__)

_NO_VECTOR = np.empty(0, dtype=np.float32)  # stored as an empty embedding: vector pending


def ingest_stream(
    memory: HybridMemory,
    scope_id: int,
    source: str,
    blocks: Iterable[bytes],
    metadata: dict[str, Any],
    new_ids: list[int],
    *,
    cancel: threading.Event | None = None,
    context: str | None = None,
    defer_vectors: bool = False,
) -> tuple[int | None, int]:
    """Chunk, deduplicate, embed and store one document, appending the new chunk ids to
    ``new_ids``. Returns (document id or None when nothing new was stored, duplicates
    skipped).

    With ``defer_vectors`` the chunks are committed without vectors (the embedding stage is
    notified), else each batch is embedded before it is committed.

    When ``blocks`` raises, the batches committed before stay (their ids are in
    ``new_ids``), the batch in progress is dropped, the document is closed as failed (and
    removed if it holds no chunk), and the exception propagates. So it is when ``cancel``
    is set or the memory is closing: the stream stops before its next block. ``context``
    is embedded with every chunk and stored beside it for full-text search
    (:mod:`memsdk.context`); it needs inline vectors."""
    if context is not None and defer_vectors:
        raise ValueError("a context is blended into inline vectors: defer_vectors must be False")
    config = memory.config
    sql = memory.notepad.sql
    context_vector = memory.embedder.embed([context])[0] if context is not None else None
    doc_id = sql.start_document(scope_id, source, metadata)
    hasher = hashlib.sha256()
    size = 0

    def hashed() -> Iterator[bytes]:
        nonlocal size
        for block in blocks:
            if cancel is not None and cancel.is_set():
                raise MemsdkError(
                    f"ingest of {source} was cancelled: the batches committed before stay; "
                    "ingest it again to complete it"
                )
            memory._gate.check(f"the ingest of {source}")
            hasher.update(block)
            size += len(block)
            yield block

    dups = 0
    batch: list[RawChunk] = []
    embed = memory.embedder.embed
    if config.share_template_vectors:
        embed = TemplateVectors(memory.embedder.embed).vectors

    def store() -> None:
        nonlocal dups
        seen: set[str] = set()
        unique = []
        for c in batch:
            h = c.content_hash
            if h not in seen:
                seen.add(h)
                unique.append((h, c))
        existing = sql.existing_hashes(scope_id, [h for h, _ in unique])
        fresh = [(h, c) for h, c in unique if h not in existing]
        dups += len(batch) - len(fresh)
        batch.clear()
        if not fresh:
            return
        decoded = [decode_chunk(c.data) for _, c in fresh]
        if defer_vectors:
            vectors: Any = [_NO_VECTOR] * len(decoded)
        else:
            vectors = embed([t for t, _ in decoded])
            if context_vector is not None:
                vectors = blend(vectors, context_vector)
        rows = [
            NewChunk(c.seq, c.start_byte, c.end_byte, text, raw, h, metadata, vec, context)
            for (h, c), (text, raw), vec in zip(fresh, decoded, vectors, strict=True)
        ]
        ids = sql.insert_chunks(scope_id, doc_id, rows)
        dups += sum(i is None for i in ids)
        new_ids.extend(i for i in ids if i is not None)
        if defer_vectors:
            memory.embedding.notify(scope_id)
        else:
            memory.notepad.sync()
        if memory.weights is not None:
            memory.weights.notify(scope_id)

    try:
        for chunk in chunk_stream(
            hashed(),
            chunk_bytes=config.chunk_bytes,
            max_line_bytes=config.max_line_bytes,
        ):
            batch.append(chunk)
            if len(batch) >= config.embed_batch_chunks:
                store()
        store()
    except BaseException:
        try:
            sql.finish_document(doc_id, size_bytes=size, duplicates=dups, failed=True)
        except Exception:
            logger.exception("could not record that %s failed", source)
        raise
    kept = sql.finish_document(
        doc_id, size_bytes=size, content_hash=hasher.hexdigest(), duplicates=dups
    )
    return (doc_id if kept else None), dups


def ingest_sources(
    memory: HybridMemory,
    scope_id: int,
    sources: list[Source | Skipped],
    metadata: dict[str, Any],
    *,
    progress: bool,
    cancel: threading.Event | None,
) -> IngestReport:
    """:meth:`HybridMemory.ingest` after its checks: each source through
    :func:`ingest_stream`, in turn, with one progress bar in bytes; what is not read is listed
    in the report's ``skipped`` with its reason. ``seconds`` is left for the caller to set."""
    sizes = [s.size for s in sources if isinstance(s, Source)]
    total = sum(sizes) if None not in sizes else None  # type: ignore[arg-type]
    documents, chunks, read, dups = [], 0, 0, 0
    skipped: list[SkippedSource] = []
    limit = memory.config.max_document_bytes

    def skip(src: Source | Skipped, reason: str) -> None:
        skipped.append(
            SkippedSource(source=document_label(src.name), reason=document_label(reason))
        )
        logger.info("skipping %s: %s", src.name, reason)

    with progress_bar(progress, total=total, desc="ingest", unit="B", unit_scale=True) as bar:
        for src in sources:
            if isinstance(src, Skipped):
                skip(src, src.reason)
                continue
            opened = first_block(src, limit=limit)
            if isinstance(opened, str):
                skip(src, opened)
                bar.update(src.size or 0)
                continue
            stream = CountedBlocks(*opened, bar.update, limit=limit)
            ids: list[int] = []
            doc_id, d = ingest_stream(
                memory,
                scope_id,
                src.name,
                stream,
                metadata,
                ids,
                cancel=cancel,
                defer_vectors=memory.config.background_embedding,
            )
            if stream.cut:
                skip(src, f"cut after its first {limit} bytes ({LIMIT_HINT})")
            read += stream.seen
            chunks += len(ids)
            dups += d
            if doc_id is not None:
                documents.append(doc_id)
    return IngestReport(
        documents=len(documents),
        chunks=chunks,
        bytes=read,
        duplicates_skipped=dups,
        seconds=0.0,
        document_ids=documents,
        skipped=skipped,
    )
