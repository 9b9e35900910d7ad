"""A bare MCP SDK server with one echo tool: the protocol floor for bench/overhead.py (Streamable HTTP on the
port given) and bench/startup.py (`stdio`)."""

import sys

from mcp.server import MCPServer

server = MCPServer("echo", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        # keep-alive as long as the daemon's (EXAI_HTTP_KEEP_ALIVE_SECONDS): an idle client connection is never
        # closed under a request between two benchmark blocks
        uvicorn.run(
            server.streamable_http_app(),
            host="127.0.0.1",
            port=int(sys.argv[1]),
            log_level="warning",
            timeout_keep_alive=75,
        )
