"""401 answers that say why: a missing token reads "Authentication required", a refused one `invalid_token` with
the reason (expired, bad signature, wrong audience or issuer, unknown API key), noted by the token verifier
(security/token_rejections.py), so a user can tell a forgotten header from a token made for another server.

The reason is in `WWW-Authenticate` (RFC 6750: `error="invalid_token", error_description=...`, which OAuth clients
read) and in the body as a JSON-RPC error: MCP clients surface a JSON-RPC error found in a non-2xx body (the
Python SDK otherwise reports only -32603 "Server returned an error response"; the TypeScript SDK shows the body).
"""

from __future__ import annotations

import json

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, RequireAuthMiddleware
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from exai.security import token_rejections

MISSING = "Authentication required: send Authorization: Bearer <token>"
AUTH_ERROR_CODE = -32001
"""JSON-RPC code of a refused request (the implementation-defined server-error range)."""


def has_bearer(scope: Scope) -> bool:
    return Headers(scope=scope).get("authorization", "").lower().startswith("bearer ")


def why_unauthenticated(scope: Scope) -> str:
    """The 401's error_description for a request without valid credentials."""
    if not has_bearer(scope):
        return MISSING
    return f"Invalid token: {token_rejections.last() or 'not accepted by this server'}"


class ExplainedRequireAuth(RequireAuthMiddleware):
    """The SDK's RequireAuthMiddleware, with a 401 description that tells missing from refused tokens."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not isinstance(scope.get("user"), AuthenticatedUser):
            await self._send_auth_error(
                send, status_code=401, error="invalid_token", description=why_unauthenticated(scope)
            )
            return
        await super().__call__(scope, receive, send)

    async def _send_auth_error(self, send: Send, status_code: int, error: str, description: str) -> None:
        challenge = f'Bearer error="{error}", error_description="{description}"'
        if self.resource_metadata_url:
            challenge += f', resource_metadata="{self.resource_metadata_url}"'
        data = {"error": error, "error_description": description}
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": AUTH_ERROR_CODE, "message": description, "data": data}}
        encoded = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(encoded)).encode()),
            (b"www-authenticate", challenge.encode()),
        ]
        await send({"type": "http.response.start", "status": status_code, "headers": headers})
        await send({"type": "http.response.body", "body": encoded})
