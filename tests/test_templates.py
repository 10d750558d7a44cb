"""Chunks equal once their variable fields are masked share one embedding (memsdk/templates.py),
while full-text search keeps their exact tokens and scopes never share vectors."""

from __future__ import annotations

import numpy as np
import pytest

from memsdk import HybridMemory, MemoryConfig, Scope
from memsdk.stores.embedder import MiniLMEmbedder
from memsdk.templates import TemplateVectors, mask

# Real HDFS and BGL lines (Loghub): the first two of each pair differ only in fields.
SAME = [
    (
        "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
        "blk_38865049064139660 terminating",
        "081109 204005 35 INFO dfs.DataNode$PacketResponder: PacketResponder 2 for block "
        "blk_-6952295868487656571 terminating",
    ),
    (
        "081109 204525 512 INFO dfs.DataNode$DataXceiver: Receiving block blk_5792 src: "
        "/10.251.111.130:41637 dest: /10.251.111.130:50010",
        "081110 120301 8871 INFO dfs.DataNode$DataXceiver: Receiving block blk_-1608999 src: "
        "/10.250.19.102:54106 dest: /10.250.19.102:50010",
    ),
    (
        "2005-06-03-15.42.50.363779 R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache "
        "parity error corrected",
        "2005-06-04-01.12.07.112233 R27-M0-N4-C:J18-U01 RAS KERNEL INFO instruction cache "
        "parity error corrected",
    ),
    (
        "req-3f2a9c1e-7b4d-4e21-9a0f-1c2d3e4f5a6b GET /v2/54fadb41/servers/detail status: 200",
        "req-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9 GET /v2/e9a1c3b7/servers/detail status: 404",
    ),
]
DIFFERENT = [
    "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    "blk_38865049064139660 terminating",
    "081109 203615 148 INFO dfs.FSNamesystem: BLOCK* NameSystem.delete: blk_38865049064139660 "
    "is added to invalidSet of 10.251.111.130:50010",
    "2005-06-03-15.42.50.363779 R02-M1-N0-C:J12-U11 RAS KERNEL FATAL data TLB error interrupt",
    "the VPN drops after sleep on node 12",
]


def test_mask_equates_fields_and_keeps_templates_apart() -> None:
    for a, b in SAME:
        assert mask(a) == mask(b), (mask(a), mask(b))
    masked = [mask(t) for t in DIFFERENT]
    assert len(set(masked)) == len(masked), masked


@pytest.fixture(scope="module")
def log_memory(tmp_path_factory):
    # 64-byte chunks: every line below is a chunk of its own.
    config = MemoryConfig(chunk_bytes=64)
    with HybridMemory.open(tmp_path_factory.mktemp("templates") / "memory", config=config) as m:
        yield m


def _own(vector: np.ndarray, embedder: MiniLMEmbedder, text: str) -> bool:
    """Whether ``vector`` is ``text``'s own embedding: in bfloat16 (the embedder's default on
    a CPU that has it) a vector differs slightly with the batch it was computed in, by far
    less than from another line of the same template (a cosine of 0.98 at most here)."""
    return float(vector @ embedder.embed([text])[0]) > 0.9995


def _vectors(memory: HybridMemory, scope: Scope) -> dict[str, np.ndarray]:
    memory.embedding.flush()  # ingest leaves the vectors to the background stage
    items = memory.get_all(scope=scope, limit=1000)
    ids = np.array([i.id for i in items], dtype=np.int64)
    by_id = {
        int(i): v
        for ids_, vs in memory.notepad.sql.embeddings(ids)
        for i, v in zip(ids_, vs, strict=True)
    }
    return {item.text.rstrip("\n"): by_id[item.id] for item in items}


