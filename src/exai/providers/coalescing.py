"""One send per model request: its headers and its body leave the daemon together.

httpcore writes a request's headers and its body with a system call each, so every model request woke the upstream
twice and paid two sends (on loopback the sender's CPU also does the receiver's TCP work): py-spy put those two
sends at 7.5 % of the daemon's CPU in `bench/profile.py` at 32 clients. A stream here holds what is written until
the response is read, then sends it at once. A large write (a long prompt) goes out at once, what is held before it
first: copying it to join the two would cost more than the second send saves.

It changes when bytes leave, not what is sent nor how failures read: a send that fails while held is reported as
httpcore reports one while it writes (it then reads what the server said, which may be a well-formed error answer);
a send that times out is a `WriteTimeout`, as before (the request never reached the upstream whole).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import httpcore2

LARGE_WRITE = 64 * 1024
"""Bytes from which a write is sent at once rather than joined with what is held."""


class CoalescingStream(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._held: list[bytes] = []
        self._timeout: float | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:  # the end of a body of known length
            return
        if len(buffer) >= LARGE_WRITE:
            await self._send_held()
            await self._inner.write(buffer, timeout)
            return
        self._held.append(buffer)
        self._timeout = timeout  # the latest write's: the deadline of the request's sending as httpcore set it

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with contextlib.suppress(httpcore2.WriteError):  # as httpcore's: the server may have answered and closed
            await self._send_held()
        return await self._inner.read(max_bytes, timeout)

    async def _send_held(self) -> None:
        if self._held:
            held, self._held = self._held, []
            await self._inner.write(held[0] if len(held) == 1 else b"".join(held), self._timeout)

    async def aclose(self) -> None:
        self._held = []
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        await self._send_held()
        return CoalescingStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class CoalescingBackend(httpcore2.AsyncNetworkBackend):
    """A pool's network backend, its streams wrapped in `CoalescingStream`."""

    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return CoalescingStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore2.AsyncNetworkStream:
        return CoalescingStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
