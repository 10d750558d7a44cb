"""An agent that keeps its memory in an MCP server: ``memsdk mcp`` runs as a subprocess, and
the agent reaches it only through the MCP protocol (the mcp SDK's stdio client, which
:func:`memsdk.server.local.mcp_stdio_client` starts), as any MCP client (a coding agent, a
desktop assistant) would.

The agent notes facts from a support shift, then answers questions about them by looking them
up in its memory.

    python examples/mcp_agent.py [--memory DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile

from memsdk.server.local import mcp_stdio_client, tool_result

SHIFT_NOTES = [
    "Customer ACME-118 reports checkout latency above 2 s since deploy 2026.11.3",
    "Rollback of deploy 2026.11.3 approved by on-call lead R. Okafor",
    "Root cause of ACME-118: the payments cache TTL was set to 0 in config/payments.yaml",
]
QUESTIONS = ["ACME-118 root cause", "who approved the rollback"]


async def agent(memory_dir: str) -> None:
    server_args = ["--tenant", "support", "--agent", "shift-bot"]
    async with mcp_stdio_client(memory_dir, *server_args) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        print(f"connected to memsdk over MCP; tools: {', '.join(tools)}")
        for note in SHIFT_NOTES:
            added = tool_result(await client.call_tool("add_memory", {"text": note}))
            print(f"remembered #{added['ids'][0]}: {note}")
        for question in QUESTIONS:
            hits = tool_result(await client.call_tool("search_memory", {"query": question, "k": 1}))
            print(f"Q: {question}\nA: {hits[0]['text']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", help="memory directory (default: a temporary one)")
    args = parser.parse_args()
    if args.memory:
        asyncio.run(agent(args.memory))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(agent(f"{tmp}/memory"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
