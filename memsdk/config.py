"""Configuration of a memory: one pydantic model, validated, loadable from a dict or a file."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memsdk.errors import ConfigError

__all__ = ["MemoryConfig"]


class MemoryConfig(BaseModel):
    """How a memory stores, chunks and searches.

    Build it with keywords, from a dict (``MemoryConfig.model_validate(d)``) or from a JSON or
    TOML file (:meth:`from_file`). Unknown keys are rejected.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the records; None keeps SQLite in the memory directory. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    chunk_bytes: int = Field(
        512,
        ge=64,
        le=1 << 20,
        description="target chunk size; chunks hold whole lines and stay at or under this size "
        "unless a single line is longer",
    )
    max_line_bytes: int = Field(
        1 << 16,
        ge=256,
        le=1 << 24,
        description="a line longer than this is cut into pieces of this size (at white space or "
        "a UTF-8 character boundary); every shorter line stays whole in one chunk",
    )
    max_text_bytes: int = Field(
        16 << 20, ge=1, description="largest text `add` accepts; use `ingest` for larger streams"
    )
    max_document_bytes: int = Field(
        1 << 32,
        ge=1,
        description="largest document ingest stores: a larger file is skipped, a longer stream "
        "is cut there (both listed in the report's skipped sources)",
    )
    max_query_bytes: int = Field(8192, ge=16, description="largest search query accepted")
    max_score_bytes: int = Field(
        64 << 10,
        ge=16,
        le=16 << 20,
        description="largest text the weight model scores in one call: surprise() and "
        "bits_per_byte() text, complete()'s prompt, a routed query() (the query; the passages "
        "before it are query_context_bytes at most). Scoring time grows with the text: 64 KiB "
        "took 3.6 s of CPU on one core of the 2-core AMD EPYC the project measures on "
        "(surprise and bits_per_byte alike), so at the default no call holds a thread for "
        "long; a larger text is an InputError naming this limit",
    )
    max_scopes: int = Field(
        1_000_000,
        ge=1,
        description="most scopes a memory holds; writing to a new one past this raises InputError",
    )
    embed_batch_chunks: int = Field(
        64,
        ge=1,
        le=4096,
        description="chunks an ingest writes per transaction (and embeds per call when "
        "background_embedding is False)",
    )
    vector_batch_chunks: int = Field(
        512,
        ge=1,
        le=4096,
        description="chunks the background embedding stage embeds and stores per transaction: "
        "larger batches sort by length and pad better (10 MB of replayed logs got every vector "
        "after 120.9 s at 64, 98.3 s at 512, benchmarks/README.md); a close drops the batch at "
        "its next forward pass, and its chunks are embedded after the next open",
    )
    background_embedding: bool = Field(
        True,
        description="ingest() acknowledges a batch once SQL holds it with its full-text entry "
        "and computes its vectors in a background stage (memsdk/embedding_stage.py); "
        "False embeds each batch before committing it. add() and update() always embed inline",
    )
    share_template_vectors: bool = Field(
        True,
        description="chunks of one ingest that are equal once numbers, ids, addresses, paths "
        "and times are masked share the first one's vector (memsdk/templates.py): on real "
        "logs about half the chunks, embedded once; full-text search keeps every exact token",
    )
    embedding_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="the embedder's matrix products for stored chunks on a CPU: auto uses "
        "bfloat16 where the CPU has it in hardware (AVX512-BF16; 4.1-4.7x float32's speed, "
        "cosine to the float32 vector at least 0.9998 on real chunks), else float32; "
        "queries always embed in float32",
    )
    search_candidates: int = Field(
        50, ge=1, le=10_000, description="hits each retriever contributes to the fusion"
    )
    rrf_k: int = Field(
        20,
        ge=1,
        description="reciprocal-rank-fusion constant: smaller lets the first ranks of each "
        "ranking count more; 20 was chosen with keyword_weight (60 before)",
    )
    keyword_weight: float = Field(
        3.0,
        ge=0,
        le=1000,
        description="weight of the keyword (BM25) ranking in the fusion, against vector_weight: "
        "chosen with rrf_k on the LoCoMo development split, as the setting most "
        "leave-one-conversation-out folds picked (benchmarks/README.md); the keyword ranking "
        "was the stronger one on chats and on logs alike",
    )
    vector_weight: float = Field(
        1.0, ge=0, le=1000, description="weight of the vector (embedding) ranking in the fusion"
    )
    vector_ivf_threshold: int = Field(
        200_000,
        ge=256,
        description="vectors past which the vector index turns from an exact flat scan into an "
        "IVF index of float16 vectors, half the memory (about 4*sqrt(n) lists, trained on a "
        "sample of the stored vectors, probing "
        "the fewest lists that reach recall@10 >= 0.995 against exact search, measured on "
        "stored vectors, a margin for the 0.99 promised to queries; stats() shows it). The "
        "training runs in the background (minutes at "
        "1M vectors) while the flat index keeps serving; flush() waits for it. Scopes and "
        "filters of up to 1/400 of the vectors (2,500 at 1M) are still searched exactly "
        "(benchmarks/README.md has flat and IVF latency by size)",
    )
    text_index_threshold: int = Field(
        100_000,
        ge=0,
        description="chunks (in every scope) past which keyword search runs on a tantivy index "
        "beside SQL's full-text index, which ranks the best matches without scoring every one "
        "(1-4 ms where FTS5 took up to 447 ms at 1M chunks). Built in the background by each "
        "process that searches a memory of this size (about 40 s at 1M chunks, in a temporary "
        "folder mapped into memory); SQL's index answers until then (benchmarks/README.md)",
    )
    busy_timeout_s: float = Field(30.0, gt=0, description="how long a SQLite writer waits")
    index_save_interval_s: float = Field(
        30.0,
        ge=0,
        description="an ingest saves the vector index file only if the last save is older than "
        "this (flush() and close() always save; after a crash the index catches up from SQL)",
    )
    query_context_bytes: int = Field(
        512,
        ge=0,
        le=1 << 16,
        description="bytes of retrieved passage lines a routed query puts in the weight "
        "model's window before the query (the default model attends 256 bytes back per block)",
    )
    weight_memory: bool = Field(
        True,
        description="also stream every scope's chunks into its weight memory (test-time "
        "training in a background worker); False keeps the notepad only",
    )
    weights_model: str = Field(
        "default",
        min_length=1,
        description="the weight-memory model: a shipped model name or a checkpoint folder",
    )
    weights_batch_chunks: int = Field(
        16, ge=1, le=4096, description="chunks the background worker absorbs per batch"
    )
    weights_retention: Literal["slots", "replay", "none"] = Field(
        "slots",
        description="how a scope's weight memory keeps older sources while it absorbs new "
        "ones (memsdk.retention): 'slots' trains fast weights of each source's own (up to "
        "weights_slots per scope) and reads with their mixture; 'replay' rehearses chunks "
        "sampled from the notepad after each new chunk, at about twice the absorb time; "
        "'none' keeps mostly the newest source",
    )
    weights_slots: int = Field(
        16,
        ge=1,
        le=64,  # memsdk.engine.ttt.MAX_SLOTS
        description="fast-weight slots per scope under weights_retention='slots': each new "
        "source takes one while any is free, then joins the slot that predicts it best. Each "
        "slot adds a 4-bit delta on disk and one more forward pass to bits_per_byte, "
        "surprise and complete; query reads only the slots of its hits' sources",
    )
    weights_save_interval_s: float = Field(
        30.0,
        ge=0,
        description="a busy worker saves changed weight deltas at most this often (flush() "
        "and close() always save; after a crash a scope resumes from its last saved delta)",
    )
    weights_lease_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="how long a process's claim to train a scope's weight memory, or to run "
        "the memory's embedding stage, lasts without renewal (renewed while it works): when "
        "several processes share the memory, another takes over after it lapses, or at once "
        "if the holder was a process of this machine that has ended",
    )
    weights_fast_params: Literal["dynamic_mlp", "fisher_masked"] = Field(
        "dynamic_mlp",
        description="what test-time training moves: the dynamic MLPs (default), or micro-TTT's "
        "most sensitive ~1% of every suffix parameter by a running Fisher diagonal; applies "
        "to new scopes and after reset_weights (a scope saved in the other mode is rebuilt)",
    )
    weights_delta_keep: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fraction of each fast weight's changed entries a saved delta keeps, "
        "ranked by Fisher x change^2 (1 keeps every change; every kept value is 4-bit)",
    )
    weights_max_deltas: int = Field(
        8,
        ge=1,
        le=1000,
        description="longest chain of session deltas per scope before a save compacts it "
        "into one delta from the initial weights",
    )
    weights_max_loaded_scopes: int = Field(
        128,
        ge=1,
        description="scopes whose weight-memory state is kept in memory (about 0.8 MB each "
        "with the shipped model); the least recently used beyond it are saved and dropped, "
        "and loaded again from their deltas when next used",
    )

    @model_validator(mode="after")
    def _check(self) -> MemoryConfig:
        if self.max_line_bytes < self.chunk_bytes:
            raise ValueError(
                f"max_line_bytes ({self.max_line_bytes}) must be at least chunk_bytes "
                f"({self.chunk_bytes})"
            )
        if self.keyword_weight + self.vector_weight <= 0:
            raise ValueError(
                "keyword_weight and vector_weight are both 0: search would rank nothing; give "
                "at least one a positive weight"
            )
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MemoryConfig:
        """Load a config from a ``.json`` or ``.toml`` file.

        Raises:
            ConfigError: the file is missing, unparsable, or holds invalid or unknown keys.
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(raw.decode())
            elif path.suffix == ".json":
                data = json.loads(raw)
            else:
                raise ConfigError(
                    f"config file {path} has suffix {path.suffix!r}, expected .json or .toml"
                )
        except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"config file {path} cannot be parsed: {e}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"config file {path} is invalid:\n{e}") from None
