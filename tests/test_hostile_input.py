"""Hostile input, property-based: arbitrary text and bytes, malformed filters and metadata,
scope names made of path separators and SQL, forged or truncated files. Each gets a clear
memsdk error or correct behaviour; nothing stored is changed by a refused call; no file is
ever executed (no pickle is read anywhere)."""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsdk import (
    DuplicateError,
    FilterError,
    FormatError,
    HybridMemory,
    IndexCorruptedError,
    InputError,
    MemoryConfig,
    MemsdkError,
    Scope,
)
from memsdk.engine import TTTState, load_model, make_delta, read_delta, stream
from memsdk.stores.manifest import read_manifest
from memsdk.stores.vector_index import VectorIndex
from memsdk.stores.weights import WeightDeltas

SCOPE = Scope(tenant="hostile")
EXAMPLES = {"text": 80, "filters": 150, "metadata": 80, "scopes": 40, "files": 60}
TRIED: dict[str, int] = {}  # examples hypothesis ran, per test, for RELIABILITY.md


def _tried(figures, name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1
    figures.record("hostile", **TRIED)


SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@pytest.fixture(scope="module")
def memory(tmp_path_factory, database):
    path = tmp_path_factory.mktemp("hostile") / "memory"
    with HybridMemory.open(path) as mem:
        mem.ingest(
            [f'node-{i} said "NEAR" AND (OR) * ^ {{x}} \' -- ; ok {i}\n' for i in range(40)],
            scope=SCOPE,
            name="odd",
            metadata={"ticket": 7, "team": "net"},
        )
        yield mem


def _count(mem: HybridMemory, scope: Scope = SCOPE) -> int:
    return len(mem.get_all(scope=scope, limit=100_000))


@settings(max_examples=EXAMPLES["text"], **SETTINGS)
@given(data=st.one_of(st.text(max_size=2000), st.binary(max_size=2000)))
def test_any_text_or_bytes_is_stored_exactly_or_refused(memory, data, figures) -> None:
    _tried(figures, "text_and_bytes")
    before = _count(memory)
    try:
        result = memory.add(data, scope=SCOPE)
    except InputError as exc:
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        assert not raw.strip(), exc
        assert _count(memory) == before
        return
    assert _count(memory) == before + len(result.ids)
    if result.duplicates_skipped == 0:
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        stored = b"".join(memory.get(i, scope=SCOPE).data for i in result.ids)
        assert stored == raw


@settings(max_examples=EXAMPLES["text"] // 2, **SETTINGS)
@given(pieces=st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8))
def test_any_stream_of_pieces_ingests(memory, pieces, figures) -> None:
    _tried(figures, "streams")
    report = memory.ingest(pieces, scope=SCOPE, name="pieces")
    raw = b"".join(
        p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p for p in pieces
    )
    assert report.bytes == len(raw)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["ticket", "team", "AND", "OR", "NOT", "eq", "gte", "in", "contains", "", "$where", "a.b"]
)
_filters = st.recursive(
    st.dictionaries(_keys | st.text(max_size=6), _json, max_size=3),
    lambda inner: st.dictionaries(_keys, inner | st.lists(inner, max_size=3) | _json, max_size=3),
    max_leaves=10,
)


@settings(max_examples=EXAMPLES["filters"], **SETTINGS)
@given(filters=st.one_of(_filters, _json))
def test_any_filter_selects_or_is_a_filter_error(memory, filters, figures) -> None:
    _tried(figures, "filters")
    before = _count(memory)
    for call in (
        lambda: memory.search("node-3 said", scope=SCOPE, k=3, filters=filters),
        lambda: memory.get_all(scope=SCOPE, filters=filters, limit=5),
    ):
        try:
            results = call()
        except FilterError as exc:
            assert "filter" in str(exc).lower()
            continue
        assert all(r.scope == SCOPE for r in results)
    assert _count(memory) == before


@settings(max_examples=EXAMPLES["metadata"], **SETTINGS)
@given(metadata=st.one_of(_json, st.dictionaries(st.text(max_size=10), _json, max_size=4)))
def test_any_metadata_round_trips_or_is_refused(memory, metadata, figures) -> None:
    _tried(figures, "metadata")
    text = f"metadata probe {uuid.uuid4()}"  # hypothesis seeds `random`: uuid4 is unique
    before = _count(memory)
    try:
        (memory_id,) = memory.add(text, scope=SCOPE, metadata=metadata).ids
    except InputError as exc:
        assert "metadata" in str(exc)
        assert _count(memory) == before
        return
    stored = memory.get(memory_id, scope=SCOPE).metadata
    assert json.loads(json.dumps(stored)) == stored


_names = st.text(min_size=1, max_size=40).filter(str.strip) | st.sampled_from(
    ["../../etc/passwd", "a/b\\c", "'; DROP TABLE chunks; --", "%", "_", "\u202e", "x" * 256, ".."]
)


