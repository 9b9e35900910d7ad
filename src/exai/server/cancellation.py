"""Stateless cancellation: a `notifications/cancelled` POST cancels its tenant's call, on whichever replica runs it.

In stateless mode (EXAI_STATELESS_HTTP=true) each POST is served on its own, so the SDK cannot match a
handshake-era client's `notifications/cancelled` (a separate POST, often on another replica) to the call it names,
and acknowledges it without effect: the upstream request runs to its end and the tenant pays for it. Here every
`tools/call` POST runs inside a cancel scope registered under (tenant, request id); a cancellation cancels the
scopes registered under the same key on this replica and, when Redis is configured, is published so that every
other replica does the same. The call ends as `cancelled`, and its upstream request is cut.

Request ids are chosen by clients, so they are matched only within one tenant: another tenant's cancellation
never touches a call. Calls of one tenant in flight under the same id at once are cancelled together.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import TYPE_CHECKING, Any

import anyio
import pydantic_core
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exai.background import stop_task
from exai.observability.logging import get_logger
from exai.server.request_body import read_body

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = get_logger(__name__)
CHANNEL = "exai:cancellations"
REQUEST_CANCELLED = -32800  # the SDK's answer to a cancelled request on handshake-era protocol versions
_RESUBSCRIBE_SECONDS = 1.0
Key = tuple[str, str]


class CallCancellations:
    """The `tools/call` requests running on this replica, by (tenant, request id), and the channel between replicas."""

    def __init__(self, redis: aioredis.Redis | None) -> None:
        self.redis = redis
        self._running: dict[Key, set[anyio.CancelScope]] = {}

    @contextmanager
    def registered(self, tenant: str, request_ids: list[Any]) -> Iterator[anyio.CancelScope]:
        """A cancel scope for the POST carrying these requests, findable by each of their ids while it runs."""
        scope = anyio.CancelScope()
        keys = {(tenant, str(request_id)) for request_id in request_ids}
        for key in keys:
            self._running.setdefault(key, set()).add(scope)
        try:
            yield scope
        finally:
            for key in keys:
                scopes = self._running.get(key, set())
                scopes.discard(scope)
                if not scopes:
                    self._running.pop(key, None)

    def cancel_here(self, tenant: str, request_id: str) -> int:
        """Cancel this replica's calls of `tenant` with `request_id`; how many there were."""
        scopes = self._running.get((tenant, request_id), set())
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    async def cancel(self, tenant: str, request_id: str) -> None:
        """Cancel the tenant's call here, and tell the other replicas (best effort: Redis may be down)."""
        found = self.cancel_here(tenant, request_id)
        log.info("call_cancelled_by_client", tenant=tenant, request_id=request_id[:64], here=found)
        if self.redis is None:
            return
        try:
            await self.redis.publish(CHANNEL, json.dumps([tenant, request_id]))
        except Exception as exc:  # the cancellation still applied here; other replicas miss it
            log.warning("cancellation_not_published", error=type(exc).__name__)

    @asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """While open, cancellations published by other replicas are applied here."""
        if self.redis is None:
            yield
            return
        task = asyncio.create_task(self._listen(self.redis), name="exai-cancellations")
        try:
            yield
        finally:
            await stop_task(task)

    async def _listen(self, redis: aioredis.Redis) -> None:
        warned = False
        while True:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                if warned:
                    log.info("cancellations_resubscribed")
                warned = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        self._apply(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: resubscribe once it is back
                if not warned:
                    log.warning("cancellations_unsubscribed", error=type(exc).__name__)
                    warned = True
                await asyncio.sleep(_RESUBSCRIBE_SECONDS)
            finally:
                with anyio.CancelScope(shield=True), suppress(Exception):
                    await pubsub.aclose()

    def _apply(self, data: Any) -> None:
        try:
            tenant, request_id = json.loads(data)
        except (TypeError, ValueError):
            return
        if isinstance(tenant, str) and isinstance(request_id, str):
            self.cancel_here(tenant, request_id)


def _messages(body: bytes) -> list[dict[str, Any]]:
    try:
        payload = pydantic_core.from_json(body)
    except ValueError:
        return []
    items = payload if isinstance(payload, list) else [payload]
    return [item for item in items if isinstance(item, dict)]


class StatelessCancellation:
    """Runs each `tools/call` POST cancellable by id, and applies `notifications/cancelled` POSTs of the tenant."""

    def __init__(self, app: ASGIApp, cancellations: CallCancellations, tenant_of: Callable[[Scope], str | None]):
        self.app, self.cancellations, self.tenant_of = app, cancellations, tenant_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant = self.tenant_of(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if tenant is None:
            await self.app(scope, receive, send)
            return
        body, messages, whole = await read_body(receive, DEFAULT_MAX_REQUEST_BODY_SIZE)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        items = _messages(body) if whole else []
        for item in items:
            if item.get("method") == "notifications/cancelled" and "id" not in item:
                request_id = cancelled_request_id_from_params(item.get("params"))
                if request_id is not None:
                    await self.cancellations.cancel(tenant, str(request_id))
        calls = [item["id"] for item in items if item.get("method") == "tools/call" and "id" in item]
        if not calls:
            await self.app(scope, replay, send)
            return
        response: dict[str, bool] = {"started": False, "ended": False, "stream": False}

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["started"] = True
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                response["stream"] = content_type.startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["ended"] = True
            await send(message)

        with self.cancellations.registered(tenant, calls) as cancel_scope, cancel_scope:
            await self.app(scope, replay, tracked)
        if cancel_scope.cancelled_caught:
            await _end_cancelled(send, calls[0], response)


async def _end_cancelled(send: Send, request_id: Any, response: dict[str, bool]) -> None:
    """Finish the cancelled call's HTTP response with the SDK's "Request cancelled" answer (as an event on a stream
    already open), so a client that still reads it sees why it ended."""
    if response["ended"]:
        return
    error = {"code": REQUEST_CANCELLED, "message": "Request cancelled"}
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}).encode()
    if response["started"]:
        event = b"event: message\r\ndata: " + body + b"\r\n\r\n" if response["stream"] else b""
        await send({"type": "http.response.body", "body": event, "more_body": False})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
