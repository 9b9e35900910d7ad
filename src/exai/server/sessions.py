"""Per-tenant MCP session quota, in front of the SDK's session manager at /mcp.

The SDK caps sessions only in total (10,000 by default), so one tenant could fill the cap and lock every other
tenant out. Here each tenant may hold at most `cap` open sessions on this replica, and opening one counts against
the tenant's rate (`RateLimiter.open_session`). A refusal is HTTP 429 with a JSON-RPC error that says which limit
was hit and how to free room: close sessions you no longer use, or wait for idle ones to expire.

It also pins each session to the protocol version negotiated when it opened (read from the `initialize` answer): a
request of the session whose `MCP-Protocol-Version` header names another version is refused with 400, as the
specification says, instead of being served by another version's rules (the SDK routes by the header alone). A
request without the header is left to the SDK (the specification's fallback for clients older than the header).
"""

from __future__ import annotations

import re
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

NEGOTIATED = re.compile(rb'"protocolVersion"\s*:\s*"([0-9A-Za-z.-]{1,40})"')
"""The version in an `initialize` answer (JSON or an SSE event): the first such key is the result's own."""
ANSWER_READ_LIMIT = 65536


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
        self._versions: dict[str, str] = {}
        """Each open session's negotiated protocol version, by session id."""

    def open_sessions(self, tenant: str) -> int:
        live = live_sessions(self.manager)
        self._open[tenant] = {session for session in self._open[tenant] if session in live}
        return len(self._open[tenant]) + self._opening[tenant]

    def forget_closed(self) -> None:
        live = live_sessions(self.manager)
        for session in [session for session in self._versions if session not in live]:
            del self._versions[session]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await self.version_mismatch(scope, send):
            return
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
        # Counted as opening before the wait for the limiter below: requests that arrive meanwhile see it (counted
        # after, a burst of initializations all passed the cap while the first waited for Redis).
        self._opening[tenant] += 1
        opening = True
        opened: str | None = None
        answer = b""

        async def note_session(message: Message) -> None:
            nonlocal opening, opened, answer
            if message["type"] == "http.response.start" and opening:
                opening = False
                self._opening[tenant] -= 1
                session = Headers(raw=message.get("headers", [])).get(MCP_SESSION_ID_HEADER)
                if message["status"] < 400 and session:
                    self._open[tenant].add(session)
                    self.forget_closed()
                    opened = session
            elif message["type"] == "http.response.body" and opened is not None and len(answer) < ANSWER_READ_LIMIT:
                answer += message.get("body", b"")
                if found := NEGOTIATED.search(answer):
                    self._versions[opened] = found.group(1).decode()
                    opened = None
            await send(message)

        try:
            if self.limiter is not None:
                try:
                    await self.limiter.open_session(tenant)
                except RateLimitError as exc:
                    retry = str(max(1, round(exc.details.get("retry_after_seconds", 1))))
                    await refuse(send, 429, f"{exc.message} {exc.remedy}", retry_after=retry)
                    return
            await self.app(scope, receive, note_session)
        finally:
            if opening:
                self._opening[tenant] -= 1

    async def version_mismatch(self, scope: Scope, send: Send) -> bool:
        """Refuse (and say so) a request of a session that names another protocol version than the session's."""
        headers = Headers(scope=scope)
        session, version = headers.get(MCP_SESSION_ID_HEADER), headers.get(MCP_PROTOCOL_VERSION_HEADER)
        negotiated = self._versions.get(session) if session is not None else None
        if negotiated is None or version is None or version == negotiated:
            return False
        await refuse(
            send,
            400,
            f"Bad Request: {MCP_PROTOCOL_VERSION_HEADER} {version[:40]!r} does not match the protocol version this "
            f"session negotiated ({negotiated}). Send {negotiated} with every request of the session, or open a "
            "new session for another version.",
        )
        return True
