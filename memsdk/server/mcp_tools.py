"""The memory as MCP tools: one definition shared by ``memsdk mcp`` (stdio, one scope fixed by
the operator) and the ``/mcp`` route of ``memsdk serve`` (streamable HTTP, the scope of the
request's API key).

Each tool is a thin call into :class:`~memsdk.aio.AsyncHybridMemory`. The scope never comes from
the tool's arguments: a :data:`GrantResolver` reads it from the session (stdio) or from the key
of the very HTTP message being answered, so a model cannot widen its own scope by asking.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import Field

from memsdk.aio import AsyncHybridMemory
from memsdk.errors import MemsdkError
from memsdk.memory import HybridMemory
from memsdk.results import ScopeStats
from memsdk.scope import Scope

__all__ = ["Grant", "GrantResolver", "PathPolicy", "build_mcp_server", "run_stdio"]

INSTRUCTIONS = (
    "Long memory of this agent. Store facts, notes and documents with add_memory; find exact "
    "facts (ids, numbers, names) with search_memory; ask query_memory for a continuation of a "
    "prompt answered from whichever memory holds it (the notepad of exact text or the weights "
    "trained on the stream), with the reason for the choice. All tools work in one scope that "
    "the server fixes."
)


@dataclass(frozen=True)
class Grant:
    """What a caller may touch: one scope, and whether it may write."""

    scope: Scope
    read_only: bool = False


GrantResolver = Callable[[Context | None], Grant]
"""Gives the grant of the request a tool is answering (its ``Context``; None for a resource
read, which the SDK gives no context); raises ToolError to refuse it."""


class PathPolicy:
    """The directories ``ingest_path`` may read. Paths are compared after ``realpath``, so
    ``..`` and symlinks cannot lead out of them; with none allowed every path is refused.
    """

    def __init__(self, allowed: Sequence[str | os.PathLike[str]]) -> None:
        self.allowed = [Path(os.path.realpath(p)) for p in allowed]

    def check(self, path: str) -> str:
        if not self.allowed:
            raise ToolError(
                "ingest_path is off: the server was started without --allow-path, so no path "
                "may be read (restart it with --allow-path DIR to allow a directory)"
            )
        real = Path(os.path.realpath(path))
        for root in self.allowed:
            if real == root or root in real.parents:
                return str(real)
        roots = ", ".join(str(r) for r in self.allowed)
        raise ToolError(
            f"{path!r} is outside the directories this server may read ({roots}): give a path "
            "under one of them, or restart the server with another --allow-path"
        )


def _writable(grant: Grant, tool: str) -> Scope:
    if grant.read_only:
        raise ToolError(f"{tool} writes, and this key is read-only: use a read-write key")
    return grant.scope


async def _call(coro: Any) -> Any:
    """Awaits a memory call; memsdk's own errors reach the model as tool errors with their
    message (which names only the caller's scope), anything else stays a server error."""
    try:
        return await coro
    except (MemsdkError, ValueError) as e:
        raise ToolError(str(e)) from e


def build_mcp_server(
    memory: AsyncHybridMemory, grant: GrantResolver, *, paths: PathPolicy
) -> MCPServer:
    """The MCP server of ``memory``: its tools and the ``memsdk://stats`` resource."""
    server = MCPServer(name="memsdk", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool()
    async def add_memory(
        text: Annotated[str, Field(description="the text to remember (a fact, a note, a log)")],
        ctx: Context,
        metadata: Annotated[
            dict[str, Any] | None,
            Field(description="flat JSON object of str/number/bool values to filter on later"),
        ] = None,
    ) -> dict[str, Any]:
        """Store a text in the long memory. Returns the ids of the stored chunks."""
        scope = _writable(grant(ctx), "add_memory")
        result = await _call(memory.add(text, scope=scope, metadata=metadata))
        return result.model_dump(mode="json")

    @server.tool()
    async def search_memory(
        query: Annotated[str, Field(description="words, ids or a question to look up")],
        ctx: Context,
        k: Annotated[int, Field(ge=1, le=100, description="how many hits")] = 5,
        filters: Annotated[
            dict[str, Any] | None,
            Field(description='metadata filter, e.g. {"ticket": {"gte": 4000}}'),
        ] = None,
    ) -> list[dict[str, Any]]:
        """Find the stored memories most relevant to the query (exact ids rank first)."""
        hits = await _call(memory.search(query, scope=grant(ctx).scope, k=k, filters=filters))
        return [h.model_dump(mode="json", exclude={"raw"}) for h in hits]

    @server.tool()
    async def query_memory(
        prompt: Annotated[str, Field(description="the start of a line or fact to continue")],
        ctx: Context,
        route: Annotated[
            Literal["auto", "notepad", "weights", "both"],
            Field(description="auto lets the router choose the memory that holds the answer"),
        ] = "auto",
    ) -> dict[str, Any]:
        """Continue the prompt from memory; says which memory answered and why."""
        answer = await _call(memory.query(prompt, scope=grant(ctx).scope, route=route))
        return {
            "completion": answer.completion,
            "branch": answer.route.branch,
            "reason": answer.route.reason,
            "passages": [{"id": h.id, "text": h.text, "score": h.score} for h in answer.passages],
        }

    @server.tool()
    async def get_memory(
        id: Annotated[int, Field(description="a memory id from add_memory or search_memory")],
        ctx: Context,
    ) -> dict[str, Any]:
        """One stored memory by id."""
        item = await _call(memory.get(id, scope=grant(ctx).scope))
        return item.model_dump(mode="json", exclude={"raw"})

    @server.tool()
    async def delete_memory(
        id: Annotated[int, Field(description="the id of the memory to forget")], ctx: Context
    ) -> dict[str, Any]:
        """Forget one stored memory."""
        await _call(memory.delete(id, scope=_writable(grant(ctx), "delete_memory")))
        return {"deleted": id}

    @server.tool()
    async def ingest_path(
        path: Annotated[str, Field(description="a file or directory the server may read")],
        ctx: Context,
    ) -> dict[str, Any]:
        """Read a file or a directory tree into memory (only under the allowed directories)."""
        scope = _writable(grant(ctx), "ingest_path")
        report = await _call(memory.ingest(paths.check(path), scope=scope))
        return report.model_dump(mode="json")

    @server.tool()
    async def surprise(
        text: Annotated[str, Field(description="lines to score against what memory absorbed")],
        ctx: Context,
    ) -> dict[str, Any]:
        """How novel each line is to this memory (bits per byte; high = unlike anything seen)."""
        result = await _call(memory.surprise(text, scope=grant(ctx).scope))
        return result.model_dump(mode="json")

    @server.resource("memsdk://stats", mime_type="application/json")
    async def stats() -> str:
        """Documents, chunks, bytes and weight-memory figures of this scope."""
        try:
            scope = grant(None).scope
        except ToolError as e:
            raise ResourceError(str(e)) from e
        figures = await memory.stats()
        mine = [s for s in figures.scopes if s.scope == scope]
        empty = ScopeStats(scope=scope, documents=0, chunks=0, bytes=0, weights=None)
        return (mine[0] if mine else empty).model_dump_json()

    return server


def run_stdio(
    directory: str | os.PathLike[str],
    *,
    scope: Scope,
    allow_paths: Sequence[str | os.PathLike[str]] = (),
    read_only: bool = False,
) -> None:
    """``memsdk mcp``: serve the memory at ``directory`` over stdin/stdout, every tool bound to
    ``scope``. The memory is flushed and closed when the client hangs up."""
    grant = Grant(scope=scope, read_only=read_only)
    memory = HybridMemory.open(directory)
    try:
        server = build_mcp_server(
            AsyncHybridMemory(memory), lambda _ctx: grant, paths=PathPolicy(allow_paths)
        )
        server.run("stdio")
    finally:
        memory.close()
