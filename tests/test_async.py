"""AsyncHybridMemory: the same results as the sync API, without blocking the event loop."""

from __future__ import annotations

import asyncio

import pytest

from memsdk import AsyncHybridMemory, HybridMemory, InputError, Scope

LINES = [
    f"081109 2036{i:02d} 148 INFO dfs.DataNode$PacketResponder: block blk_{7000 + i} terminating\n"
    for i in range(60)
]


def test_async_and_sync_return_the_same_results(memory_dir, scope):
    async def scenario() -> tuple:
        async with await AsyncHybridMemory.open(memory_dir) as mem:
            report = await mem.ingest(LINES, scope=scope, name="hdfs")
            added = await mem.add("Ticket 4812: VPN drops after sleep", scope=scope)
            await mem.flush()
            hits = await mem.search("blk_7042", scope=scope, k=3)
            items = await mem.get_all(scope=scope)
            surprise = await mem.bits_per_byte(LINES[0], scope=scope)
            completion = await mem.complete("081109 2036", scope=scope, max_bytes=20)
            with pytest.raises(InputError, match="query"):
                await mem.search("", scope=scope)
            # The weight memory is compared before closing: reopening merges a 4-bit delta.
            assert mem.sync.bits_per_byte(LINES[0], scope=scope) == surprise
            assert mem.sync.complete("081109 2036", scope=scope, max_bytes=20) == completion
            return report, added, hits, items, mem.sync.path

    report, added, hits, items, path = asyncio.run(scenario())
    assert report.chunks > 0 and added.ids
    with HybridMemory.open(path) as mem:
        assert mem.search("blk_7042", scope=scope, k=3) == hits
        assert "blk_7042" in hits[0].text
        assert mem.get_all(scope=scope) == items


def test_a_long_call_does_not_block_the_event_loop(memory_dir):
    scope = Scope(tenant="loop")

    async def scenario() -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async with await AsyncHybridMemory.open(memory_dir) as mem:
            task = asyncio.create_task(ticker())
            await mem.ingest(LINES * 2, scope=scope, name="twice")
            await mem.flush()
            done.set()
            await task
        return ticks

    assert asyncio.run(scenario()) > 1  # the loop kept running while memsdk worked
