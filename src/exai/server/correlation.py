"""The correlation id of every HTTP request: chosen once, used by the call, and the same one echoed back."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exai.observability.context import caller_correlation_id, new_correlation_id


class RequestIdMiddleware:
    """Give every HTTP request one safe correlation id and echo it in the X-Request-ID response header.

    The id is the caller's X-Request-ID or traceparent trace id when it is a safe one, else a new id: an unsafe
    value is never echoed. The request's X-Request-ID header is replaced by the chosen id, so the tool call
    behind it uses the id the response names.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = (caller_correlation_id(Headers(scope=scope)) or new_correlation_id()).encode()
        headers = [(name, value) for name, value in scope["headers"] if name != b"x-request-id"]
        scope = {**scope, "headers": [*headers, (b"x-request-id", request_id)]}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)
