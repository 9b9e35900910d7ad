"""401 answers that say why: a missing token reads "Authentication required", a refused one `invalid_token` with
the reason (expired, bad signature, wrong audience or issuer, unknown API key), noted by the token verifier
(security/token_rejections.py), so a user can tell a forgotten header from a token made for another server.

The reason is in `WWW-Authenticate` (RFC 6750: `error="invalid_token", error_description=...`, which OAuth clients
read) and in the body as a JSON-RPC error: MCP clients surface a JSON-RPC error found in a non-2xx body (the
Python SDK otherwise reports only -32603 "Server returned an error response"; the TypeScript SDK shows the body).
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, RequireAuthMiddleware
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from exai.security import token_rejections
from exai.security.auth import visible_tools

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


NO_TOOL_SCOPE = (
    "This token may call no tool: /mcp needs the exai:tools scope, exai:tool:<name> or exai:admin "
    "(exai:metrics reads /metrics only)"
)


class ExplainedRequireAuth(RequireAuthMiddleware):
    """The SDK's RequireAuthMiddleware, with a 401 description that tells missing from refused tokens, and a 403
    for a token that may call none of `tools` (an `exai:metrics` scraper token, a malformed scope): such a token
    has nothing to do on /mcp, and would otherwise read and cancel its tenant's tasks and hold its sessions."""

    def __init__(
        self, app: Any, required_scopes: list[str], resource_metadata_url: Any = None, *, tools: list[str]
    ) -> None:
        super().__init__(app, required_scopes, resource_metadata_url)
        self.tools = tools

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if not isinstance(user, AuthenticatedUser):
            await self._send_auth_error(
                send, status_code=401, error="invalid_token", description=why_unauthenticated(scope)
            )
            return
        if not visible_tools(self.tools, list(user.access_token.scopes)):
            await self._send_auth_error(send, status_code=403, error="insufficient_scope", description=NO_TOOL_SCOPE)
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
