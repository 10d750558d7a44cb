"""Search: the checks of a query and the ranking of a scope's memories for it.

:meth:`HybridMemory.search <memsdk.memory.HybridMemory.search>` and the router's calibration
(:mod:`memsdk.recall`) both rank through :func:`hybrid_search`, so a routed query and a plain
search see the same hits.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.sql.elements import ColumnElement

from memsdk.encoding import encode_text
from memsdk.errors import InputError
from memsdk.results import SearchHit
from memsdk.router import identifier_spans, whole_word
from memsdk.scope import Scope
from memsdk.stores.sql import ChunkRecord
from memsdk.stores.sql_keywords import query_phrases
from memsdk.stores.vector_backlog import pending_among, pending_count
from memsdk.timeline import named_period, stored_time

if TYPE_CHECKING:
    from memsdk.memory import HybridMemory

__all__ = [
    "MAX_IDENTIFIERS",
    "MAX_K",
    "QUESTION_WORDS",
    "check_query",
    "hybrid_search",
    "item_fields",
    "keyword_query",
]

MAX_K = 1000
MAX_IDENTIFIERS = 8  # identifier pieces of one query looked up on their own
# A hit's vectors_pending counts at most this many: every search counts them, and at 1M
# chunks with most pending, counting 10,000 took 2.5 ms of an identifier query's 17.
PENDING_COUNT_LIMIT = 1_000

# Words a question is made of rather than about. The keyword ranking ORs the query's words, so
# "When did Caroline go to the support group?" also ranked every turn holding "did", "the" or
# "to": on the LoCoMo development split, dropping these words from the keyword query raised
# BM25's evidence recall@5 from 0.480 to 0.537 (benchmarks/README.md). The vector ranking
# still reads the whole question.
QUESTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "from",
        "about",
        "as",
        "into",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "how",
        "that",
        "this",
        "these",
        "those",
        "it",
        "its",
        "i",
        "you",
        "he",
        "she",
        "they",
        "we",
        "me",
        "him",
        "her",
        "them",
        "my",
        "your",
        "his",
        "their",
        "our",
        "would",
        "could",
        "should",
        "will",
        "can",
        "may",
        "might",
        "must",
        "shall",
        "any",
        "some",
        "there",
        "here",
        "than",
        "then",
        "so",
        "if",
        "not",
        "no",
        "yes",
        "kind",
        "type",
        "types",
        "like",
        "likely",
    ]
)
# A candidate whose time (metadata "time") falls in the period the query names ("in May 2023")
# has its fused score raised by half: it moves above candidates of other times ranked close to
# it, not above far better ones. Few development questions name a period (45 of 495), too few
# to fit this on; 0.5 is a round value, not a tuned one.
PERIOD_BOOST = 0.5
# Grouping by session: memories that carry a metadata "session" (a conversation's session, a
# ticket's thread) are ranked with their session. Each candidate gains SESSION_SHARE of the
# fused score of the best other candidate of its session, so the turns of a session that holds
# several good candidates rise together: the answer to a question often sits in a turn that
# only makes sense beside the turns around it. A hit is still one stored memory. 0.3 is a round
# value chosen before measuring, not tuned; on the LoCoMo development split it raised recall@10
# from 0.636 to 0.660 and lowered MRR from 0.450 to 0.435 (benchmarks/README.md).
SESSION_KEY = "session"
SESSION_SHARE = 0.3
_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


def check_query(query: Any, k: Any, *, max_query_bytes: int) -> None:
    """Refuse a query search cannot take.

    Raises:
        InputError: ``query`` is not a non-empty string or is longer than ``max_query_bytes``;
            ``k`` is not an int from 1 to ``MAX_K``.
    """
    if not isinstance(query, str) or not query.strip():
        raise InputError("query must be a non-empty string")
    size = len(encode_text(query, "query"))
    if size > max_query_bytes:
        raise InputError(
            f"query is {size} bytes, at most {max_query_bytes}: search with a "
            "shorter query (raise MemoryConfig.max_query_bytes if you need longer ones)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be an int from 1 to {MAX_K}, got {k!r}")


def keyword_query(query: str) -> str:
    """``query`` without its question words (:data:`QUESTION_WORDS`), for the keyword ranking.

    A piece of the query is dropped only when, stripped of the punctuation around it, it is a
    question word, so identifiers, numbers and names always stay; a query made only of
    question words is kept whole.
    """
    kept = [
        piece
        for piece in query.split()
        if _EDGE_PUNCTUATION.sub("", piece).lower() not in QUESTION_WORDS
    ]
    return " ".join(kept) if kept else query


def item_fields(record: ChunkRecord, scope: Scope) -> dict[str, Any]:
    """The fields of a :class:`~memsdk.results.MemoryItem` for a stored chunk."""
    return {
        "id": record.id,
        "text": record.text,
        "raw": record.raw,
        "scope": scope,
        "document_id": record.document_id,
        "source": record.source,
        "seq": record.seq,
        "start_byte": record.start_byte,
        "end_byte": record.end_byte,
        "metadata": record.metadata,
        "time": stored_time(record.metadata),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def session_keys(records: dict[int, ChunkRecord]) -> dict[int, tuple[str, Any]]:
    """The session (metadata :data:`SESSION_KEY`, a string or a number) of each record that
    has one, typed so that 1 and "1" are different sessions."""
    out = {}
    for cid, rec in records.items():
        value = rec.metadata.get(SESSION_KEY)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            out[cid] = (type(value).__name__, value)
    return out


def group_by_session(scores: dict[int, float], sessions: Mapping[int, Hashable]) -> None:
    """Raise each candidate in ``scores`` by :data:`SESSION_SHARE` of the best score of another
    candidate of its session (``sessions``: candidate -> session); candidates without one keep
    their score."""
    groups: dict[Hashable, list[float]] = {}
    for cid, key in sessions.items():
        if cid in scores:
            groups.setdefault(key, []).append(scores[cid])
    tops = {key: sorted(values, reverse=True)[:2] for key, values in groups.items()}
    for cid, key in sessions.items():
        top = tops.get(key, [])
        if cid in scores and len(top) > 1:  # the best other: the session's best, or its second
            scores[cid] += SESSION_SHARE * (top[1] if scores[cid] == top[0] else top[0])


def hybrid_search(
    memory: HybridMemory,
    query: str,
    scope: Scope,
    scope_id: int,
    k: int,
    where: ColumnElement[bool] | None,
    *,
    probe: ColumnElement[bool] | None = None,
    terms: Mapping[str, list[str]] | None = None,
    now: datetime | None = None,
) -> list[SearchHit]:
    """Rank the scope's chunks that pass ``where`` (SQL, on chunk columns) for ``query``, asked
    at ``now`` (relative times in the query are read against it; None reads none). ``probe``
    is the same filter in the form that checks given rows (``compile_filters(...,
    correlated=True)``), which lets the vector side check its nearest candidates instead of
    listing every chunk the filter keeps; ``terms`` is it again when it is only string
    equalities (:func:`memsdk.filters.string_terms`), which the text index answers itself.

    See :meth:`HybridMemory.search <memsdk.memory.HybridMemory.search>` for the ranking.
    """
    notepad = memory.notepad
    n = max(k, memory.config.search_candidates)
    config = memory.config
    spans = identifier_spans(query)[:MAX_IDENTIFIERS]
    # A query without identifiers always needs the vector ranking (below: no chunk can hold
    # one verbatim), so it is embedded on another core while the keyword side runs.
    embedding = memory.embedder.embed_query_soon(query) if not spans else None
    keyword, selecting = notepad.keyword_ranking(
        scope_id, keyword_query(query), limit=n, where=where, probe=probe, terms=terms
    )
    keyword_rank = {cid: r for r, (cid, _) in enumerate(keyword, 1)}
    # Each identifier of the query is also looked up on its own, so a chunk that holds it
    # is a candidate even when the rest of the query's words flood the keyword ranking.
    # An identifier that selected the keyword ranking's rows is not: that ranking already
    # holds its best holders, ranked by the whole query (an identifier selects alone, so no
    # other word floods it). At 1M chunks the second lookup cost 4 ms at the median.
    candidates = dict.fromkeys(keyword_rank)
    for span in spans:
        if span == query.strip() or all(p in selecting for p in query_phrases(span)):
            continue
        found = notepad.keyword_search(
            scope_id, span, limit=n, where=where, probe=probe, terms=terms
        )
        for cid, _ in found:
            candidates.setdefault(cid)
    records = notepad.sql.get_chunks(scope_id, list(candidates))
    patterns = [whole_word(span) for span in spans]

    def identifiers_held(ids: list[int]) -> dict[int, int]:
        return {i: sum(p.search(records[i].text) is not None for p in patterns) for i in ids}

    matched = identifiers_held(list(records))
    vector: list[tuple[int, float]] = []
    if sum(m > 0 for m in matched.values()) < k:
        # Fewer than k memories hold an identifier of the query verbatim: the vector ranking
        # decides the rest. With k of them, it could only reorder them (exact matches rank
        # first), so the query is not embedded: at 1M chunks that saves about 16 ms.
        embedded = embedding.result() if embedding else memory.embedder.embed_query(query)
        vector = notepad.vector_search(scope_id, embedded, k=n, where=where, probe=probe)
        fresh = notepad.sql.get_chunks(scope_id, [i for i, _ in vector if i not in records])
        records |= fresh
        matched |= identifiers_held(list(fresh))
    rrf = config.rrf_k
    vector_rank = {cid: r for r, (cid, _) in enumerate(vector, 1)}
    similarity = dict(vector)
    # Weights are scaled to sum to 2, so equal weights give plain RRF and a fused score stays
    # below 2 / (rrf_k + 1) <= 1: an exact identifier's +1 still ranks first.
    total = config.keyword_weight + config.vector_weight
    weighted = (
        (keyword_rank, 2 * config.keyword_weight / total),
        (vector_rank, 2 * config.vector_weight / total),
    )
    scores = dict.fromkeys(records, 0.0)
    for ranks, weight in weighted:
        for cid, r in ranks.items():
            if cid in scores:
                scores[cid] += weight / (rrf + r)
    period = named_period(query, now)
    if period is not None:
        start, end = period
        for cid, rec in records.items():
            moment = stored_time(rec.metadata)
            if moment is not None and start <= moment < end:
                scores[cid] *= 1 + PERIOD_BOOST
    group_by_session(scores, session_keys(records))
    for cid, count in matched.items():
        scores[cid] += count  # fused scores are < 1: exact identifiers rank first
    order = sorted(records, key=lambda cid: (-scores[cid], cid))[:k]
    # Chunks a bulk ingest stored moments ago may still wait for their vector
    # (memsdk.embedding_stage): exact-token search found them, vector search could not.
    waiting = pending_count(notepad.sql, scope_id, limit=PENDING_COUNT_LIMIT)
    unembedded = pending_among(notepad.sql, scope_id, order) if waiting else set()
    return [
        SearchHit(
            **item_fields(records[cid], scope),
            score=scores[cid],
            similarity=similarity.get(cid),
            vector_rank=vector_rank.get(cid),
            keyword_rank=keyword_rank.get(cid),
            exact_match=matched[cid] > 0,
            vector_pending=cid in unembedded,
            vectors_pending=waiting,
        )
        for cid in order
    ]