def test_an_ingest_embeds_each_template_once(log_memory) -> None:
    embedder = log_memory.embedder
    lines = [a for a, _ in SAME] + [b for _, b in SAME] + DIFFERENT[1:]
    scope = Scope(tenant="logs")
    log_memory.ingest(["\n".join(lines) + "\n"], scope=scope)
    stored = _vectors(log_memory, scope)
    assert len(stored) == len(lines)
    for a, b in SAME:
        # The later line reuses the first one's vector, computed from the first one's own text.
        np.testing.assert_array_equal(stored[b], stored[a])
        assert _own(stored[a], embedder, a)
    for text in DIFFERENT:  # a template seen once keeps its own vector
        assert _own(stored[text], embedder, text)
    # Full-text search still holds each chunk's exact tokens.
    for token, (_, b) in zip(
        ["blk_-6952295868487656571", "blk_-1608999", "R27-M0-N4-C:J18-U01"], SAME, strict=False
    ):
        assert log_memory.search(token, scope=scope, k=1)[0].text.rstrip("\n") == b


def test_vectors_are_shared_only_inside_one_scope(log_memory) -> None:
    embedder = log_memory.embedder
    first, second = Scope(tenant="a"), Scope(tenant="b")
    log_memory.ingest([SAME[0][0] + "\n"], scope=first)
    log_memory.ingest([SAME[0][1] + "\n" + SAME[0][0] + "\n"], scope=second)
    theirs = _vectors(log_memory, second)
    # Scope b's first line gets its own vector, not scope a's for the same template.
    assert _own(theirs[SAME[0][1]], embedder, SAME[0][1])
    assert float(theirs[SAME[0][1]] @ embedder.embed([SAME[0][0]])[0]) < 0.9999


def test_sharing_can_be_turned_off(tmp_path) -> None:
    config = MemoryConfig(chunk_bytes=64, share_template_vectors=False)
    scope = Scope(tenant="logs")
    with HybridMemory.open(tmp_path / "memory", config=config) as memory:
        memory.ingest(["\n".join(SAME[0]) + "\n"], scope=scope)
        stored = _vectors(memory, scope)
        for text in SAME[0]:
            assert _own(stored[text], memory.embedder, text)


def test_template_vectors_remember_a_bounded_number(log_memory) -> None:
    embedder = log_memory.embedder
    shared = TemplateVectors(embedder.embed, capacity=2)
    texts = [DIFFERENT[0], DIFFERENT[1], DIFFERENT[2], SAME[0][1], DIFFERENT[3], DIFFERENT[1]]
    got = np.concatenate([shared.vectors([t]) for t in texts])
    # SAME[0][1] shares DIFFERENT[0]'s template, which has been forgotten by then.
    assert all(_own(v, embedder, t) for v, t in zip(got, texts, strict=True))
    assert (shared.chunks, shared.embedded) == (6, 6)
    again = shared.vectors([DIFFERENT[3], SAME[0][0], SAME[0][1]])
    np.testing.assert_array_equal(again[2], again[1])
    assert (shared.chunks, shared.embedded) == (9, 7)


def test_remembered_vectors_stay_with_their_template_as_the_store_grows(log_memory) -> None:
    """150 templates, remembered ten calls at a time (the store grows from 64 rows by
    doubling): asked for again, each comes back from the store, not the embedder, as the
    vector first computed for it within float16's rounding, of unit norm."""
    embedder = log_memory.embedder
    names = [chr(97 + i // 26) + chr(97 + i % 26) for i in range(150)]
    texts = [f"worker {name} lost its lease and stopped" for name in names]
    shared = TemplateVectors(embedder.embed, capacity=1000)
    first = np.concatenate([shared.vectors(texts[i : i + 10]) for i in range(0, 150, 10)])
    assert shared.embedded == 150
    again = shared.vectors(texts)
    assert (shared.chunks, shared.embedded) == (300, 150)
    np.testing.assert_allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-6)
    assert np.abs(again - first).max() < 1e-3
    # Another template's vector would be further off than that.
    assert np.abs(first[1:] - first[:-1]).max(axis=1).min() > 1e-2
