"""Every place the server reaches into a library's private internals, in one module.

Each shim below uses something its library does not promise to keep: a private attribute, a global, or a class
that is not part of its public API. Each says why no public way exists and what it relies on, and `SHIMS` names
the distribution it reaches into. `WRITTEN_FOR` records the release series the shims were checked against, and
pyproject.toml pins installs inside them; tests/test_internals.py fails, naming the shims to re-check, when an
installed version is outside them. After checking a shim against a new series (its docstring says what to look
at), add the series here and widen the pin.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Container
from typing import Any, Literal

import h11
import httpcore2
import httpx2
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from sse_starlette.sse import AppStatus
from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from exai.observability.logging import get_logger
from exai.providers.coalescing import CoalescingBackend
from exai.server.syn_filter import refuse_new_connections

log = get_logger(__name__)
WRITTEN_FOR: dict[str, tuple[str, ...]] = {
    "mcp": ("2.3",),
    "uvicorn": ("0.54", "0.55"),
    "h11": ("0.16",),
    "httpx2": ("2.16", "2.17"),
    "httpcore2": ("2.16", "2.17"),
    "sse-starlette": ("3.7",),
}
"""The release series (major.minor) each shim was checked against, by distribution; pyproject.toml keeps installs
inside them, so a new series is a deliberate upgrade that re-checks the shims, never a surprise of a fresh clone."""

SHIMS: dict[str, tuple[str, ...]] = {
    "live_sessions": ("mcp",),
    "frame_messages_without_bodies": ("mcp",),
    "connection_of": ("mcp",),
    "forget_captured_signals": ("uvicorn",),
    "serve_queued_connections": ("uvicorn",),
    "UvicornH11Connection": ("uvicorn", "h11"),
    "keep_streams_open_on_signal": ("sse-starlette",),
    "end_every_stream": ("sse-starlette",),
    "send_requests_whole": ("httpx2", "httpcore2"),
}
"""Each shim, with the distributions whose internals it uses."""


def live_sessions(manager: StreamableHTTPSessionManager) -> Container[str]:
    """The ids of the sessions the MCP SDK still serves (it ends them on DELETE, idle timeout or crash).

    Why: the per-tenant session quota (server/sessions.py) must forget sessions the SDK ended on its own; the SDK
    offers no public view of its sessions. Relies on: `StreamableHTTPSessionManager._server_instances`, a mapping
    keyed by session id that the manager keeps current.
    """
    return manager._server_instances


def frame_messages_without_bodies() -> None:
    """Frame each inbound MCP message with its HTTP request's scope, not with the request that read its body.

    Why: the SDK attaches the Starlette request to every message it hands the session
    (`ServerMessageMetadata.request_context`), and a session's receive loop holds its last message until the next
    one arrives. An idle session so kept its last request, and the body Starlette caches in it, for as long as the
    session lived: 16 sessions left idle after a 3 MiB call each held 97-139 MiB more, for the 10 minutes of
    `EXAI_SESSION_IDLE_SECONDS`. Handlers here read the request's headers and scope only, so a request over the
    same scope (no receive channel, no cached body) serves them. The SDK offers no hook for the metadata. Relies on:
    `StreamableHTTPServerTransport._message_metadata(self, request, **callbacks)`, where the session transport builds
    it (the SDK's single-exchange transports build their own and hold nothing once their exchange is over). What a
    session still holds is its last message itself (the parsed arguments) until its next one.
    """
    original = StreamableHTTPServerTransport._message_metadata
    if getattr(original, "exai_without_bodies", False):
        return

    def without_body(self: StreamableHTTPServerTransport, request: Request, **callbacks: Any) -> Any:
        return original(self, Request(request.scope), **callbacks)

    without_body.exai_without_bodies = True  # type: ignore[attr-defined]
    StreamableHTTPServerTransport._message_metadata = without_body  # type: ignore[method-assign]


def connection_of(ctx: ServerRequestContext[Any, Any]) -> Any:
    """The client connection behind an MCP request (the SDK builds a new session object for every request).

    Why: `logging/setLevel` is connection state on handshake-era protocol versions, so the level must be kept per
    connection; the SDK offers no public handle for the connection on the low-level request context. Relies on:
    `ServerRequestContext.session._connection`, one object per client connection (falls back to the session).
    """
    return getattr(ctx.session, "_connection", ctx.session)


def forget_captured_signals(server: uvicorn.Server) -> None:
    """Keep uvicorn from re-raising SIGTERM / SIGINT after its graceful shutdown.

    Why: uvicorn re-raises the signals it captured once it has shut down, so a daemon that finished every call in
    flight would die "by signal" (exit 143) instead of exiting 0; there is no option to turn that off. Relies on:
    `Server._captured_signals`, the list `capture_signals` re-raises on exit, filled by `handle_exit`.
    """
    server._captured_signals.clear()


QUEUED_REQUEST_SECONDS = 1.0
"""How long connections open at shutdown may take to send their requests' headers (a slow one is then closed;
a second signal ends the wait at once)."""
QUEUED_REQUEST_POLL_SECONDS = 0.01
HANDSHAKE_SETTLE_SECONDS = 0.2
"""How long a handshake under way when new connections are refused may take to complete and join the queue (one
round trip, generous for a data centre); below the clients' SYN retry (1 s), which must find the port closed."""


