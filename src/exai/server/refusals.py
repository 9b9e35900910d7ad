"""Refusing an MCP HTTP request before the SDK sees it, in the JSON-RPC error form MCP clients show to users."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

INVALID_REQUEST = -32600


async def refuse(
    send: Send, status: int, message: str, *, code: int = INVALID_REQUEST, request_id: Any = None, **headers: str
) -> None:
    """Answer with a JSON-RPC error body (the form MCP clients show to the user) and an HTTP status."""
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}).encode()
    extra = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})
