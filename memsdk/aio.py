"""AsyncHybridMemory: the same memory for asyncio code, without blocking the event loop.

Every method runs the matching :class:`~memsdk.memory.HybridMemory` method in a worker thread
(``asyncio.to_thread``), so there is one implementation underneath and the async twin returns
exactly what the sync call returns. ``HybridMemory`` is thread-safe, so several coroutines may
use one instance at once.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, BinaryIO, TextIO

from memsdk.config import MemoryConfig
from memsdk.memory import HybridMemory
from memsdk.results import (
    AddResult,
    Answer,
    HistoryEvent,
    IngestReport,
    MemoryItem,
    MemoryStats,
    RouterCalibration,
    SearchHit,
    Surprise,
)
from memsdk.scope import Scope

__all__ = ["AsyncHybridMemory"]


class AsyncHybridMemory:
    """The async twin of :class:`~memsdk.memory.HybridMemory` (same arguments, results and
    errors). Open it with ``await AsyncHybridMemory.open(path)`` and close it with
    ``await mem.close()`` or ``async with``.

    Args:
        memory: an open ``HybridMemory`` to wrap (``open`` makes one).
    """

    def __init__(self, memory: HybridMemory) -> None:
        if not isinstance(memory, HybridMemory):
            raise TypeError(f"memory must be a HybridMemory, got {type(memory).__name__}")
        self.sync = memory

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        config: MemoryConfig | None = None,
        rebuild_index: bool = False,
        create: bool = True,
    ) -> AsyncHybridMemory:
        """Create or reopen the memory at ``path``; with ``create=False`` only reopen it (see
        :class:`HybridMemory`)."""
        memory = await asyncio.to_thread(
            HybridMemory.open, path, config=config, rebuild_index=rebuild_index, create=create
        )
        return cls(memory)

    async def __aenter__(self) -> AsyncHybridMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    @property
    def path(self) -> Any:
        return self.sync.path

    async def close(self) -> None:
        """As :meth:`HybridMemory.close`: calls in flight (an ingest still running in its
        thread) stop at their next batch, and nothing writes once it returns."""
        await asyncio.to_thread(self.sync.close)

    async def flush(self) -> None:
        await asyncio.to_thread(self.sync.flush)

    async def add(
        self,
        text: str | bytes,
        *,
        scope: Scope,
        metadata: Mapping[str, Any] | None = None,
        time: datetime | str | None = None,
        context: str | None = None,
    ) -> AddResult:
        return await asyncio.to_thread(
            self.sync.add, text, scope=scope, metadata=metadata, time=time, context=context
        )

    async def ingest(
        self,
        source: str | os.PathLike[str] | BinaryIO | TextIO | Iterable[str | bytes],
        *,
        scope: Scope,
        metadata: Mapping[str, Any] | None = None,
        name: str | None = None,
        follow_symlinks: bool = False,
    ) -> IngestReport:
        """As :meth:`HybridMemory.ingest`; an iterable source is read in the worker thread.

        Cancelling the awaiting task stops the ingest in its thread before its next block
        (a thread cannot be interrupted midway): the batches committed before stay, nothing
        is written after, and ``asyncio.run`` does not wait for the rest of the stream."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(
                self.sync.ingest,
                source,
                scope=scope,
                metadata=metadata,
                name=name,
                follow_symlinks=follow_symlinks,
                cancel=cancel,
            )
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def search(
        self,
        query: str,
        *,
        scope: Scope,
        k: int = 5,
        filters: Mapping[str, Any] | None = None,
        now: datetime | str | None = None,
    ) -> list[SearchHit]:
        return await asyncio.to_thread(
            self.sync.search, query, scope=scope, k=k, filters=filters, now=now
        )

    async def get(self, memory_id: int, *, scope: Scope) -> MemoryItem:
        return await asyncio.to_thread(self.sync.get, memory_id, scope=scope)

    async def get_all(
        self,
        *,
        scope: Scope,
        filters: Mapping[str, Any] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[MemoryItem]:
        return await asyncio.to_thread(
            self.sync.get_all, scope=scope, filters=filters, limit=limit, offset=offset
        )

    async def update(
        self,
        memory_id: int,
        *,
        scope: Scope,
        text: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        time: datetime | str | None = None,
    ) -> MemoryItem:
        return await asyncio.to_thread(
            self.sync.update, memory_id, scope=scope, text=text, metadata=metadata, time=time
        )

    async def delete(self, memory_id: int, *, scope: Scope) -> None:
        await asyncio.to_thread(self.sync.delete, memory_id, scope=scope)

    async def delete_all(self, *, scope: Scope) -> int:
        return await asyncio.to_thread(self.sync.delete_all, scope=scope)

    async def history(self, memory_id: int, *, scope: Scope) -> list[HistoryEvent]:
        return await asyncio.to_thread(self.sync.history, memory_id, scope=scope)

    async def stats(self) -> MemoryStats:
        return await asyncio.to_thread(self.sync.stats)

    async def rebuild_index(self) -> int:
        return await asyncio.to_thread(self.sync.rebuild_index)

    async def bits_per_byte(self, text: str | bytes, *, scope: Scope) -> float:
        return await asyncio.to_thread(self.sync.bits_per_byte, text, scope=scope)

    async def complete(
        self,
        prompt: str | bytes,
        *,
        scope: Scope,
        max_bytes: int = 200,
        stop: str | bytes | None = "\n",
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> str:
        return await asyncio.to_thread(
            self.sync.complete,
            prompt,
            scope=scope,
            max_bytes=max_bytes,
            stop=stop,
            temperature=temperature,
            seed=seed,
        )

    async def reset_weights(self, *, scope: Scope) -> None:
        await asyncio.to_thread(self.sync.reset_weights, scope=scope)

    async def query(
        self,
        query: str,
        *,
        scope: Scope,
        route: str = "auto",
        k: int = 5,
        filters: Mapping[str, Any] | None = None,
        max_bytes: int = 200,
    ) -> Answer:
        return await asyncio.to_thread(
            self.sync.query,
            query,
            scope=scope,
            route=route,
            k=k,
            filters=filters,
            max_bytes=max_bytes,
        )

    async def surprise(
        self, text: str | bytes, *, scope: Scope, weights: str = "adapted"
    ) -> Surprise:
        return await asyncio.to_thread(self.sync.surprise, text, scope=scope, weights=weights)

    async def calibrate_router(
        self, *, scope: Scope, probes: int = 200, seed: int = 0, progress: bool = False
    ) -> RouterCalibration:
        return await asyncio.to_thread(
            self.sync.calibrate_router, scope=scope, probes=probes, seed=seed, progress=progress
        )