@settings(max_examples=EXAMPLES["scopes"], **SETTINGS)
@given(tenant=_names, user=_names)
def test_any_scope_name_is_plain_data(memory, tenant, user, figures) -> None:
    _tried(figures, "scope_names")
    try:
        scope = Scope(tenant=tenant, user=user)
    except (InputError, ValueError) as exc:
        assert "tenant" in str(exc) or "user" in str(exc) or "scope" in str(exc).lower()
        return
    text = f"owned by {tenant!r}/{user!r}"
    with contextlib.suppress(DuplicateError):
        memory.add(text, scope=scope)
    assert [i.text for i in memory.get_all(scope=scope)][-1] == text
    assert all(i.scope == scope for i in memory.search("owned by", scope=scope, k=5))
    assert _count(memory) >= 40  # the other scope's chunks are all there
    files = {p.relative_to(memory.path).parts[0] for p in memory.path.rglob("*")}
    assert files <= {
        "manifest.json",
        "memory.db",
        "memory.db-wal",
        "memory.db-shm",
        "notepad.faiss",
        "weights",
        "router",
    }


# ---- forged and truncated files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    model = load_model()[0]
    state = TTTState(model)
    stream(state, "2026-11-22 vpn-gw-1 kernel: tun0 down\n" * 40, final=True)
    index = VectorIndex(4)
    path = tmp_path_factory.mktemp("files") / "index.faiss"
    index.add(np.arange(3, dtype=np.int64), np.eye(3, 4, dtype=np.float32))
    index.save(path)
    return {
        "model": model,
        "delta": make_delta(state, state.initial_weights()),
        "state": state.to_bytes(),
        "index": path.read_bytes(),
    }


def _mutate(data: bytes, how: str, rng: random.Random) -> bytes:
    if how == "truncate":
        return data[: rng.randrange(len(data))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if how == "header":  # a forged header length or JSON
        size = int.from_bytes(data[:8], "little")
        header = data[8 : 8 + size].replace(b'"', b"'", rng.randint(1, 3))
        return rng.choice([(2**63).to_bytes(8, "little"), data[:8]]) + header + data[8 + size :]
    return b"\x80\x04" + data  # a pickle opcode prefix


@settings(max_examples=EXAMPLES["files"], **SETTINGS)
@given(
    kind=st.sampled_from(["delta", "state", "index"]),
    how=st.sampled_from(["truncate", "flip", "header", "prefix"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_forged_or_truncated_files_are_format_errors(
    valid_files, tmp_path, kind, how, seed, figures
):
    _tried(figures, "forged_files")
    data = _mutate(valid_files[kind], how, random.Random(seed))
    try:
        if kind == "delta":
            read_delta(data)
        elif kind == "state":
            TTTState.from_bytes(data, valid_files["model"])
        else:
            path = tmp_path / f"forged-{seed}.faiss"
            path.write_bytes(data)
            VectorIndex.load(path, dim=4)
    except (FormatError, IndexCorruptedError):
        pass  # a flipped bit in a value (not the header) can leave a valid file: also fine


def _pickle_that_creates(path: Path) -> bytes:
    """A pickle (protocol 0, written out by hand) whose loading calls ``open(path, "w")``,
    creating the file: proof, if the file never appears, that nothing unpickled it."""
    return f"cbuiltins\nopen\n(V{path}\nVw\ntR.".encode()


def test_a_pickle_planted_in_a_memory_is_never_executed(tmp_path, caplog) -> None:
    memory = tmp_path / "memory"
    with HybridMemory.open(memory) as mem:
        mem.ingest(["vpn-gw-1 kernel: tun0 down\n"] * 3 + ["vpn-gw-2 up\n"], scope=SCOPE, name="a")
        mem.flush()
    deltas = WeightDeltas(memory)
    (scope_id,) = deltas.scope_ids()
    trap = tmp_path / "executed"
    payload = _pickle_that_creates(trap)
    for version in deltas.versions(scope_id):
        deltas.write(scope_id, version, payload)
    with HybridMemory.open(memory) as mem:  # the weight memory is rebuilt from SQL
        assert mem.search("tun0", scope=SCOPE, k=1)[0].text.startswith("vpn-gw-1")
        mem.flush()
        assert mem.stats().scopes[0].weights.bytes_absorbed == mem.stats().scopes[0].bytes
    assert "rebuilding the weight memory" in caplog.text
    (memory / "notepad.faiss").write_bytes(payload)
    with pytest.raises(IndexCorruptedError, match="rebuild-index"):
        HybridMemory.open(memory)
    (memory / "manifest.json").write_bytes(payload)
    with pytest.raises(FormatError, match="manifest"):
        read_manifest(memory)
    with pytest.raises(MemsdkError):
        HybridMemory.open(memory, config=MemoryConfig())
    assert not trap.exists()
