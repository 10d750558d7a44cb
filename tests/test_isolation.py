"""Isolation: tenants whose content is nearly identical, each with a secret of its own. No read
path (search, query, get, get_all, history, completion, stats, the LangChain
adapters) returns another tenant's data, and each tenant's weight memory is trained on its own
chunks only."""

from __future__ import annotations

import pytest

from memsdk import HybridMemory, NotFoundError, Scope
from memsdk.engine import TTTState, bits_per_byte, load_model, stream

TENANTS = {
    "acme": Scope(tenant="acme", user="u1"),
    "acme-2": Scope(tenant="acme", user="u2"),  # same tenant, another user: another partition
    "globex": Scope(tenant="globex", user="u1"),
}
LINES = 60


def _secret(name: str, i: int) -> str:
    return f"{name.replace('-', '')}x{i * 7919 % 100003:05d}"


def _stream(name: str) -> list[str]:
    """The same log for every tenant but for one token per line."""
    return [
        f"2026-11-22 10:{i % 60:02d}:00 vpn-gw-{i % 4} kernel: tun{i % 3} down after resume, "
        f"session {_secret(name, i)} dropped\n"
        for i in range(LINES)
    ]


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, database):
    with HybridMemory.open(tmp_path_factory.mktemp("isolation") / "m") as mem:
        ids = {}
        for name, scope in TENANTS.items():
            mem.ingest(_stream(name), scope=scope, name="vpn.log", metadata={"owner": name})
            ids[name] = [i.id for i in mem.get_all(scope=scope, limit=1000)]
        mem.flush()
        yield mem, ids


def _foreign(name: str, text: str) -> list[str]:
    """The other tenants whose secrets appear in ``text``."""
    return [
        other
        for other in TENANTS
        if other != name and any(_secret(other, i) in text for i in range(LINES))
    ]


def test_no_read_path_returns_another_tenants_data(tenants, figures) -> None:
    mem, ids = tenants
    probes = 0
    for name, scope in TENANTS.items():
        for other in TENANTS:
            for i in range(0, LINES, 10):
                secret = _secret(other, i)
                for hit in mem.search(secret, scope=scope, k=5):
                    assert hit.scope == scope and not _foreign(name, hit.text)
                for hit in mem.search(f"session {secret} dropped", scope=scope, k=5, filters={}):
                    assert not _foreign(name, hit.text)
                answer = mem.query(f"2026-11-22 10:{i:02d}:00 vpn-gw-{i % 4}", scope=scope, k=5)
                seen = answer.completion + "".join(p.text for p in answer.passages)
                assert not _foreign(name, seen), answer
                assert not _foreign(name, mem.complete("session ", scope=scope, max_bytes=40))
                probes += 4
        items = mem.get_all(scope=scope, limit=1000)
        assert {i.metadata["owner"] for i in items} == {name}
        assert not mem.get_all(scope=scope, filters={"owner": {"ne": name}})
        for other, other_ids in ids.items():
            if other == name:
                continue
            for memory_id in other_ids[:10]:
                for call in (mem.get, mem.history, mem.delete):
                    with pytest.raises(NotFoundError):
                        call(memory_id, scope=scope)
                with pytest.raises(NotFoundError):
                    mem.update(memory_id, scope=scope, text="overwritten")
                probes += 4
    by_scope = {s.scope: s for s in mem.stats().scopes}
    for name, scope in TENANTS.items():
        assert by_scope[scope].chunks == len(ids[name])
    figures.record("isolation", tenants=len(TENANTS), probes=probes)


def test_each_weight_memory_learns_only_its_own_chunks(tenants) -> None:
    """Each scope's fast weights equal those of a state that streamed its chunks alone."""
    mem, _ = tenants
    model = load_model()[0]
    probe = "".join(_stream("probe")[:20])
    for name, scope in TENANTS.items():
        state = TTTState(model)
        stream(state, "".join(_stream(name)), final=True)
        assert mem.bits_per_byte(probe, scope=scope) == pytest.approx(
            bits_per_byte(state, probe), abs=1e-4
        )
    # The check has teeth: one other tenant's chunk streamed in as well moves the figure.
    leaked = TTTState(model)
    stream(leaked, "".join(_stream("acme")) + _stream("globex")[0], final=True)
    assert (
        abs(bits_per_byte(leaked, probe) - mem.bits_per_byte(probe, scope=TENANTS["acme"])) > 1e-3
    )


def test_langchain_adapters_stay_in_their_scope(tenants) -> None:
    pytest.importorskip(
        "langchain_core", reason="the langchain extra: pip install -e '.[langchain]'"
    )
    from memsdk.integrations.langchain import MemsdkRetriever, MemsdkVectorStore, memory_tool

    mem, ids = tenants
    for name, scope in TENANTS.items():
        store = MemsdkVectorStore(mem, scope=scope)
        retriever = MemsdkRetriever(memory=mem, scope=scope, k=5)
        tool = memory_tool(mem, scope=scope)
        for other in TENANTS:
            secret = _secret(other, 12)
            for doc in store.similarity_search(secret, k=5):
                assert not _foreign(name, doc.page_content)
            for doc in retriever.invoke(f"session {secret}"):
                assert not _foreign(name, doc.page_content)
            assert not _foreign(name, str(tool.invoke({"query": secret})))
        others = [f"memsdk:{i}" for other, o in ids.items() if other != name for i in o[:5]]
        assert store.get_by_ids(others) == []
