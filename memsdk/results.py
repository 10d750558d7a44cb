"""What the public API returns: frozen pydantic models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memsdk.scope import Scope

__all__ = [
    "AddResult",
    "Answer",
    "HistoryEvent",
    "IngestReport",
    "MemoryItem",
    "MemoryStats",
    "RouteDecision",
    "RouteFeatures",
    "RouterCalibration",
    "ScopeStats",
    "SearchHit",
    "SkippedSource",
    "StageLag",
    "Surprise",
    "SurpriseLine",
    "WeightFigures",
]

_FROZEN = ConfigDict(frozen=True)


class MemoryItem(BaseModel):
    """One stored chunk (a "memory")."""

    model_config = _FROZEN

    id: int = Field(description="the chunk id; also its FAISS id")
    text: str = Field(description="the chunk as text (invalid UTF-8 shown as U+FFFD, see `data`)")
    raw: bytes | None = Field(None, description="the original bytes when they were not UTF-8")
    scope: Scope
    document_id: int | None = Field(description="the document the chunk came from")
    source: str | None = Field(description="the document's path or name")
    seq: int = Field(description="the chunk's position within its document")
    start_byte: int = Field(description="offset of the chunk's first byte in its document")
    end_byte: int = Field(description="offset just past the chunk's last byte")
    metadata: dict[str, Any]
    time: datetime | None = Field(
        None,
        description='when the memory happened (metadata "time", UTC), if it was given; '
        "created_at is when it was stored",
    )
    created_at: datetime
    updated_at: datetime

    @property
    def data(self) -> bytes:
        """The chunk's exact bytes as they were ingested (or last updated)."""
        return self.raw if self.raw is not None else self.text.encode()


class SearchHit(MemoryItem):
    """A search result: a memory, its fused score and how each retriever ranked it."""

    score: float = Field(
        description="query identifiers held verbatim plus the reciprocal-rank-fusion score (< 1);"
        " higher is better"
    )
    similarity: float | None = Field(description="cosine similarity to the query, if retrieved")
    vector_rank: int | None = Field(description="1-based rank in vector search, if retrieved")
    keyword_rank: int | None = Field(description="1-based rank in exact-token search, if matched")
    exact_match: bool = Field(description="the text holds an identifier of the query verbatim")
    vector_pending: bool = Field(
        False,
        description="this memory had no vector yet when the search ran (ingested moments "
        "before; memsdk.embedding_stage): only exact-token search could find it",
    )
    vectors_pending: int = Field(
        0,
        description="memories of the scope still without a vector when the search ran, "
        "counted up to 1,000: vector search did not see them (0: it saw the whole scope). "
        "flush() waits for them; stats() gives the full backlog",
    )


class AddResult(BaseModel):
    """Outcome of :meth:`HybridMemory.add`."""

    model_config = _FROZEN

    ids: list[int] = Field(description="ids of the new chunks (a long text makes several)")
    document_id: int | None = Field(description="None when every chunk was a duplicate")
    duplicates_skipped: int = Field(description="chunks the scope already held")


class HistoryEvent(BaseModel):
    """One change to a memory; the history is append-only."""

    model_config = _FROZEN

    id: int
    memory_id: int
    event: Literal["ADD", "UPDATE", "DELETE"]
    old_text: str | None
    new_text: str | None
    old_metadata: dict[str, Any] | None
    new_metadata: dict[str, Any] | None
    created_at: datetime


class SkippedSource(BaseModel):
    """A source that ingestion passed over, and why."""

    model_config = _FROZEN

    source: str
    reason: str


class IngestReport(BaseModel):
    """Outcome of :meth:`HybridMemory.ingest`."""

    model_config = _FROZEN

    documents: int = Field(description="documents that added at least one chunk")
    chunks: int = Field(description="new chunks stored")
    bytes: int = Field(description="bytes read from the sources")
    duplicates_skipped: int = Field(description="chunks skipped because the scope held them")
    seconds: float
    document_ids: list[int]
    skipped: list[SkippedSource] = Field(description="sources not ingested (binary, empty, ...)")


class WeightFigures(BaseModel):
    """A scope's weight memory: how much it absorbed and how far it moved."""

    model_config = _FROZEN

    bytes_absorbed: int = Field(description="bytes streamed into the fast weights")
    steps: int = Field(description="inner-loop steps taken")
    rejected_steps: int = Field(description="steps refused for a non-finite loss or gradient")
    through_chunk_id: int = Field(
        description="the last chunk absorbed (chunks are absorbed in id order)"
    )
    drift: float = Field(description="relative distance of the fast weights from the initial ones")
    deltas: int = Field(description="session delta files the weight memory is merged from")
    delta_bytes: int = Field(description="bytes of those delta files")
    saved_at: datetime | None = Field(description="when the newest delta was written (UTC)")
    retention: str = Field(
        "none", description="how the weights keep older sources (MemoryConfig.weights_retention)"
    )
    rehearsal_steps: int = Field(
        0, description="inner steps on earlier chunks replayed from the notepad (retention)"
    )
    sources_held: int = Field(
        0, description="document sources absorbed so far, which rehearsals sample from"
    )
    slots: int = Field(
        1,
        description="fast-weight slots the weights hold (retention 'slots': one per kind of text)",
    )
    slot_sources: dict[str, int] = Field(
        default_factory=dict,
        description="the slot of each source the weights remember by name (the newest 256)",
    )


class StageLag(BaseModel):
    """How far a background stage (vectors, weights) is behind the stored chunks."""

    model_config = _FROZEN

    pending_chunks: int = Field(0, description="stored chunks the stage has not processed yet")
    pending_bytes: int = Field(0, description="their text bytes")