async def serve_queued_connections(server: uvicorn.Server) -> int:
    """Close uvicorn's listeners without dropping the connections queued in them, and serve those; how many there were.

    Why: closing a listening socket resets every connection the kernel completed but the server has not accepted
    yet. A balancer that had already sent a POST on one gets a reset and answers 502 without trying another replica
    (a POST is not repeated once sent): a rolling restart behind nginx failed about one request in 2,400 at 1,000
    requests a second. So new connection attempts are dropped first (server/syn_filter.py: one that completed after
    the last accept was still reset, one request in 12,874 over six restarts in a CI run), handshakes already under
    way are given a round trip to complete, every queued connection is accepted and the listener closed in the same
    step (no await between them), then each is served by uvicorn's own protocol like any other connection. Then
    every open connection still owed a request's headers (these, and any accepted just before whose bytes were not
    read yet) is given until they arrive: uvicorn's shutdown, which follows, closes a connection that has sent
    nothing as idle (and closing a socket with unread bytes resets it), while one with a request in progress
    finishes it.
    Relies on: `Server.servers` (the asyncio servers uvicorn listens with; its `shutdown` closes them again, which
    does nothing the second time), `Config.http_protocol_class`, `Config.ssl`, `Server.server_state` (and its
    `connections`, the open protocols) and `Server.lifespan.state` (what uvicorn's own protocol factory and
    `create_server` call in `Server.startup` give each connection).
    """

    def accept_all(listener: socket.socket) -> list[socket.socket]:
        """Every connection waiting in a non-blocking listener's queue."""
        accepted: list[socket.socket] = []
        while True:
            try:
                accepted.append(listener.accept()[0])
            except (BlockingIOError, InterruptedError):  # the queue is empty
                return accepted
            except ConnectionAbortedError:  # the client gave up while queued: the next one
                continue
            except OSError:  # e.g. no file descriptor left: what is still queued is reset by the close below
                log.exception("queued_connections_not_accepted", accepted=len(accepted))
                return accepted

    refusing = [refuse_new_connections(listener) for listening in server.servers for listener in listening.sockets]
    if any(refusing) and not server.force_exit:
        await asyncio.sleep(HANDSHAKE_SETTLE_SECONDS)  # uvicorn accepts and serves meanwhile, as before
    queued: list[socket.socket] = []
    for listening in server.servers:
        for listener in listening.sockets:
            with socket.socket(fileno=os.dup(listener.fileno())) as accepting:  # closing a copy leaves it open
                accepting.setblocking(False)
                queued += accept_all(accepting)
        listening.close()
    loop = asyncio.get_running_loop()

    def uvicorn_protocol() -> asyncio.BaseProtocol:
        return server.config.http_protocol_class(  # type: ignore[call-arg]
            config=server.config, server_state=server.server_state, app_state=server.lifespan.state
        )

    served = 0
    try:
        for sock in queued:
            await loop.connect_accepted_socket(uvicorn_protocol, sock, ssl=server.config.ssl)
            served += 1
    finally:
        for sock in queued[served:]:  # a failure (or a cancellation) part way: close the rest, not leak them
            sock.close()
    deadline = loop.time() + QUEUED_REQUEST_SECONDS
    while loop.time() < deadline and not server.force_exit:
        await asyncio.sleep(QUEUED_REQUEST_POLL_SECONDS)  # first: a connection the loop accepted just before the
        # listener closed gets its protocol a few iterations later, and its bytes after that
        connections = [c for c in server.server_state.connections if isinstance(c, UvicornH11Connection)]
        if not any(c.owed() == "headers" for c in connections):
            break
    return served


