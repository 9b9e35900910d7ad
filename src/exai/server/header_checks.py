"""Checks on request headers: Host and Origin for every endpoint (DNS rebinding), Accept for /mcp.

A web page can make a browser send requests to a daemon on the user's loopback through a DNS name it controls
(DNS rebinding). Refusing Host names and browser Origins that are not our own closes that, on every endpoint,
not only /mcp: /dashboard/data, /metrics, /alerts and /readyz of a daemon without auth hold operator data.

Orchestrators probe and scrape by address: kubelet's probes and a Prometheus pod-IP scrape send `Host: 10.244.1.7:8765`.
A Host that is an IP literal cannot come from DNS rebinding (the browser sends the name it resolved, never the
address), so /healthz, /readyz and /metrics answer any IP-literal Host; every other path, /mcp included, still wants
one of our names. A foreign Origin is refused everywhere.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from exai.errors import PermissionDeniedError
from exai.server.refusals import error_response, refuse

ACCEPT_BOTH = "application/json, text/event-stream"
PORT = re.compile(r"[0-9]{1,5}")
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
"""Paths an orchestrator reaches by address (probes, scrapes): they answer a Host that is an IP literal."""


def matches(value: str, patterns: list[str]) -> bool:
    """`patterns` are exact values or `base:*`: exactly `base`, a colon and a numeric port."""
    base, _, port = value.rpartition(":")
    any_port = f"{base}:*" if PORT.fullmatch(port) else None
    return any(value == p or p == any_port for p in patterns)


def is_ip_literal(host: str) -> bool:
    """`10.0.0.7`, `10.0.0.7:8765`, `[fd00::7]` or `[fd00::7]:8765` (a port, when given, is numeric)."""
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        if rest and not (rest.startswith(":") and PORT.fullmatch(rest[1:])):
            return False
    else:
        address, colon, port = host.partition(":")
        if colon and not PORT.fullmatch(port):
            return False
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


class HostOriginCheck:
    """Refuse requests whose Host, or browser Origin, is not one this daemon answers to."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], allowed_origins: list[str]) -> None:
        self.app, self.allowed_hosts, self.allowed_origins = app, allowed_hosts, allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host, origin = headers.get("host", ""), headers.get("origin")
        probe_by_address = scope["path"] in PROBE_PATHS and is_ip_literal(host)
        if not probe_by_address and not matches(host, self.allowed_hosts):
            error = PermissionDeniedError(
                f"Host {host[:64]!r} is not a name this server answers to.",
                code="host_not_allowed",
                remedy="Connect through 127.0.0.1/localhost or the configured host, or add the name to "
                "EXAI_ALLOWED_HOSTS.",
            )
            await error_response(error, scope, 421)(scope, receive, send)
            return
        if origin is not None and not matches(origin, self.allowed_origins):
            error = PermissionDeniedError(
                f"Origin {origin[:64]!r} may not call this server.",
                code="origin_not_allowed",
                remedy="Browser pages may call the server only from its own host names (see EXAI_ALLOWED_HOSTS).",
            )
            await error_response(error, scope, 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def accepted_types(headers: Headers) -> set[str]:
    return {part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")}


class AcceptCheck:
    """MCP clients must name both application/json and text/event-stream in Accept (the SDK also takes */*)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            wanted = {"POST": {"application/json", "text/event-stream"}, "GET": {"text/event-stream"}}
            missing = wanted.get(scope["method"], set()) - accepted_types(Headers(scope=scope))
            if missing:
                await refuse(
                    send,
                    406,
                    f"Not Acceptable: the Accept header must list {' and '.join(sorted(missing))}. Send "
                    f"'Accept: {ACCEPT_BOTH}' on POST and 'Accept: text/event-stream' on GET.",
                )
                return
        await self.app(scope, receive, send)


class FreshStreams:
    """A GET /mcp that asks to resume a stream (`Last-Event-ID`) opens a fresh one: the daemon keeps no event store
    to replay from, and the SDK, asked to resume without one, answered nothing (uvicorn's 500 and an error log line
    per request, at any tenant's will). What was sent while the client was away is not replayed. The daemon wires
    this in only because it configures no event store (server/http.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            headers = scope["headers"]
            kept = [(name, value) for name, value in headers if name.lower() != b"last-event-id"]
            if len(kept) != len(headers):
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)
