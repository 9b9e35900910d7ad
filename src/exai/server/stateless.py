"""Stateless Streamable HTTP (`EXAI_STATELESS_HTTP=true`): every replica can answer every request.

On handshake-era protocol versions (before 2026-07-28) the SDK keeps an `Mcp-Session-Id` session in the memory of
the replica that answered `initialize`; behind a round-robin balancer the client's next request lands on a replica
that does not know it ("Session not found"). In stateless mode the SDK opens no session: the initialize answer has
no session id, and each POST is served by a fresh connection on whichever replica receives it. Everything a later
request needs is already shared (threads and workflow state in the database, limits in Redis).

What changes for those clients:
- no session id, so nothing to pin, expire or DELETE, and no per-tenant session cap (there are no sessions);
- `logging/setLevel` is accepted but lasts for that one request: log notifications use the default level (info);
- progress and log notifications still reach the client, on the SSE response stream of the POST they belong to;
- there is no standalone GET stream (the server has nothing to push outside a request): GET is answered 405, which
  clients read as "this server offers no such stream".
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from exai.server.refusals import refuse


class PostOnly:
    """In stateless mode /mcp takes POST only: a GET stream would stay open, idle, on one replica."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            await refuse(
                send,
                405,
                "Method Not Allowed: this server runs stateless (EXAI_STATELESS_HTTP=true) and offers no GET "
                "stream; progress and log notifications arrive on each POST's response stream.",
                allow="POST",
            )
            return
        await self.app(scope, receive, send)