class UvicornH11Connection(H11Protocol):
    """uvicorn's h11 connection protocol, seen through a few hooks and questions, for connection limits.

    Why: uvicorn has no limit on connections held open without a complete request (slowloris), and no hook per
    connection; the only way in is its protocol class (the `http` option accepts one). Relies on: uvicorn calling
    `connection_made`, `data_received`, `on_response_complete` and `connection_lost` on `H11Protocol` for each
    connection, and its attributes `conn` (the `h11.Connection`), `transport`, `loop`, `client` (the peer's host
    and port, set in `connection_made`) and `connections` (the server-wide set of open protocols). Subclasses
    override `opened`, `progressed` and `closing` only.
    """

    def opened(self) -> None:
        """A connection was accepted (and counted in `open_connections`)."""

    def progressed(self) -> None:
        """Bytes arrived, or a response was sent: what the client owes may have changed."""

    def closing(self) -> None:
        """The connection is gone."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn narrows asyncio's BaseTransport parameter to Transport: an override of its signature, not ours.
        super().connection_made(transport)
        self.opened()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.progressed()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.progressed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing()
        super().connection_lost(exc)

    def open_connections(self) -> int:
        """Connections this server holds now, this one included."""
        return len(self.connections)

    def peer_host(self) -> str | None:
        """The client's IP address as text (None on a Unix socket)."""
        return self.client[0] if self.client else None

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def owed(self) -> Literal["headers", "body"] | None:
        """What the client owes: a request's headers, the rest of a body already answered without being read, or
        nothing (a request the application is handling, a kept-alive connection between requests, or a closing
        connection).

        A kept-alive connection (h11 knows the client's HTTP version once a request came) with no byte of its next
        request owes nothing: its idleness is uvicorn's keep-alive timeout's to end, and a header clock started at
        the previous answer would cut it sooner, closing a connection the client may be reusing at that moment."""
        if self.transport.is_closing():
            return None
        if self.conn.their_state is h11.IDLE:
            between_requests = self.conn.their_http_version is not None and not self.conn.trailing_data[0]
            return None if between_requests else "headers"
        if self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.DONE, h11.MUST_CLOSE):
            return "body"
        return None

    def call_later(self, seconds: float, callback: Any) -> asyncio.TimerHandle:
        return self.loop.call_later(seconds, callback)

    def close(self, answer: bytes = b"") -> None:
        """Write `answer` (a complete raw HTTP response, or nothing) and close the connection."""
        if answer:
            self.transport.write(answer)
        self.transport.close()


def keep_streams_open_on_signal() -> None:
    """Stop sse-starlette from ending every server-sent event stream the moment SIGTERM arrives.

    Why: calls whose answers are still streaming must be left to finish on a graceful shutdown
    (server/draining.py); sse-starlette's drain is process-wide and on by default. Relies on: the global
    `AppStatus` and its `disable_automatic_graceful_drain()`.
    """
    AppStatus.disable_automatic_graceful_drain()


def end_every_stream() -> None:
    """Tell every sse-starlette stream of this process to end (the drain's last step, when no call is left).

    Relies on: every stream watching the global `AppStatus.should_exit`.
    """
    AppStatus.should_exit = True


def send_requests_whole(client: httpx2.AsyncClient) -> httpx2.AsyncClient:
    """The client, its connections sending each request's headers and body in one write (`CoalescingStream`).

    Why: httpcore writes a request's headers and its body with a system call each, which cost 7.5 % of the
    daemon's CPU at 32 clients (providers/coalescing.py); a pool takes a network backend only when it is built,
    and httpx2 builds the client's pools itself with none (a transport passed in instead would turn off the proxies
    the environment names: `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`). Relies on: `AsyncClient._transport`
    and the values of `AsyncClient._mounts` (None, or the transports of the environment's proxies), each an
    `AsyncHTTPTransport` whose `_pool` is an `httpcore2.AsyncConnectionPool` (its proxies subclass it) that reads
    its `_network_backend` each time it opens a connection.
    """
    for transport in (client._transport, *client._mounts.values()):
        pool = getattr(transport, "_pool", None)
        if isinstance(pool, httpcore2.AsyncConnectionPool):
            pool._network_backend = CoalescingBackend(pool._network_backend)
    return client
