"""Per-tenant MCP session quota, in front of the SDK's session manager at /mcp.

The SDK caps sessions only in total (10,000 by default), so one tenant could fill the cap and lock every other
tenant out. Here each tenant may hold at most `cap` open sessions on this replica, and opening one counts against
the tenant's rate (`RateLimiter.open_session`). A refusal is HTTP 429 with a JSON-RPC error that says which limit
was hit and how to free room: close sessions you no longer use, or wait for idle ones to expire.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exai.errors import RateLimitError
from exai.security.limits import RateLimiter
from exai.server.internals import live_sessions
from exai.server.refusals import refuse


def opens_session(scope: Scope) -> bool:
    """A POST without a session id on a handshake-era protocol version makes the SDK open a session."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    headers = Headers(scope=scope)
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
    return MCP_SESSION_ID_HEADER not in headers and (version is None or version in HANDSHAKE_PROTOCOL_VERSIONS)


class SessionQuota:
    """Caps each tenant's open sessions and counts every session it opens against its rate (when limits are on)."""

    def __init__(
        self,
        app: ASGIApp,
        manager: StreamableHTTPSessionManager,
        limiter: RateLimiter | None,
        tenant_of: Callable[[Scope], str | None],
        cap: int,
        idle_seconds: float,
    ) -> None:
        self.app, self.manager, self.limiter, self.tenant_of = app, manager, limiter, tenant_of
        self.cap, self.idle_seconds = cap, idle_seconds
        self._open: dict[str, set[str]] = defaultdict(set)
        self._opening: dict[str, int] = defaultdict(int)

    def open_sessions(self, tenant: str) -> int:
        live = live_sessions(self.manager)
        self._open[tenant] = {session for session in self._open[tenant] if session in live}
        return len(self._open[tenant]) + self._opening[tenant]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = self.tenant_of(scope) if opens_session(scope) else None
        if tenant is None:
            await self.app(scope, receive, send)
            return
        if self.open_sessions(tenant) >= self.cap:
            await refuse(
                send,
                429,
                f"Session limit reached: {self.cap} open MCP sessions per tenant on this server. Close sessions "
                f"you no longer use (HTTP DELETE /mcp with their {MCP_SESSION_ID_HEADER} header), reuse one "
                f"session for many calls, or wait: a session idle for {self.idle_seconds:g} s is closed.",
                retry_after="5",
            )
            return
        try:
            if self.limiter is not None:
                await self.limiter.open_session(tenant)
        except RateLimitError as exc:
            retry = str(max(1, round(exc.details.get("retry_after_seconds", 1))))
            await refuse(send, 429, f"{exc.message} {exc.remedy}", retry_after=retry)
            return
        self._opening[tenant] += 1
        opening = True

        async def note_session(message: Message) -> None:
            nonlocal opening
            if message["type"] == "http.response.start" and opening:
                opening = False
                self._opening[tenant] -= 1
                session = Headers(raw=message.get("headers", [])).get(MCP_SESSION_ID_HEADER)
                if message["status"] < 400 and session:
                    self._open[tenant].add(session)
            await send(message)

        try:
            await self.app(scope, receive, note_session)
        finally:
            if opening:
                self._opening[tenant] -= 1
