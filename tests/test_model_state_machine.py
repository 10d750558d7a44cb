"""The public API against a plain model: hypothesis drives add, update, delete, delete_all,
reopen and LangChain upserts over a few scopes, and after every step each scope must hold
exactly the bytes a dict of its memories says, nothing of another scope, and a refused call
must have changed nothing.

2,000 examples run by default (about two minutes on 2 cores: the notepad alone, one memory
shared by every example, each example under fresh tenant names); ``MEMSDK_SLOW=1`` runs
20,000. A short run with the weight memory on checks that a deleted scope's weights are back
to an empty scope's and that no scope's completions come from another's data.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from memsdk import (
    DuplicateError,
    HybridMemory,
    InputError,
    MemoryConfig,
    NotFoundError,
    Scope,
)

pytest.importorskip("langchain_core", reason="the langchain extra: pip install -e '.[langchain]'")
from memsdk.integrations.langchain import MemsdkVectorStore

SLOW = os.environ.get("MEMSDK_SLOW") == "1"
EXAMPLES = int(os.environ.get("MEMSDK_MODEL_EXAMPLES", 20_000 if SLOW else 2_000))
WEIGHT_EXAMPLES = 60 if SLOW else 6
NOTEPAD_ONLY = MemoryConfig(weight_memory=False, index_save_interval_s=3600.0)
TRIED: dict[str, int] = {}

# Payloads: a few words, raw bytes (invalid UTF-8, NUL), blanks; short enough to be one chunk,
# from a small alphabet so duplicates, within and across scopes, are frequent.
_pieces = st.sampled_from(
    [b"alpha ", b"beta ", b"gamma ", b"\x00", b"\xff\xfe", b"\xc3\xa9", b"42 ", b"\n", b" ", b"\t"]
)
PAYLOADS = st.lists(_pieces, min_size=0, max_size=6).map(b"".join)


def _as_given(data: bytes, as_str: bool) -> str | bytes:
    """The payload as the caller passes it: bytes, or a str whose U+DC80..U+DCFF stand for the
    bytes that are not UTF-8 (what add() stores as those bytes)."""
    return data.decode("utf-8", "surrogateescape") if as_str else data


def _stored(item) -> bytes:
    return item.raw if item.raw is not None else item.text.encode("utf-8")


class _Shared:
    """One memory for every example of a run (opening one per example would dominate)."""

    memory: HybridMemory | None = None
    path: Path | None = None
    config: MemoryConfig = NOTEPAD_ONLY


class MemoryModel(RuleBasedStateMachine):
    """Three scopes of fresh tenants; ``model[s]`` maps memory id -> stored bytes, ``lc[s]``
    maps a LangChain id -> the memory ids of its text."""

    memories = Bundle("memories")

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:10]
        self.scopes = [Scope(tenant=f"t{run}-{n}") for n in range(3)]
        self.model: dict[int, dict[int, bytes]] = {n: {} for n in range(3)}
        self.lc: dict[int, dict[str, list[int]]] = {n: {} for n in range(3)}
        self.emptied: set[int] = set()  # scopes whose last write was a delete_all
        self.touched: set[int] = set()  # scopes the current step called into

    @property
    def mem(self) -> HybridMemory:
        assert _Shared.memory is not None
        return _Shared.memory

    def _forget_lc(self, s: int, ids: list[int]) -> None:
        for key, held in list(self.lc[s].items()):
            left = [i for i in held if i not in ids]
            if left:
                self.lc[s][key] = left
            else:
                del self.lc[s][key]

    # ---- writes ----------------------------------------------------------------------------

    @rule(target=memories, s=st.integers(0, 2), data=PAYLOADS, as_str=st.booleans())
    def add(self, s: int, data: bytes, as_str: bool):
        scope = self.scopes[s]
        self.touched.add(s)
        if not data.strip():
            with pytest.raises(InputError):
                self.mem.add(_as_given(data, as_str), scope=scope)
            return (s, None)
        result = self.mem.add(_as_given(data, as_str), scope=scope)
        if data in self.model[s].values():
            assert result.ids == [] and result.duplicates_skipped == 1
            return (s, None)
        (memory_id,) = result.ids
        assert memory_id not in self.model[s]
        self.model[s][memory_id] = data
        self.emptied.discard(s)
        return (s, memory_id)

    @rule(s=st.integers(0, 2), data=PAYLOADS)
    def add_with_bad_metadata(self, s: int, data: bytes):
        self.touched.add(s)
        with pytest.raises(InputError):
            self.mem.add(data or b"x", scope=self.scopes[s], metadata={"x": float("nan")})

    @rule(
        target=memories,
        pick=memories,
        other=st.integers(0, 2),
        data=PAYLOADS,
        as_str=st.booleans(),
    )
    def update(self, pick, other: int, data: bytes, as_str: bool):
        owner, memory_id = pick
        self.touched.update({owner, other})
        if memory_id is None:
            return pick
        scope = self.scopes[other]
        if not data.strip():  # the text is checked first, whatever the id
            with pytest.raises(InputError):
                self.mem.update(memory_id, scope=scope, text=_as_given(data, as_str))
            return pick
        if memory_id not in self.model[other]:  # deleted, or another scope's
            with pytest.raises(NotFoundError):
                self.mem.update(memory_id, scope=scope, text=_as_given(data, as_str))
            return pick
        held = {v: k for k, v in self.model[other].items()}
        if data in held and held[data] != memory_id:
            with pytest.raises(DuplicateError):
                self.mem.update(memory_id, scope=scope, text=_as_given(data, as_str))
            return pick
        item = self.mem.update(memory_id, scope=scope, text=_as_given(data, as_str))
        assert _stored(item) == data
        self.model[other][memory_id] = data
        return pick

    @rule(pick=consumes(memories), other=st.integers(0, 2))
    def delete(self, pick, other: int):
        owner, memory_id = pick
        self.touched.update({owner, other})
        if memory_id is None:
            return
        if memory_id not in self.model[other]:
            with pytest.raises(NotFoundError):
                self.mem.delete(memory_id, scope=self.scopes[other])
            return
        self.mem.delete(memory_id, scope=self.scopes[other])
        del self.model[other][memory_id]
        self._forget_lc(other, [memory_id])

    @rule(s=st.integers(0, 2))
    def delete_all(self, s: int):
        self.touched.add(s)
        deleted = self.mem.delete_all(scope=self.scopes[s])
        assert deleted == len(self.model[s])
        self.model[s].clear()
        self.lc[s].clear()
        self.emptied.add(s)

    @rule(s=st.integers(0, 2), key=st.sampled_from(["a", "b", "c"]), data=PAYLOADS)
    def upsert(self, s: int, key: str, data: bytes):
        """MemsdkVectorStore.add_texts with an id: replaces that id's text, or is refused
        and changes nothing."""
        self.touched.add(s)
        store = MemsdkVectorStore(self.mem, scope=self.scopes[s])
        text = data.decode("utf-8", "surrogateescape")
        old = self.lc[s].get(key, [])
        others = {v for k, v in self.model[s].items() if k not in old}
        if not data.strip():
            with pytest.raises(InputError):
                store.add_texts([text], ids=[key])
            return
        if data in others:
            with pytest.raises(DuplicateError):
                store.add_texts([text], ids=[key])
            return
        assert store.add_texts([text], ids=[key]) == [key]
        for memory_id in old:
            del self.model[s][memory_id]
        (item,) = [i for i in self.mem.get_all(scope=self.scopes[s]) if i.id not in self.model[s]]
        assert _stored(item) == data
        self.model[s][item.id] = data
        self.lc[s][key] = [item.id]
        self.emptied.discard(s)

    @rule(now=st.integers(0, 3))
    def reopen(self, now: int):
        """Close and open the memory again (one draw in four: opening dominates a step)."""
        if now == 0:
            self.mem.close()
            _Shared.memory = HybridMemory.open(_Shared.path, config=_Shared.config)
            self.touched.update(range(3))

    # ---- what must hold --------------------------------------------------------------------

    def _check(self, s: int) -> None:
        items = self.mem.get_all(scope=self.scopes[s], limit=1000)
        assert {i.id: _stored(i) for i in items} == self.model[s]

    @invariant()
    def each_scope_a_step_touched_holds_exactly_its_model(self):
        """After every step, each scope the step wrote to, read from or was refused in holds
        exactly its model (the other scopes are checked at the end of the example)."""
        for s in sorted(self.touched):
            self._check(s)
        self.touched.clear()

    def teardown(self):
        TRIED["model_examples"] = TRIED.get("model_examples", 0) + 1
        for s, scope in enumerate(self.scopes):
            self._check(s)
            store = MemsdkVectorStore(self.mem, scope=scope)
            for key, ids in self.lc[s].items():
                (doc,) = store.get_by_ids([key])
                assert doc.page_content == self.mem.get(ids[0], scope=scope).text
            # No scope reaches another's memories by id...
            for memory_id in {i for o in range(3) if o != s for i in self.model[o]}:
                with pytest.raises(NotFoundError):
                    self.mem.get(memory_id, scope=scope)
        # ...nor by search (one scope an example: a query embedding costs more than a step).
        s = TRIED["model_examples"] % 3
        hits = self.mem.search("alpha beta gamma 42", scope=self.scopes[s], k=20)
        assert {h.id for h in hits} <= set(self.model[s])


@pytest.fixture
def shared_memory(tmp_path, request):
    # One-text forward passes gain nothing from intra-op threads, and on a loaded machine
    # their spinning costs 40x: the run takes one thread and gives the setting back after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _Shared.path = tmp_path / "m"
    _Shared.config = request.param
    _Shared.memory = HybridMemory.open(_Shared.path, config=_Shared.config)
    yield _Shared
    _Shared.memory.close()
    _Shared.memory = None
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shared_memory", [NOTEPAD_ONLY], indirect=True)
def test_the_api_matches_a_plain_model(shared_memory, figures):
    run = MemoryModel.TestCase
    run.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=8,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    try:
        run().runTest()
    finally:
        figures.record("model", examples=TRIED.get("model_examples", 0), steps_per_example=8)


class WeightedModel(MemoryModel):
    """The same, with the weight memory: at the end of an example every scope's weights have
    absorbed its chunks, a scope emptied by delete_all scores like an empty scope, and no
    scope completes another scope's text."""

    @rule(s=st.integers(0, 2))
    def delete_all(self, s: int):
        self.mem.flush()  # the weights absorb the scope first, so the reset has work to do
        super().delete_all(s)

    def teardown(self):
        super().teardown()
        self.mem.flush()
        blank_scope = Scope(tenant=f"blank-{uuid.uuid4().hex[:8]}")
        probe = b"alpha beta gamma 42 "
        blank = self.mem.bits_per_byte(probe, scope=blank_scope)
        for s in self.emptied:
            assert self.mem.bits_per_byte(probe, scope=self.scopes[s]) == blank
        for s in self.emptied:
            assert self.mem.complete(probe, scope=self.scopes[s]) == self.mem.complete(
                probe, scope=blank_scope
            )


@pytest.mark.slow
@pytest.mark.parametrize("shared_memory", [MemoryConfig()], indirect=True)
def test_the_weight_memory_follows_the_model(shared_memory):
    run = WeightedModel.TestCase
    run.settings = settings(
        max_examples=WEIGHT_EXAMPLES,
        stateful_step_count=8,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    run().runTest()
