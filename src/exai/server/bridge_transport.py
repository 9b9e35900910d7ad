"""The bridge's HTTP transport: it knows whether a request reached the daemon.

The SDK's Streamable HTTP client runs every request as its own POST inside one task group, so a transport error
on one POST would tear down the whole session and fail every call in flight with it. This transport answers such
an error for that request alone, as a JSON-RPC error that says what is known about its delivery:

- `not_sent`: the connection could not be opened, or the daemon refused the request before running it (it no
  longer knows the session); sending it again cannot run anything twice.
- `unknown`: the request was handed to the network and the connection broke before the answer came; the daemon
  may have run it.

An SSE answer cut off mid-stream reaches the caller as the SDK's CONNECTION_CLOSED, which also means `unknown`.
A 401 or 403 is neither: the daemon refused the caller's token, which no retry can change (see `refused_status`).
A 503 (the daemon draining or full, a balancer with no daemon behind it) is `not_sent`; a 502 or 504 from a
balancer is `unknown`. Answers that say the URL is wrong (404 before any session, 405, 410, 421) and a TLS
handshake that fails (an untrusted certificate, HTTPS to a plain-HTTP port) are neither: retrying cannot fix them
(see `permanent_failure`), so the bridge reports them at once instead of retrying until its connect timeout.
"""

from __future__ import annotations

import json
import ssl
from enum import StrEnum
from typing import Any

import httpx2
import mcp_types as types
from mcp.shared.exceptions import MCPError

DELIVERY_KEY = "exai_bridge_delivery"
REFUSED_KEY = "exai_bridge_refused"
PERMANENT_KEY = "exai_bridge_permanent"
WRONG_URL_STATUSES = {404: "Not Found", 405: "Method Not Allowed", 410: "Gone", 421: "Misdirected Request"}
_NEVER_CONNECTED = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


class Delivery(StrEnum):
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"


def delivery_of(error: MCPError) -> Delivery | None:
    """What a failed request's error says about its delivery; None for an answer from the daemon itself."""
    if isinstance(error.data, dict) and error.data.get(DELIVERY_KEY) in set(Delivery):
        return Delivery(error.data[DELIVERY_KEY])
    if error.code in (types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT):
        return Delivery.UNKNOWN
    return None


class DeliveryTrackingTransport(httpx2.AsyncBaseTransport):
    """Wraps the real transport; a JSON-RPC request whose POST fails gets an error answer of its own."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request_id = _jsonrpc_request_id(request)
        if request_id is None:  # the GET event stream, a DELETE, or a notification: nobody waits for an answer
            return await self._inner.handle_async_request(request)
        try:
            response = await self._inner.handle_async_request(request)
        except _NEVER_CONNECTED as exc:
            if _is_tls_failure(exc):
                return _permanent(request_id, f"the TLS handshake failed ({_describe(exc)})")
            return _failed(request_id, Delivery.NOT_SENT, f"could not connect ({_describe(exc)})")
        except httpx2.TransportError as exc:
            return _failed(request_id, Delivery.UNKNOWN, f"the connection broke ({_describe(exc)})")
        if response.status_code in (401, 403):
            await response.aclose()
            return _refused(request_id, response.status_code)
        if response.status_code == 404 and "mcp-session-id" in request.headers:
            await response.aclose()
            return _failed(request_id, Delivery.NOT_SENT, "the daemon no longer knows this session (it restarted)")
        if response.status_code == 503:  # the daemon (or its balancer) turned the request away: nothing ran
            await response.aclose()
            return _failed(request_id, Delivery.NOT_SENT, "the daemon is unavailable (503)")
        if response.status_code in (502, 504):  # a balancer lost the daemon, perhaps after it took the request
            await response.aclose()
            return _failed(request_id, Delivery.UNKNOWN, f"the gateway answered {response.status_code}")
        if response.status_code in WRONG_URL_STATUSES:
            await response.aclose()
            reason = WRONG_URL_STATUSES[response.status_code]
            return _permanent(request_id, f"it answered {response.status_code} {reason}")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def refused_status(error: BaseException) -> int | None:
    """401 or 403 when the daemon refused the token of the request that failed with `error`, else None."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError) and isinstance(error.data, dict):
        status = error.data.get(REFUSED_KEY)
        return status if isinstance(status, int) else None
    return None


def permanent_failure(error: BaseException) -> str | None:
    """What is wrong when the request failed in a way no retry can fix (wrong URL, TLS), else None."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, MCPError) and isinstance(error.data, dict):
        detail = error.data.get(PERMANENT_KEY)
        return detail if isinstance(detail, str) else None
    return None


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _permanent(request_id: str | int, detail: str) -> httpx2.Response:
    error = {"code": types.INVALID_REQUEST, "message": f"Daemon connection failed: {detail}"}
    return httpx2.Response(
        200, json={"jsonrpc": "2.0", "id": request_id, "error": {**error, "data": {PERMANENT_KEY: detail}}}
    )


def _jsonrpc_request_id(request: httpx2.Request) -> str | int | None:
    if request.method != "POST":
        return None
    try:
        message = json.loads(request.content)
    except (ValueError, httpx2.RequestNotRead):
        return None
    if not isinstance(message, dict) or "method" not in message:
        return None
    request_id = message.get("id")
    return request_id if isinstance(request_id, str | int) else None


def _failed(request_id: str | int, delivery: Delivery, detail: str) -> httpx2.Response:
    error: dict[str, Any] = {
        "code": types.CONNECTION_CLOSED,
        "message": f"Daemon connection failed: {detail}",
        "data": {DELIVERY_KEY: delivery.value},
    }
    return httpx2.Response(200, json={"jsonrpc": "2.0", "id": request_id, "error": error})


def _refused(request_id: str | int, status: int) -> httpx2.Response:
    error = {"code": types.INVALID_REQUEST, "message": f"The daemon refused the token ({status})"}
    return httpx2.Response(
        200, json={"jsonrpc": "2.0", "id": request_id, "error": {**error, "data": {REFUSED_KEY: status}}}
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
