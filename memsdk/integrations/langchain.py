"""LangChain adapters: a vector store over the notepad, a routed retriever, a retriever tool and
the MiniLM embeddings. Install with the ``langchain`` extra (``pip install memsdk[langchain]``).

This is the only module of memsdk that imports ``langchain_core``::

    from memsdk import HybridMemory, Scope
    from memsdk.integrations.langchain import MemsdkRetriever, MemsdkVectorStore

    mem = HybridMemory.open("./agent-memory")
    scope = Scope(tenant="acme", user="u1")
    store = MemsdkVectorStore(mem, scope=scope)
    store.add_texts(["VPN drops after sleep on vpn-gw-2"], metadatas=[{"ticket": 4812}])
    docs = store.similarity_search("vpn outage", k=4, filter={"ticket": {"gte": 4000}})
    retriever = MemsdkRetriever(memory=mem, scope=scope, k=4)  # routed: HybridMemory.query
    docs = retriever.invoke("vpn-gw-2 kernel: tun0")

Ids. A LangChain id names one text added through :class:`MemsdkVectorStore`; memsdk may cut a
long text into several chunks, and every chunk carries the id in its metadata under
``langchain_id`` (hidden from the metadata LangChain sees). Search returns chunks (the
``Document`` of a chunk has its text's id); ``get_by_ids`` returns whole texts. Chunks stored
by other means (``HybridMemory.ingest``) have the id ``memsdk:<chunk id>``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, create_retriever_tool
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict

from memsdk.errors import DuplicateError, InputError, NotFoundError
from memsdk.memory import HybridMemory
from memsdk.replace import replace_text
from memsdk.results import MemoryItem
from memsdk.scope import Scope
from memsdk.shared_parts import shared_embedder

__all__ = ["MemsdkEmbeddings", "MemsdkRetriever", "MemsdkVectorStore", "memory_tool"]

ID_KEY = "langchain_id"
CHUNK_ID_PREFIX = "memsdk:"
MAX_PAGE = 1000


class MemsdkEmbeddings(Embeddings):
    """The embedder memsdk's notepad uses (all-MiniLM-L6-v2, 384 dimensions, L2-normalised,
    run offline in plain torch), as LangChain ``Embeddings``."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not all(isinstance(t, str) for t in texts):
            raise InputError("embed_documents takes a list of str")
        if not texts:
            return []
        return shared_embedder().embed(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        if not isinstance(text, str):
            raise InputError(f"embed_query takes a str, got {type(text).__name__}")
        return shared_embedder().embed_query(text).tolist()


def _check_memory(memory: Any, scope: Any) -> None:
    if not isinstance(memory, HybridMemory):
        raise InputError(
            f"memory must be a memsdk.HybridMemory, got {type(memory).__name__}: "
            "open one with HybridMemory.open(path)"
        )
    if not isinstance(scope, Scope):
        raise InputError(
            f"scope must be a memsdk.Scope, got {type(scope).__name__}: "
            "pass scope=Scope(tenant=..., user=...)"
        )


def _document(item: MemoryItem, *, text: str | None = None) -> Document:
    """A chunk as a Document: its text's LangChain id, the metadata without memsdk's key."""
    metadata = {k: v for k, v in item.metadata.items() if k != ID_KEY}
    doc_id = item.metadata.get(ID_KEY, f"{CHUNK_ID_PREFIX}{item.id}")
    return Document(
        id=str(doc_id), page_content=item.text if text is None else text, metadata=metadata
    )


class MemsdkVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over the notepad of one memory, bound to one scope.

    Search is memsdk's hybrid search (exact tokens and MiniLM vectors fused, identifiers held
    verbatim first; see ``HybridMemory.search``); scores are cosine similarities, relevance
    scores ``(1 + cosine) / 2`` in [0, 1]. ``filter`` takes memsdk's filter syntax
    (``{"ticket": {"gte": 4000}}``, ``AND`` / ``OR`` / ``NOT``). Texts added here also feed the
    scope's weight memory, like any other write.

    Args:
        memory: an open ``HybridMemory``.
        scope: every read and write of this store stays in this scope.

    Raises:
        InputError: ``memory`` or ``scope`` of the wrong type.
    """

    def __init__(self, memory: HybridMemory, *, scope: Scope) -> None:
        _check_memory(memory, scope)
        self.memory = memory
        self.scope = scope

    @property
    def embeddings(self) -> Embeddings:
        return MemsdkEmbeddings()

    def _chunks(self, ids: Iterable[str]) -> dict[str, list[MemoryItem]]:
        """Per LangChain id, its chunks in text order (ids without chunks are absent)."""
        found: dict[str, list[MemoryItem]] = {}
        for doc_id in ids:
            if doc_id.startswith(CHUNK_ID_PREFIX) and doc_id[len(CHUNK_ID_PREFIX) :].isdigit():
                try:
                    item = self.memory.get(int(doc_id[len(CHUNK_ID_PREFIX) :]), scope=self.scope)
                except (NotFoundError, InputError):  # InputError: an id past 64 bits
                    continue
                found[doc_id] = [item]
                continue
            items = self.memory.get_all(scope=self.scope, filters={ID_KEY: doc_id}, limit=MAX_PAGE)
            if items:
                found[doc_id] = sorted(items, key=lambda i: (i.document_id or 0, i.seq))
        return found

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store each text (a long one becomes several chunks) and return its id. A text whose
        id is already stored replaces it (upsert) in one transaction: when the new text is
        refused, the old one stays.

        Raises:
            InputError: lengths of ``texts``, ``metadatas`` and ``ids`` differ; an empty text;
                bad metadata; unsupported keyword arguments.
            DuplicateError: the scope already holds a chunk identical to one of the text's
                (memsdk keeps one copy of identical content per scope); nothing of that text
                is stored.
            StorageError: the database refused the write; nothing of that text is stored.
        """
        if kwargs:
            raise InputError(f"add_texts got unsupported arguments: {sorted(kwargs)}")
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise InputError(f"got {len(texts)} texts and {len(metadatas)} metadatas")
        if ids is not None and len(ids) != len(texts):
            raise InputError(f"got {len(texts)} texts and {len(ids)} ids")
        ids = [str(i) if i else uuid.uuid4().hex for i in (ids or [None] * len(texts))]
        for text, metadata, doc_id in zip(texts, metadatas or [{}] * len(texts), ids, strict=True):
            if ID_KEY in (metadata or {}):
                raise InputError(f"metadata key {ID_KEY!r} is reserved for the document id")
            # The old text goes in the transaction that stores the new one: a refused text
            # leaves it in place.
            old = [item.id for items in self._chunks([doc_id]).values() for item in items]
            try:
                replace_text(
                    self.memory,
                    old,
                    text,
                    scope=self.scope,
                    metadata={**(metadata or {}), ID_KEY: doc_id},
                )
            except DuplicateError as exc:
                raise DuplicateError(
                    f"text {doc_id!r} repeats content this scope already holds (memsdk keeps "
                    "one copy of identical content per scope): search for it, or add a text "
                    "that differs"
                ) from exc
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the texts with these ids (ids not stored are ignored); ``ids=None`` deletes
        everything in the scope. Returns True.

        Raises:
            InputError: unsupported keyword arguments.
        """
        if kwargs:
            raise InputError(f"delete got unsupported arguments: {sorted(kwargs)}")
        if ids is None:
            self.memory.delete_all(scope=self.scope)
            return True
        for items in self._chunks(ids).values():
            for item in items:
                self.memory.delete(item.id, scope=self.scope)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored texts with these ids, whole; missing ids are left out."""
        out = []
        for items in self._chunks(ids).values():
            out.append(_document(items[0], text="".join(i.text for i in items)))
        return out

    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Up to ``k`` chunks best first, each with its cosine similarity to the query (0.0
        for a chunk found only by its exact tokens).

        Raises:
            InputError: an empty query, a bad ``k``; unsupported keyword arguments.
            FilterError: a malformed ``filter``.
        """
        if kwargs:
            raise InputError(f"similarity search got unsupported arguments: {sorted(kwargs)}")
        hits = self.memory.search(query, scope=self.scope, k=k, filters=filter)
        return [(_document(h), h.similarity if h.similarity is not None else 0.0) for h in hits]

    def similarity_search(
        self,
        query: str,
        k: int = 4,
        filter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Up to ``k`` chunks, best first (see :meth:`similarity_search_with_score`)."""
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda cosine: (1.0 + cosine) / 2.0

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        memory: HybridMemory | None = None,
        scope: Scope | None = None,
        **kwargs: Any,
    ) -> MemsdkVectorStore:
        """A store over ``memory`` and ``scope`` holding ``texts``.

        Raises:
            InputError: no memory or scope; an ``embedding`` other than
                :class:`MemsdkEmbeddings` (the notepad embeds with its own model).
        """
        if kwargs:
            raise InputError(f"from_texts got unsupported arguments: {sorted(kwargs)}")
        if embedding is not None and not isinstance(embedding, MemsdkEmbeddings):
            raise InputError(
                f"memsdk's notepad embeds with its own MiniLM model, got "
                f"{type(embedding).__name__}: pass MemsdkEmbeddings() or None"
            )
        if memory is None or scope is None:
            raise InputError("from_texts needs memory=HybridMemory.open(path) and scope=Scope(...)")
        store = cls(memory, scope=scope)
        store.add_texts(texts, metadatas, ids=ids)
        return store