class ScopeStats(BaseModel):
    model_config = _FROZEN

    scope: Scope
    documents: int
    chunks: int
    bytes: int
    weights: WeightFigures | None = Field(None, description="None without the weight memory")
    vectors_lag: StageLag = Field(
        default_factory=StageLag, description="chunks still waiting for their vector"
    )
    weights_lag: StageLag | None = Field(
        None, description="chunks the weight memory has not absorbed; None without it"
    )


class MemoryStats(BaseModel):
    """Figures of a whole memory directory."""

    model_config = _FROZEN

    path: str
    database: str
    format_version: int
    embedder: str
    index_vectors: int
    index_bytes: int
    index_kind: Literal["flat", "ivf"] = Field(
        "flat",
        description="flat: exact search; ivf: past MemoryConfig.vector_ivf_threshold, probes "
        "index_nprobe of index_nlist lists (scopes and filters of up to 1/400 of the vectors "
        "are still searched exactly)",
    )
    index_nlist: int | None = Field(None, description="lists of the IVF index")
    index_nprobe: int | None = Field(None, description="lists an IVF search probes")
    index_recall: float | None = Field(
        None,
        description="recall@10 of the IVF index against exact search, measured when it was "
        "trained (stored vectors as queries, each with its own list left out)",
    )
    index_training: bool = Field(
        False,
        description="an IVF layout is being trained in the background (past the threshold, or "
        "grown 4x past the last training); the current index serves searches meanwhile, and "
        "flush() waits for it",
    )
    keyword_index: Literal["sql", "building", "tantivy"] = Field(
        "sql",
        description="how this process ranks keywords: on SQL's full-text index (a memory below "
        "MemoryConfig.text_index_threshold chunks), on it while the tantivy text index is built "
        "in the background, or on that index (kept in memory; each process builds its own "
        "when it first searches)",
    )
    embedding_holder: str | None = Field(
        None,
        description="the process (host:pid:id) whose embedding stage holds the memory's "
        "embedding lease: the one computing vectors now (None when none is; a holder that "
        "was killed shows until another process takes over)",
    )
    weights_model: str | None = Field(None, description="name and fingerprint of the model")
    scopes: list[ScopeStats]


Branch = Literal["notepad", "weights", "both"]


class RouteFeatures(BaseModel):
    """The numbers the router decides on, all computed per query in a few milliseconds."""

    model_config = _FROZEN

    identifiers: int = Field(description="identifier-like spans in the query (ids, hex, paths)")
    exact_hits: int = Field(description="of those, how many a retrieved passage holds verbatim")
    top_similarity: float = Field(description="cosine similarity of the best notepad passage")
    similarity_margin: float = Field(description="best minus second-best passage similarity")
    query_bits: float = Field(description="bits per byte of the query under the scope's weights")
    query_bits_gain: float = Field(
        description="bits per byte the scope's weights save on the query against the initial "
        "weights: how familiar the query's kind of text has become"
    )
    unconsolidated_share: float = Field(
        description="share of the scope's bytes the weight memory has not absorbed yet"
    )


class RouteDecision(BaseModel):
    """Where a query's answer was looked for, and why."""

    model_config = _FROZEN

    branch: Branch = Field(
        description="notepad: retrieved passages with the initial weights; weights: the "
        "scope's fast weights alone; both: retrieved passages with the scope's fast weights"
    )
    reason: str = Field(description="one line a person understands")
    features: RouteFeatures
    forced: bool = Field(description="the caller named the branch (route= other than auto)")
    policy: str = Field(description="'default' or 'calibrated' (fitted on the scope's probes)")


class Answer(BaseModel):
    """What :meth:`HybridMemory.query` returns."""

    model_config = _FROZEN

    query: str
    scope: Scope
    route: RouteDecision
    passages: list[SearchHit] = Field(
        description="the notepad's hits, best first (empty when route='weights' was forced, "
        "which skips the notepad)"
    )
    context: str = Field(
        description="the passage lines the completion was conditioned on ('' for the weights "
        "branch)"
    )
    completion: str = Field(description="the weight memory's continuation of the query")
    timings: dict[str, float] = Field(description="milliseconds per stage")


class SurpriseLine(BaseModel):
    """One line of a text scored by :meth:`HybridMemory.surprise`."""

    model_config = _FROZEN

    line: int = Field(description="0-based line number")
    text: str
    bits_per_byte: float = Field(description="mean bits per byte of the line and its newline")
    novelty: float = Field(
        description="mean bits per byte of the line's letters (of all its bytes when it has "
        "none): the score to rank lines by when looking for anomalies, since digits, ids and "
        "punctuation are a log line's variable fields, new in every line"
    )


class Surprise(BaseModel):
    """How novel a text is to a scope's memory, line by line (high: unlike what it absorbed)."""

    model_config = _FROZEN

    bits_per_byte: float = Field(description="mean over every byte of the text")
    weights: Literal["adapted", "initial"]
    lines: list[SurpriseLine]


class RouterCalibration(BaseModel):
    """What :meth:`HybridMemory.calibrate_router` fitted and how it scores on its probes."""

    model_config = _FROZEN

    scope: Scope
    probes: int = Field(description="probes made from the scope's data")
    needle_probes: int
    pattern_probes: int
    mean_bits: dict[str, float] = Field(
        description="mean bits per byte of the probes' answers: per branch, for the fitted "
        "router ('router') and the per-probe best branch ('oracle')"
    )
    chosen: dict[str, int] = Field(description="probes the fitted router sends to each branch")
    seconds: float
