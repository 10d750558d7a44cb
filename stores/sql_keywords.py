"""The exact-token query: a query's phrases, which of them are common words, and the SQL that
ranks chunks by them on SQLite FTS5 (BM25) or PostgreSQL full-text search (``ts_rank_cd``).

The full-text indexes themselves are made by the schema's statements (``stores/sql_schema.py``:
``SQLITE_FTS``, ``POSTGRES_FTS``); :meth:`SQLStore.keyword_search` runs what is built here.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Select, column, func, literal_column, select, table, text
from sqlalchemy.orm import Session

from memsdk.stores.sql_schema import POSTGRES_TSVECTOR, ChunkRow

__all__ = [
    "COMMON_SHARE",
    "CONTEXT_RANK_WEIGHT",
    "DocCounts",
    "common_cutoff",
    "fts_doc_count",
    "fts_match",
    "fts_match_count",
    "fts_rows",
    "is_identifier",
    "keyword_select",
    "query_phrases",
    "selecting_match",
    "split_common",
]
# A word found in a chunk's context (``add(context=...)``: the previous turn of a chat) counts
# this much as one found in its text, in BM25 (FTS5 column weights) and in ts_rank_cd. Rule:
# grid 0.1, 0.3, 0.5, 1.0 in the full search on the LoCoMo development split, leave one
# conversation out, ship what most folds choose; all three chose 0.5, and the grid is flat
# from 0.3 to 1.0 (benchmarks/README.md, conversation.py).
CONTEXT_RANK_WEIGHT = 0.5

# A filtered keyword query whose selecting phrases match at most this many chunks checks the
# filter on those rows (one EXISTS probe each) instead of listing every chunk the filter keeps.
PROBE_ROWS = 20_000

# Words of a query for exact-token search: runs of letters and digits, the same split the
# FTS tokenizers make, so `blk_-1608999687919862906` becomes the phrase "blk 1608999687919862906".
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_MAX_QUERY_TERMS = 64


def query_phrases(query: str) -> list[list[str]]:
    """The distinct phrases of ``query`` for exact-token search, each a list of words."""
    query = query.replace("\x00", "\ufffd")  # stored text shows NUL bytes as U+FFFD
    phrases: list[list[str]] = []
    for piece in query.split():
        words = _WORD.findall(piece.lower())
        if words and words not in phrases:
            phrases.append(words)
    return phrases[:_MAX_QUERY_TERMS]


# Common words (after Lucene's common-terms query). FTS5 computes BM25 for every row matching
# any OR-ed phrase before the scope filter and the LIMIT, so one common word ("the", "def" and
# "self" each hold a third of a 100k-chunk corpus) makes a query score tens of thousands of
# rows. A word held by more than COMMON_SHARE of the indexed chunks (and more than
# MIN_COMMON_DOCS: below that scoring every holder is cheap, and a small memory ranks as if
# the rule did not exist) no longer selects rows: it only adds its BM25 weight to the rows a
# rarer phrase selected. When every phrase is a common word, the KEEP_COMMON rarest select. A
# phrase of several words (an identifier such as "blk 1608999687919862906") always selects.
# When the query holds an identifier (is_identifier: an id, an address, a version), the
# identifiers alone select and every other word only scores, with no count read: "show me
# the lines about attempt_1445144423722_0020_m_000001_0" ranked the 9,000 chunks holding
# "show" at 1M chunks (about 45 ms) where the few holding the id are what it asks for.
# The counts are the whole index's, so when no selecting phrase matches inside the searched
# scope, the search runs again with every phrase selecting (SQLStore.keyword_search).
# Measured on the notepad corpus at 100k chunks (benchmarks/README.md, keyword_search.py): a
# 1% share cut the keyword side's p95 about five-fold, kept 82% of the natural-language top 10
# (0.5% kept 70%, 2% kept 87% at half the gain), and the rank-1 needle hit rate rose (the
# common words of "what happened to <id>" no longer outrank the id).
COMMON_SHARE = 0.01
MIN_COMMON_DOCS = 1000
KEEP_COMMON = 2
# When every phrase is common, counts are read up to this many times the cutoff to find the
# rarest: reading a count costs as much as the count, so it stops there (ties keep query order).
COMMON_COUNT_CAP = 20


def common_cutoff(indexed_chunks: int) -> int:
    """The document count above which a word is common in an index of ``indexed_chunks``."""
    return max(MIN_COMMON_DOCS, int(COMMON_SHARE * indexed_chunks))


def split_common(
    phrases: list[list[str]], doc_count: Callable[[str, int], int], cutoff: int
) -> tuple[list[list[str]], list[list[str]]]:
    """``(selecting, scoring_only)``: the phrases whose rows are ranked, and the common words
    that only add to those rows' scores (see :data:`COMMON_SHARE`).

    ``doc_count(word, limit)`` is the number of indexed chunks holding ``word``, read no
    further than ``limit`` (any count above ``limit`` may be returned as ``limit``).
    """
    identifiers = [p for p in phrases if is_identifier(p)]
    if 0 < len(identifiers) < len(phrases):
        return identifiers, [p for p in phrases if p not in identifiers]
    common = [p for p in phrases if len(p) == 1 and doc_count(p[0], cutoff + 1) > cutoff]
    if not common:
        return phrases, []
    if len(common) == len(phrases):
        counts = [doc_count(p[0], COMMON_COUNT_CAP * cutoff) for p in phrases]
        rarest = sorted(range(len(phrases)), key=counts.__getitem__)[:KEEP_COMMON]
        common = [p for i, p in enumerate(phrases) if i not in rarest]
    return [p for p in phrases if p not in common], common


def is_identifier(phrase: list[str]) -> bool:
    """Whether a query phrase reads as an identifier: it holds a digit, and it is several words
    (``blk 1608999687919862906``, ``10 251 197 226``), mixes letters and digits (``sha256``,
    ``5k``) or is at least five characters long. A short number ("2023", "13") is not: in
    a question it is mostly a date or a count the stored text need not hold."""
    digits = any(ch.isdigit() for word in phrase for ch in word)
    if not digits:
        return False
    word = phrase[0]
    return len(phrase) > 1 or not word.isdigit() or len(word) >= 5


class DocCounts:
    """Recent :func:`fts_doc_count` answers, so the words queries share are not counted again.

    Reading a word's count costs as much as the count: at 1M chunks, the common-word split of
    one natural-language question took up to 20 ms. An answer stays valid while the index holds
    within ``DRIFT`` of the rows it held when it was read; it only decides which words select,
    so a slightly old count changes which rows are ranked, never what a row scores. The
    newest ``SIZE`` words are kept. Thread-safe."""

    SIZE = 4096
    DRIFT = 0.1

    def __init__(self) -> None:
        self._counts: OrderedDict[str, tuple[int, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def count(self, s: Session, word: str, limit: int, indexed: int) -> int:
        """``fts_doc_count(s, word, limit)``, from memory when a valid answer covers ``limit``
        (``indexed``: the index's rows now)."""
        with self._lock:
            known = self._counts.get(word)
            if known is not None:
                count, read_to, at = known
                if abs(indexed - at) <= self.DRIFT * at and (count < read_to or limit <= read_to):
                    self._counts.move_to_end(word)
                    return min(count, limit)
        count = fts_doc_count(s, word, limit)
        with self._lock:
            self._counts[word] = (count, limit, indexed)
            self._counts.move_to_end(word)
            while len(self._counts) > self.SIZE:
                self._counts.popitem(last=False)
        return count


def fts_match(selecting: list[list[str]], scoring_only: Sequence[list[str]] = ()) -> str:
    """The FTS5 MATCH expression: the rows holding a ``selecting`` phrase, ranked by BM25 over
    every phrase. ``(A) AND (A OR C)`` selects A's rows only; FTS5 reaches C's entries for
    them by seeking in C's doclist instead of scoring every row that holds C."""

    def any_of(phrases: Sequence[list[str]]) -> str:
        return " OR ".join('"' + " ".join(words) + '"' for words in phrases)

    if not scoring_only:
        return any_of(selecting)
    return f"({any_of(selecting)}) AND ({any_of([*selecting, *scoring_only])})"


def keyword_select(
    dialect: str,
    query: str,
    *,
    scoring_only: Sequence[list[str]] = (),
    context_weight: float = CONTEXT_RANK_WEIGHT,
) -> tuple[Select[Any], float] | None:
    """The exact-token query of ``query`` on ``dialect``'s full-text index: ``(statement,
    sign)``, the statement selecting ``(chunk id, rank)`` best first, and ``sign * rank``
    higher for better matches. None when the query has no word or the dialect no index.

    On SQLite, the phrases in ``scoring_only`` (common words, :func:`split_common`) add to the
    rank of the rows the query's other phrases select without selecting rows themselves.
    A word of a chunk's context counts ``context_weight`` as much as one of its text; at 0
    the context neither ranks nor selects (the benchmark's ablation).
    """
    query = _as_stored(query)
    phrases = query_phrases(query)
    if not phrases:
        return None
    if dialect == "sqlite":
        selecting = _selecting(phrases, scoring_only)
        match = fts_match(selecting, [p for p in phrases if p not in selecting])
        if context_weight == 0:
            match = f"{{text}} : ({match})"
        fts = table("chunks_fts", column("rowid"))
        fts_ref = literal_column("chunks_fts")
        rank = func.bm25(fts_ref, 1.0, context_weight).label("rank")
        stmt = (
            select(ChunkRow.id, rank)
            .select_from(fts.join(ChunkRow, ChunkRow.id == fts.c.rowid))
            .where(fts_ref.op("MATCH")(match))
            .order_by(rank)
        )
        sign = -1.0  # bm25() is lower-is-better
    elif dialect == "postgresql":
        # PostgreSQL's parser splits ids its own way (`blk_-1147` -> blk, -1147), so each
        # query piece is parsed by it too, as a phrase; the phrases are OR-ed.
        pieces = [p for p in query.split() if _WORD.search(p)][:_MAX_QUERY_TERMS]
        q = func.phraseto_tsquery("simple", pieces[0])
        for piece in pieces[1:]:
            q = q.op("||")(func.phraseto_tsquery("simple", piece))
        # The index's own expression (literal, so the planner matches it); ts_rank_cd's
        # weights are {D, C, B, A}: the text is A, the context B.
        vector = literal_column(POSTGRES_TSVECTOR.format(t="chunks."))
        weights = literal_column(f"'{{0.1, 0.2, {float(context_weight)}, 1.0}}'")
        rank = func.ts_rank_cd(weights, vector, q).label("rank")
        stmt = select(ChunkRow.id, rank).where(vector.op("@@")(q)).order_by(rank.desc())
        if context_weight == 0:
            text_only = func.to_tsvector(literal_column("'simple'"), ChunkRow.text)
            stmt = stmt.where(text_only.op("@@")(q))
        sign = 1.0
    else:
        return None
    return stmt, sign


def selecting_match(query: str, scoring_only: Sequence[list[str]] = ()) -> str | None:
    """The FTS5 MATCH expression of the rows :func:`keyword_select` ranks on SQLite (its
    selecting phrases alone); None when the query has no word."""
    phrases = query_phrases(_as_stored(query))
    return fts_match(_selecting(phrases, scoring_only)) if phrases else None


def _as_stored(query: str) -> str:
    return query.replace("\x00", "\ufffd")  # stored text shows NUL bytes as U+FFFD


def _selecting(phrases: list[list[str]], scoring_only: Sequence[list[str]]) -> list[list[str]]:
    """The phrases that select rows: all but ``scoring_only``, or all when none is left."""
    return [p for p in phrases if p not in scoring_only] or phrases


def fts_match_count(s: Session, match: str, limit: int) -> int:
    """How many indexed chunks (of every scope) match the FTS5 expression ``match``, counted
    up to ``limit``."""
    stmt = text(
        "SELECT count(*) FROM (SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH :m LIMIT :n)"
    )
    return int(s.execute(stmt, {"m": match, "n": limit}).scalar_one())


def fts_doc_count(s: Session, word: str, limit: int) -> int:
    """How many indexed chunks (of every scope) hold ``word``, counted up to ``limit``: FTS5
    stores no document count, so reading one costs as much as the count, and the limit bounds
    it (fts5vocab's count reads the word's whole doclist: 3 ms for "the" at 100k chunks)."""
    return fts_match_count(s, f'"{word}"', limit)


def fts_rows(s: Session) -> int:
    """How many rows the FTS5 index holds, read from its averages record (row 1 of
    ``chunks_fts_data``: a varint row count, then token totals): one row read where
    ``count(*)`` would walk every chunk."""
    block = s.execute(text("SELECT block FROM chunks_fts_data WHERE id = 1")).scalar()
    if not block:
        return 0
    value = 0
    for i, byte in enumerate(bytes(block[:9])):  # SQLite's varint, as FTS5 writes it
        if i == 8:
            return (value << 8) | byte
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value
    return int(s.execute(select(func.count()).select_from(ChunkRow)).scalar_one())
