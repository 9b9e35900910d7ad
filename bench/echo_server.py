"""A bare MCP SDK server with one echo tool over Streamable HTTP: the protocol floor for bench/overhead.py."""

import sys

import uvicorn
from mcp.server import MCPServer

server = MCPServer("echo")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
