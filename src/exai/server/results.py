"""How an error reaches an MCP client as a tool result: shared by the server and the stdio bridge."""

from __future__ import annotations

import mcp_types as types

from exai.errors import ExaiError

ERROR_META_KEY = "exai/error"


def error_result(error: ExaiError) -> types.CallToolResult:
    """A tool error every client can read: the whole error in the text, and as data in `_meta`.

    No structured content: clients validate it against the tool's output schema even when `isError` is set.
    """
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=error.render())],
        is_error=True,
        _meta={ERROR_META_KEY: error.to_dict()},
    )
