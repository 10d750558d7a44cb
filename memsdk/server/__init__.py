"""Front ends for agents outside this Python process: an MCP server (stdio and streamable HTTP)
and a REST API, both thin adapters over :class:`~memsdk.memory.HybridMemory`.

The modules import ``mcp``, ``fastapi`` and ``uvicorn`` (the ``server`` extra); nothing else in
memsdk imports this package.
"""
