"""uvicorn's h11 connection handling, with the limits it lacks against slow clients (slowloris).

uvicorn holds a connection for as long as the client takes to send its request headers, without authentication:
thousands of sockets that never finish a request exhaust the process's file descriptors. Here

- a connection beyond `max_connections` is answered 503 at once and closed;
- a connection beyond `per_address` from one client address (an IPv6 client's /64, which one host usually holds
  whole) is answered 429 at once and closed, so one client cannot take every connection from the others;
- a request's line and headers must arrive within `header_seconds` of the connection opening or of its first
  byte on a kept-alive connection, else the daemon answers 408 and closes the connection;
- the rest of a body the application answered without reading must arrive within `body_seconds`, else the
  connection is closed.

The time limit for a body the application reads is `request_body.BodyDeadline`, where a 408 can still reach the
application's response path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from collections import Counter

from exai.observability.logging import get_logger
from exai.server.internals import UvicornH11Connection

log = get_logger(__name__)


def plain_response(status: str, message: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for answers given outside any request cycle."""
    body = message.encode()
    lines = [
        f"HTTP/1.1 {status}",
        "content-type: text/plain; charset=utf-8",
        f"content-length: {len(body)}",
        "connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class GuardedH11Protocol(UvicornH11Connection):
    """uvicorn's H11Protocol with a connection cap, a time limit for request headers, and one for unread bodies."""

    header_seconds: float = 10.0
    body_seconds: float = 30.0
    max_connections: int = 512
    per_address: int = 512
    by_address: Counter[str]
    """Open connections per client address (of one server: each protocol class made by `guarded_h11_protocol` has
    its own)."""
    _address: str | None = None  # counted in `by_address` while this connection is open
    _clock: asyncio.TimerHandle | None = None
    _waiting_for: str | None = None  # "headers", or "body" of a request already answered

    def opened(self) -> None:
        if self.open_connections() > self.max_connections:
            self._refuse(
                "503 Service Unavailable",
                f"Service Unavailable: the server holds its maximum of {self.max_connections} connections "
                "(EXAI_MAX_CONNECTIONS). Retry shortly.",
                "connection cap reached",
                max_connections=self.max_connections,
            )
            return
        address = address_key(self.peer_host())
        if address is not None:
            if self.by_address[address] >= self.per_address:
                self._refuse(
                    "429 Too Many Requests",
                    f"Too Many Requests: your address holds its share of {self.per_address} open connections "
                    "(EXAI_MAX_CONNECTIONS_PER_ADDRESS). Close some, or retry shortly.",
                    "the address holds its share",
                    per_address=self.per_address,
                )
                return
            self.by_address[address] += 1
            self._address = address
        self._watch()

    def _refuse(self, status: str, message: str, why: str, **limit: int) -> None:
        """Answer a connection over a limit at once (retry in a second) and close it; the log says which limit."""
        log.warning(f"connection refused: {why}", **limit)
        self.close(plain_response(status, message, "retry-after: 1"))

    def progressed(self) -> None:
        self._watch()

    def closing(self) -> None:
        self._stop_clock()
        if self._address is not None:
            self.by_address[self._address] -= 1
            if self.by_address[self._address] <= 0:
                del self.by_address[self._address]
            self._address = None

    def _watch(self) -> None:
        """Run a clock while the client owes us request headers, or the rest of a body we already answered.

        A body the application is reading is timed by `BodyDeadline`; one it answered without reading is still
        drained (the client cannot read the answer before it has sent the body), within the same time.
        """
        waiting_for = self.owed()
        if waiting_for != self._waiting_for:
            self._stop_clock()
            if waiting_for is not None:
                seconds = self.header_seconds if waiting_for == "headers" else self.body_seconds
                self._clock = self.call_later(seconds, self._too_slow)
                self._waiting_for = waiting_for

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
        self._clock, self._waiting_for = None, None

    def _too_slow(self) -> None:
        waiting_for = self._waiting_for
        self._clock, self._waiting_for = None, None
        if self.is_closing():
            return
        log.info("connection closed: the client was too slow", waiting_for=waiting_for)
        if waiting_for == "headers":
            message = (
                f"Request Timeout: the request line and headers must arrive within {self.header_seconds:g} s "
                "(EXAI_HTTP_HEADER_TIMEOUT_SECONDS)."
            )
            self.close(plain_response("408 Request Timeout", message))
        else:
            self.close()


def address_key(host: str | None) -> str | None:
    """What the per-address share counts: the IPv4 address, or the /64 of an IPv6 one (one host usually holds a
    whole /64 and can pick any address in it); None when there is no IP address (a Unix socket)."""
    if host is None:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def guarded_h11_protocol(
    header_seconds: float, body_seconds: float, max_connections: int, per_address: int
) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn's `http` option, with these limits (and its own count per address)."""
    limits = {
        "header_seconds": header_seconds,
        "body_seconds": body_seconds,
        "max_connections": max_connections,
        "per_address": per_address,
        "by_address": Counter[str](),
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)


def raise_file_limit(needed: int) -> None:
    """Let the process open `needed` files (sockets) when the hard limit allows: a soft limit of 1,024, common in
    containers, would otherwise fail connections the connection cap admits with "too many open files"."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "file limit below the connection cap",
            open_files_limit=target,
            needed=needed,
            remedy="raise the hard limit (ulimit -Hn, or the container's nofile) or lower EXAI_MAX_CONNECTIONS",
        )
