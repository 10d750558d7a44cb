"""The LangChain adapters: LangChain's own standard suites, plus scope isolation, filters, route
metadata and errors, on real memories (SQLite, FAISS, the MiniLM embedder)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

pytest.importorskip("langchain_core", reason="the langchain extra: pip install -e '.[langchain]'")
pytest.importorskip("langchain_tests", reason="the dev extra: pip install -e '.[dev]'")

from langchain_core.documents import Document
from langchain_tests.integration_tests import (
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

from memsdk import DuplicateError, FilterError, HybridMemory, InputError, MemoryConfig, Scope
from memsdk.integrations.langchain import (
    MemsdkEmbeddings,
    MemsdkRetriever,
    MemsdkVectorStore,
    memory_tool,
)

SCOPE = Scope(tenant="lc", user="u1")
NOTEPAD_ONLY = MemoryConfig(weight_memory=False)


class TestMemsdkVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path) -> Iterator[MemsdkVectorStore]:
        with HybridMemory.open(tmp_path / "m", config=NOTEPAD_ONLY) as mem:
            yield MemsdkVectorStore(mem, scope=SCOPE)


_ROUTED: dict[str, HybridMemory] = {}


def _routed_memory() -> HybridMemory:
    """One memory with the weight memory on, shared by the retriever suite (its constructor
    parameters are a property, not a fixture)."""
    if "memory" not in _ROUTED:
        directory = tempfile.mkdtemp(prefix="memsdk-lc-")
        mem = HybridMemory.open(directory)
        lines = [
            f"2026-11-0{d} 10:0{d}:00 vpn-gw-{d} kernel: tun0 down after resume (ticket 48{d}0)\n"
            for d in range(1, 8)
        ]
        for line in lines:  # one chunk each
            mem.add(line, scope=SCOPE, metadata={"source": "vpn.log"})
        mem.flush()
        _ROUTED.update(memory=mem, directory=directory)  # type: ignore[dict-item]
    return _ROUTED["memory"]


@pytest.fixture(scope="module", autouse=True)
def _close_routed_memory() -> Iterator[None]:
    yield
    if "memory" in _ROUTED:
        _ROUTED["memory"].close()
        shutil.rmtree(_ROUTED["directory"], ignore_errors=True)  # type: ignore[arg-type]
        _ROUTED.clear()


class TestMemsdkRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[MemsdkRetriever]:
        return MemsdkRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"memory": _routed_memory(), "scope": SCOPE, "max_bytes": 16}

    @property
    def retriever_query_example(self) -> str:
        return "vpn-gw-3 kernel: tun0"


# ---- our own checks -----------------------------------------------------------------------------


@pytest.fixture
def notepad(tmp_path) -> Iterator[HybridMemory]:
    with HybridMemory.open(tmp_path / "m", config=NOTEPAD_ONLY) as mem:
        yield mem


def test_scopes_stay_apart_through_the_store(notepad):
    acme = MemsdkVectorStore(notepad, scope=Scope(tenant="acme"))
    initech = MemsdkVectorStore(notepad, scope=Scope(tenant="initech"))
    ids = acme.add_texts(["acme payroll runs on host pay-01"], ids=["a1"])
    initech.add_texts(["initech payroll runs on host tps-02"], ids=["i1"])
    assert ids == ["a1"]
    assert [d.id for d in initech.similarity_search("payroll host", k=5)] == ["i1"]
    assert initech.get_by_ids(["a1"]) == []
    initech.delete(["a1"])  # another scope's id is not there to delete
    assert [d.page_content for d in acme.get_by_ids(["a1"])] == ["acme payroll runs on host pay-01"]


def test_filters_relevance_scores_and_long_texts(notepad):
    store = MemsdkVectorStore(notepad, scope=SCOPE)
    long_text = "".join(f"line {i}: the nightly backup of db-{i} finished\n" for i in range(40))
    store.add_texts(
        ["VPN drops after sleep", "Printer on floor 3 jams", long_text],
        metadatas=[{"ticket": 4812}, {"ticket": 17}, {"ticket": 5000}],
        ids=["t1", "t2", "t3"],
    )
    docs = store.similarity_search("vpn sleep", k=5, filter={"ticket": {"gte": 4000}})
    assert {d.id for d in docs} <= {"t1", "t3"} and docs[0].id == "t1"
    assert docs[0].metadata == {"ticket": 4812}  # memsdk's own key stays hidden
    scored = store.similarity_search_with_relevance_scores("printer jams", k=2)
    assert scored[0][0].id == "t2" and all(0.0 <= s <= 1.0 for _, s in scored)
    (whole,) = store.get_by_ids(["t3"])
    assert whole.page_content == long_text  # several chunks, joined back in order
    assert len(notepad.get_all(scope=SCOPE, filters={"langchain_id": "t3"})) > 1
    store.delete(["t3"])
    assert store.get_by_ids(["t3"]) == []
    with pytest.raises(FilterError):
        store.similarity_search("vpn", filter={"ticket": {"bogus": 1}})


def test_store_errors_name_the_problem(notepad):
    store = MemsdkVectorStore(notepad, scope=SCOPE)
    store.add_texts(["the same words"], ids=["x"])
    with pytest.raises(DuplicateError, match="one copy of identical content"):
        store.add_texts(["the same words"], ids=["y"])
    assert store.get_by_ids(["y"]) == []
    with pytest.raises(InputError, match="2 texts and 1 metadatas"):
        store.add_texts(["a", "b"], metadatas=[{}])
    with pytest.raises(InputError, match="reserved"):
        store.add_texts(["c"], metadatas=[{"langchain_id": "z"}])
    with pytest.raises(InputError, match=r"scope must be a memsdk\.Scope"):
        MemsdkVectorStore(notepad, scope="acme")
    with pytest.raises(InputError, match="own MiniLM model"):
        MemsdkVectorStore.from_texts(["t"], object(), memory=notepad, scope=SCOPE)
    built = MemsdkVectorStore.from_texts(["from texts"], memory=notepad, scope=SCOPE, ids=["f"])
    assert built.get_by_ids(["f"])[0].page_content == "from texts"


def test_the_embeddings_are_the_notepad_embedder():
    embeddings = MemsdkEmbeddings()
    vectors = embeddings.embed_documents(["VPN drops after sleep", "printer jam"])
    query = embeddings.embed_query("VPN drops after sleep")
    assert len(vectors) == 2 and len(query) == 384
    assert abs(sum(a * b for a, b in zip(vectors[0], query, strict=True)) - 1.0) < 1e-4


def test_the_retriever_carries_the_route_and_the_tool_answers():
    mem = _routed_memory()
    retriever = MemsdkRetriever(memory=mem, scope=SCOPE, k=2, max_bytes=40)
    docs = retriever.invoke("2026-11-05 10:05:00 vpn-gw-5 kernel:")
    assert len(docs) == 2
    first = docs[0]
    assert "vpn-gw-5" in first.page_content
    assert first.metadata["memsdk_route"] in ("notepad", "weights", "both")
    assert first.metadata["memsdk_reason"].startswith(first.metadata["memsdk_route"])
    assert first.metadata["memsdk_completion"].startswith(" tun0 down")  # copied from the log
    weights = MemsdkRetriever(memory=mem, scope=SCOPE, route="weights", max_bytes=10)
    (only,) = weights.invoke("2026-11-05 10:05:00 vpn-gw-5")
    assert only.metadata["memsdk_route"] == "weights"
    assert only.page_content.startswith("2026-11-05 10:05:00 vpn-gw-5")
    other = MemsdkRetriever(memory=mem, scope=Scope(tenant="nobody"))
    assert other.invoke("vpn-gw-5 kernel") == []
    tool = memory_tool(mem, scope=SCOPE, k=1)
    out = tool.invoke({"query": "2026-11-05 10:05:00 vpn-gw-5 kernel:"})
    assert "vpn-gw-5" in out
    assert isinstance(Document(page_content=out), Document)
