"""EX-AI MCP Server: tools for AI coding agents, backed by other models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("exai-mcp-server")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