class MemsdkRetriever(BaseRetriever):
    """A LangChain retriever over ``HybridMemory.query``: the router picks the notepad, the
    weights or both for each query, and every ``Document`` carries the decision.

    Returns the query's passages as Documents (their metadata, plus ``memsdk_route`` (the
    branch), ``memsdk_reason`` (one line), ``memsdk_completion`` (the weight memory's
    continuation of the query) and ``memsdk_score``). With ``route="weights"`` the notepad is
    not searched, and the one Document returned holds the completion.

    Attributes:
        memory: an open ``HybridMemory``.
        scope: the scope queried.
        k: passages to return (``invoke(query, k=3)`` overrides it for one call).
        route: ``"auto"``, ``"notepad"``, ``"weights"`` or ``"both"``.
        filters: memsdk metadata filters for the notepad search.
        max_bytes: the longest completion.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: HybridMemory
    scope: Scope
    k: int = 4
    route: str = "auto"
    filters: dict[str, Any] | None = None
    max_bytes: int = 200

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        ans = self.memory.query(
            query,
            scope=self.scope,
            route=self.route,
            k=self.k if k is None else k,
            filters=self.filters,
            max_bytes=self.max_bytes,
        )
        route = {
            "memsdk_route": ans.route.branch,
            "memsdk_reason": ans.route.reason,
            "memsdk_completion": ans.completion,
        }
        if not ans.passages and ans.route.branch == "weights":
            return [
                Document(
                    page_content=query + ans.completion,
                    metadata={**route, "memsdk_score": None},
                )
            ]
        docs = []
        for hit in ans.passages:
            doc = _document(hit)
            doc.metadata.update(route, memsdk_score=hit.score)
            docs.append(doc)
        return docs


def memory_tool(
    memory: HybridMemory,
    *,
    scope: Scope,
    name: str = "memory",
    description: str = (
        "Look up the agent's long memory (tickets, logs, documents it has ingested). Input: "
        "the words the answer should follow, or an identifier, e.g. 'blk_-1608999687919862906' "
        "or 'ticket 4812 root cause'. Returns the passages and the memory's continuation."
    ),
    k: int = 4,
    route: str = "auto",
) -> BaseTool:
    """A tool an agent calls to query the memory (a LangChain retriever tool over
    :class:`MemsdkRetriever`).

    Raises:
        InputError: ``memory`` or ``scope`` of the wrong type.
    """
    _check_memory(memory, scope)
    retriever = MemsdkRetriever(memory=memory, scope=scope, k=k, route=route)
    return create_retriever_tool(retriever, name, description)
