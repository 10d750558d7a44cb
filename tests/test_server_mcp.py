"""``memsdk mcp`` as a subprocess, driven by the mcp SDK's own stdio client."""

from __future__ import annotations

import asyncio
import json
import os

from memsdk.server.local import mcp_stdio_client, tool_result


def test_stdio_server_tools_and_stats(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "notes.txt").write_text("the backup host is nas-17.lab, checked nightly\n")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwords.txt").write_text("root password hunter2\n")
    os.symlink(secret, allowed / "escape")
    server_args = ["--tenant", "acme", "--user", "u1", "--allow-path", str(allowed)]

    async def session() -> None:
        async with mcp_stdio_client(tmp_path / "memory", *server_args) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {
                "add_memory",
                "search_memory",
                "query_memory",
                "get_memory",
                "delete_memory",
                "ingest_path",
                "surprise",
            }
            assert "query" in tools["search_memory"].input_schema["properties"]
            assert "tenant" not in json.dumps(tools["add_memory"].input_schema)

            added = tool_result(
                await client.call_tool(
                    "add_memory",
                    {
                        "text": "invoice INV-4471 was paid on 2026-11-03",
                        "metadata": {"kind": "invoice"},
                    },
                )
            )
            hits = tool_result(
                await client.call_tool("search_memory", {"query": "INV-4471", "k": 3})
            )
            assert hits[0]["id"] == added["ids"][0]
            assert hits[0]["scope"] == {"tenant": "acme", "user": "u1", "agent": None, "run": None}
            got = tool_result(await client.call_tool("get_memory", {"id": added["ids"][0]}))
            assert got["text"] == "invoice INV-4471 was paid on 2026-11-03"

            report = tool_result(await client.call_tool("ingest_path", {"path": str(allowed)}))
            assert report["documents"] == 1  # the symlink out of the allowed tree is skipped
            for outside in (
                str(secret / "passwords.txt"),
                str(allowed / ".." / "secret"),
                str(allowed / "escape" / "passwords.txt"),
                "/etc/passwd",
            ):
                refused = await client.call_tool("ingest_path", {"path": outside})
                assert refused.is_error and "outside the directories" in refused.content[0].text
            hits = tool_result(await client.call_tool("search_memory", {"query": "hunter2"}))
            assert all("hunter2" not in h["text"] for h in hits)

            answer = tool_result(
                await client.call_tool("query_memory", {"prompt": "invoice INV-4471"})
            )
            assert answer["branch"] in ("notepad", "weights", "both") and answer["reason"]
            stats = json.loads((await client.read_resource("memsdk://stats")).contents[0].text)
            assert stats["documents"] == 2 and stats["scope"]["tenant"] == "acme"

            await client.call_tool("delete_memory", {"id": added["ids"][0]})
            missing = await client.call_tool("get_memory", {"id": added["ids"][0]})
            assert missing.is_error and "not found" in missing.content[0].text

    asyncio.run(asyncio.wait_for(session(), timeout=240))
