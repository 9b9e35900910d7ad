"""Refusing an MCP HTTP request before the SDK sees it, in the JSON-RPC error form MCP clients show to users."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Scope, Send

from exai.errors import ExaiError

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


def error_response(error: ExaiError, scope: Scope, status: int | None = None, **headers: str) -> JSONResponse:
    """An error answered before any tool runs (a refused token at /metrics, a slow body), naming the request's
    correlation id: the one `RequestIdMiddleware` chose, put in the request's X-Request-ID and echoed in the
    response's (the error named an id of its own, found in no log line)."""
    error.correlation_id = Headers(scope=scope).get("x-request-id") or error.correlation_id
    extra = {name.replace("_", "-"): value for name, value in headers.items()}
    return JSONResponse({"error": error.to_dict()}, status_code=status or error.http_status, headers=extra or None)
