"""EX-AI MCP Server: tools for AI coding agents, backed by other models."""

from functools import cache


@cache
def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # looked up only when asked: start-up stays short

    try:
        return version("exai-mcp-server")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module 'exai' has no attribute {name!r}")
