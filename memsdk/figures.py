"""What ``HybridMemory.stats`` and ``flush`` report: per-scope counts, how far the embedding
stage and the weight memory lag behind SQL, and the vector index's size and layout.

Every figure is read from SQL, the index and the weight memory's bookkeeping when asked; none
is kept on the side, so none can drift from what is stored.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from memsdk.consolidation import Consolidator
from memsdk.results import MemoryStats, ScopeStats, StageLag, WeightFigures
from memsdk.scope import Scope
from memsdk.stores.sql import SQLStore
from memsdk.stores.vector_backlog import Backlog, backlog, chunks_after

if TYPE_CHECKING:
    from memsdk.memory import HybridMemory

__all__ = ["memory_stats", "vector_lag", "weight_lag"]


def memory_stats(memory: HybridMemory) -> MemoryStats:
    """Figures of the whole memory: per scope documents, chunks and bytes, and how far its
    vectors and weights lag; the index's size and layout."""
    sql = memory.notepad.sql
    counts = sql.scope_counts()
    pending = backlog(sql)
    scopes = []
    for scope_id, (tenant, user, agent, run) in sql.scopes():
        docs, chunks, size = counts.get(scope_id, (0, 0, 0))
        scope = Scope(tenant=tenant, user=user or None, agent=agent or None, run=run or None)
        weights = weights_lag = None
        if memory.weights is not None:
            figures = memory.weights.figures(scope_id)
            weights = WeightFigures(**dataclasses.asdict(figures))
            weights_lag = _lag(chunks_after(sql, scope_id, figures.through_chunk_id))
        scopes.append(
            ScopeStats(
                scope=scope,
                documents=docs,
                chunks=chunks,
                bytes=size,
                weights=weights,
                vectors_lag=_lag(pending.get(scope_id, Backlog())),
                weights_lag=weights_lag,
            )
        )
    index_file, index = memory.notepad.index_path, memory.notepad.index
    return MemoryStats(
        path=str(memory.path),
        database=memory.notepad.manifest.database,
        format_version=memory.notepad.manifest.format_version,
        embedder=memory.embedder.name,
        index_vectors=len(index),
        index_bytes=index_file.stat().st_size if index_file.exists() else 0,
        index_kind=index.kind,
        index_nlist=index.nlist,
        index_nprobe=index.nprobe,
        index_recall=index.recall,
        index_training=index.training,
        keyword_index=memory.notepad.text_index.state,
        embedding_holder=memory.embedding.lease.current_holder(),
        weights_model=memory.weights.model_name() if memory.weights is not None else None,
        scopes=scopes,
    )


def vector_lag(sql: SQLStore) -> Backlog:
    """Chunks of the whole memory still without a vector."""
    scopes = backlog(sql).values()
    return Backlog(sum(b.chunks for b in scopes), sum(b.bytes for b in scopes))


def weight_lag(sql: SQLStore, weights: Consolidator) -> Backlog:
    """Chunks of the whole memory the weight memory has not absorbed."""
    chunks, size = 0, 0
    for scope_id in sql.newest_chunk_ids():
        lag = chunks_after(sql, scope_id, weights.figures(scope_id).through_chunk_id)
        chunks, size = chunks + lag.chunks, size + lag.bytes
    return Backlog(chunks, size)


def _lag(pending: Backlog) -> StageLag:
    return StageLag(pending_chunks=pending.chunks, pending_bytes=pending.bytes)
