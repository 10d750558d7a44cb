"""Exact-id needles in real 2,000-line logs (../shared/data/loghub) are found at rank 1."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator

import pytest

from memsdk import HybridMemory, Scope
from memsdk.stores.sql_keywords import MIN_COMMON_DOCS, fts_rows

CASES = {
    "HDFS": re.compile(r"blk_-?\d+"),
    "BGL": re.compile(r"R\d\d-M\d-N[0-9A-F]-[CI]:J\d\d-U\d\d"),
}


@pytest.fixture(scope="module")
def log_memory(tmp_path_factory, database) -> Iterator[HybridMemory]:
    with HybridMemory.open(tmp_path_factory.mktemp("needles") / "memory") as mem:
        yield mem


@pytest.mark.parametrize("system", sorted(CASES))
def test_unique_ids_are_found_at_rank_1(log_memory, shared, system):
    path = shared("data", "loghub", system, f"{system}_2k.log")
    scope = Scope(tenant="ops", user=system)
    report = log_memory.ingest(path, scope=scope)
    assert report.bytes == path.stat().st_size and report.chunks > 100

    lines = path.read_text(errors="replace").splitlines()
    counts = Counter(span for line in lines for span in set(CASES[system].findall(line)))
    unique = sorted(span for span, n in counts.items() if n == 1)  # on exactly one line
    needles = random.Random(0).sample(unique, min(40, len(unique)))
    assert len(needles) >= 20, f"too few unique ids in {path.name}"
    misses = []
    # The bare id, and the id inside questions whose other words match many chunks.
    for template in ("{}", "what happened to {} ?", "show me the lines about {}"):
        for needle in needles:
            hits = log_memory.search(template.format(needle), scope=scope, k=5)
            if not hits or needle not in hits[0].text or not hits[0].exact_match:
                misses.append(template.format(needle))
    assert misses == [], f"{len(misses)} of {3 * len(needles)} not at rank 1: {misses[:5]}"
    hits = log_memory.search(needles[0], scope=scope, k=5)
    # Byte offsets point back into the file.
    data = path.read_bytes()
    assert data[hits[0].start_byte : hits[0].end_byte] == hits[0].data


def test_k_exact_holders_of_an_id_rank_without_the_vector_search(log_memory, shared):
    """When k memories hold the query's identifier verbatim they take the k first places
    whatever the vector ranking says, so it is not run; with fewer it fills the rest."""
    path = shared("data", "loghub", "BGL", "BGL_2k.log")
    scope = Scope(tenant="ops", user="BGL-holders")
    log_memory.ingest(path, scope=scope)
    log_memory.flush()  # every chunk has its vector
    lines = path.read_text(errors="replace").splitlines()
    nodes = Counter(span for line in lines for span in set(CASES["BGL"].findall(line)))
    busy, lines_holding = nodes.most_common(1)[0]
    assert lines_holding >= 30  # on many lines, so in more than 3 chunks
    # A whole line holding it, which the vector ranking finds among its near neighbours.
    line = next(line for line in lines if busy in line)
    hits = log_memory.search(line, scope=scope, k=3)
    assert len(hits) == 3 and all(h.exact_match and busy in h.text for h in hits)
    assert all(h.vector_rank is None and h.similarity is None for h in hits)
    assert log_memory.search(line, scope=scope, k=50)[0].vector_rank is not None
    rare = next(span for span, n in nodes.items() if n == 1)
    hits = log_memory.search(f"what happened to {rare}", scope=scope, k=3)
    assert hits[0].exact_match and rare in hits[0].text
    assert [h.exact_match for h in hits[1:]] == [False, False]
    assert all(h.vector_rank is not None for h in hits[1:])


def test_an_identifier_the_keyword_ranking_only_scores_is_looked_up_on_its_own(log_memory, shared):
    """In "<node> <number>" the node selects the keyword ranking's rows and a short number
    only adds to their scores (a short number is not an identifier there), so the memory
    holding the number is found by looking the number up on its own."""
    path = shared("data", "loghub", "BGL", "BGL_2k.log")
    scope = Scope(tenant="ops", user="BGL-lookups")
    log_memory.ingest(path, scope=scope)
    for system in ("HDFS", "Hadoop"):  # other scopes: the index splits off common words
        log_memory.ingest(
            shared("data", "loghub", system, f"{system}_2k.log"), scope=Scope(tenant="x")
        )
    log_memory.flush()
    if log_memory.notepad.sql.is_sqlite:  # (on PostgreSQL every word selects)
        with log_memory.notepad.sql.reading() as s:
            assert fts_rows(s) > MIN_COMMON_DOCS
    lines = path.read_text(errors="replace").splitlines()
    nodes = Counter(span for line in lines for span in set(CASES["BGL"].findall(line)))
    busy = nodes.most_common(1)[0][0]

    def numbers_in(text: str) -> set[str]:  # four-digit numbers standing alone
        return set(re.findall(r"(?<![\w.-])\d{4}(?!\w)", text))

    numbers = Counter(n for line in lines for n in numbers_in(line))
    number = next(
        n
        for n, count in numbers.items()
        if count == 1 and not any(busy in line for line in lines if n in numbers_in(line))
    )
    holders = [h for h in log_memory.search(busy, scope=scope, k=200) if h.exact_match]
    assert 3 < len(holders) < 200
    # k = the node's holders and the number's: k exact holders, so no vector search runs.
    hits = log_memory.search(f"{busy} {number}", scope=scope, k=len(holders) + 1)
    found = [h for h in hits if number in numbers_in(h.text)]
    assert len(found) == 1 and found[0].exact_match and busy not in found[0].text
    assert all(h.vector_rank is None for h in hits)
