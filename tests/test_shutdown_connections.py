"""Connections that reach a daemon while it shuts down: each is answered or refused, never reset.

A reset after the request was sent is what a balancer cannot repeat (nginx answers 502 to a POST it sent); a
refused connection it passes to another replica.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn

from exai.server.connection_guard import guarded_h11_protocol
from exai.server.internals import serve_queued_connections
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[Any]]


async def ok(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def connect_and_send(port: int) -> socket.socket:
    """A client that connects without waiting and sends its request as soon as the connection is up."""
    client = socket.socket()
    client.setblocking(False)
    assert client.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
    return client


def outcome(client: socket.socket, seconds: float = 30) -> str:
    """ "answered", "refused" or "reset": how the client's connection (and its request) ended."""
    _, writable, _ = select.select([], [client], [], seconds)
    assert writable, "the connection attempt neither completed nor failed"
    failure = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if failure:
        return {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset"}.get(failure, errno.errorcode[failure])
    client.setblocking(True)
    client.settimeout(seconds)
    try:
        client.sendall(REQUEST)
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    except ConnectionResetError:
        return "reset"
    return "answered" if answer.startswith(b"HTTP/1.1 200") else f"reset after {answer!r}"


async def test_a_connection_arriving_as_the_listener_closes_is_refused_not_reset() -> None:
    """One client connected just before the shutdown, one connects at the last instant before the listener closes,
    after every queued connection was accepted. The first is answered; the second, before, completed its handshake
    into the emptied queue and was reset by the close (behind nginx: a 502 for a POST already sent). Not covered
    here: a handshake under way when new connections are refused, whose last packet is held back (that needs a
    firewall rule on the path); the shutdown gives those HANDSHAKE_SETTLE_SECONDS to join the queue."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(ok, log_config=None, lifespan="off", http=guarded_h11_protocol(10, 30, 100, 100))
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # what `serve` sets before `startup` (without its signal handlers)
    await server.startup(sockets=[listener])
    late: list[socket.socket] = []
    queued = connect_and_send(port)
    try:
        for listening in server.servers:
            closing = listening.close

            def connect_then_close(close: Callable[[], None] = closing) -> None:
                if not late:  # uvicorn's own shutdown closes the listener again: that does nothing
                    late.append(connect_and_send(port))
                close()

            listening.close = connect_then_close  # type: ignore[method-assign]
        await wait_until(lambda: bool(select.select([], [queued], [], 0)[1]), "the first client connected")
        queued.setblocking(True)
        queued.sendall(REQUEST)
        await serve_queued_connections(server)
        first = await asyncio.to_thread(lambda: b"".join(iter(lambda: queued.recv(65536), b"")))
        assert first.startswith(b"HTTP/1.1 200"), first
        assert late, "the listener was not closed"
        assert await asyncio.to_thread(outcome, late[0]) == "refused"
    finally:
        server.should_exit = True
        await server.shutdown()
        for client in (queued, *late):
            client.close()
