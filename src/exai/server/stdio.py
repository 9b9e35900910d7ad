"""The same MCP server over stdio, for a single local client."""

from __future__ import annotations

from mcp.server.stdio import stdio_server

from exai.app import Services
from exai.server.mcp import build_server


async def serve_stdio(services: Services) -> None:
    server = build_server(services)
    await services.start()
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await services.close()
