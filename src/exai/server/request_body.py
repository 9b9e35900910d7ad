"""Reading request bodies: a time limit for every endpoint, and whole bodies only for the MCP SDK.

A client that starts a body and never finishes it would hold its request (and its connection) open forever;
`BodyDeadline` answers it 408 once `seconds` have passed since the request's headers arrived. A client that goes
away in the middle of its body made the SDK log a ten-line `ClientDisconnect` traceback at error level;
`CompleteBody` reads the whole body before the SDK sees the request, so an incomplete body is one info line.

A body and what it is parsed into stay in memory until its request is answered (a 4 MiB body held about 19 MB), and
no per-call limit counts a `ping` or a call the limiter refuses. So `BodyBudget` caps the bytes of bodies this
replica holds at once, per tenant and in all, counted as they arrive: one tenant's many large requests are refused
(429) once their bytes pass its share, instead of filling the memory every tenant's calls live in, and a connection
that only announces a large body holds nothing. The bytes are given back when the HTTP request ends: a call whose
client hung up goes on with its parsed arguments, bounded by the tenant's concurrency once the limiter admits it.
What a body parses into is bounded too: one of more than `MAX_JSON_VALUES` values is refused (413) before it is
parsed (4 MB of `[{},{},...]` parsed into 1.4 million objects, about 130 MB).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

import anyio
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exai.errors import DeadlineError
from exai.observability.logging import get_logger
from exai.server.refusals import error_response, refuse

log = get_logger(__name__)
DISCONNECT: Message = {"type": "http.disconnect"}
MAX_JSON_VALUES = 20_000
"""Values (objects, arrays and the elements between commas) a request body may hold: a tool call with its prompt,
files and findings has tens; a body with more is a flood of tiny objects, each far larger parsed than sent."""
_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
"""A JSON string, or what is left of the body after an unclosed one: every match that starts at a quote succeeds,
so no quote is tried twice (a pattern that can fail made a 160 KB body of escaped quotes take a minute)."""


def json_values(body: bytes) -> int:
    """About how many values a JSON body parses into: its objects, arrays and commas outside strings (a string's
    content may hold any of those characters and is one value)."""
    bare = _STRING.sub(b"", body)
    return bare.count(b"{") + bare.count(b"[") + bare.count(b",")


async def read_body(receive: Receive, limit: int) -> tuple[bytes, list[Message], bool]:
    """Read the request body (up to `limit` bytes), returning it, the messages to replay and whether it is whole."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"", messages, False
        size += len(message.get("body", b""))
        if size > limit:
            return b"", messages, False
        if not message.get("more_body", False):
            return b"".join(m.get("body", b"") for m in messages), messages, True


class BodyDeadline:
    """Answer 408 when a request's body has not arrived `seconds` after its headers; the app then sees a disconnect."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        body_done = response_started = timed_out = False

        async def receive_in_time() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return DISCONNECT
            if body_done:
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                message = await receive()
                body_done = message["type"] != "http.request" or not message.get("more_body", False)
                return message
            timed_out = True
            if not response_started:
                await self.answer_timeout(scope, send)
            return DISCONNECT

        async def send_unless_answered(message: Message) -> None:
            nonlocal response_started
            if timed_out:
                return  # the client already has its 408
            response_started = True
            await send(message)

        await self.app(scope, receive_in_time, send_unless_answered)

    async def answer_timeout(self, scope: Scope, send: Send) -> None:
        error = DeadlineError(
            f"Request Timeout: the request body did not arrive within {self.seconds:g} s of its headers.",
            code="body_timeout",
            remedy="Send the whole body at once, or raise EXAI_HTTP_BODY_TIMEOUT_SECONDS for slow links.",
        )
        response = error_response(error, scope, 408, connection="close")

        async def no_body() -> Message:
            return DISCONNECT

        await response(scope, no_body, send)


class BodyBudget:
    """The bytes of request bodies held at once, per tenant and in all (see the module's docstring)."""

    def __init__(self, per_tenant: int, total: int) -> None:
        self.per_tenant, self.total = per_tenant, total
        self.held: dict[str, int] = defaultdict(int)
        self.all = 0

    def take(self, tenant: str, size: int) -> tuple[int, str] | None:
        """Count `size` more bytes for `tenant`; when that would pass a cap, count nothing and give the HTTP status
        and the reason: 429 for the tenant's own cap, 503 for the server's."""
        held = self.held.get(tenant, 0)
        if held + size > self.per_tenant:
            return 429, (
                f"Too many large requests at once: yours being read or answered here hold {held} bytes of request "
                f"bodies, and this one would pass the {self.per_tenant} a tenant may hold "
                "(EXAI_BODY_BYTES_PER_TENANT). Wait for some to be answered, or send file paths instead of contents."
            )
        if self.all + size > self.total:
            return 503, (
                f"The server holds {self.all} bytes of request bodies, and this one would pass its {self.total} "
                "(EXAI_BODY_BYTES_TOTAL). Retry shortly."
            )
        self.held[tenant] += size
        self.all += size
        return None

    def give_back(self, tenant: str, size: int) -> None:
        if not size:
            return
        self.all -= size
        self.held[tenant] -= size
        if not self.held[tenant]:
            del self.held[tenant]


class CompleteBody:
    """Hand the MCP SDK a POST only once its whole body is in (at most the SDK's 4 MiB), its bytes counted in the
    budget as they arrive and until the request is answered (a connection that sends nothing holds nothing)."""

    def __init__(
        self,
        app: ASGIApp,
        budget: BodyBudget,
        tenant_of: Callable[[Scope], str | None],
        limit: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
    ) -> None:
        self.app, self.budget, self.tenant_of, self.limit = app, budget, tenant_of, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.limit:
            await self.refuse_too_large(send)
            return
        tenant = self.tenant_of(scope) or ""
        held = 0
        try:
            chunks: list[bytes] = []
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    log.info("request body incomplete: the client went away or was too slow", received_bytes=held)
                    return
                chunk = message.get("body", b"")
                if held + len(chunk) > self.limit:
                    await self.refuse_too_large(send)
                    return
                if (refused := self.budget.take(tenant, len(chunk))) is not None:
                    status, reason = refused
                    await refuse(send, status, reason, retry_after="1")
                    return
                held += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            await self.answer(scope, b"".join(chunks), receive, send)
        finally:
            self.budget.give_back(tenant, held)

    async def answer(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        if len(body) > MAX_JSON_VALUES and (values := json_values(body)) > MAX_JSON_VALUES:  # shorter cannot hold more
            await refuse(
                send,
                413,
                f"Request body too complex: about {values} JSON values, at most {MAX_JSON_VALUES}. Send file paths "
                "instead of file contents, and split long lists over several calls.",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def refuse_too_large(self, send: Send) -> None:
        await refuse(
            send,
            413,
            f"Request body too large: at most {self.limit} bytes. Send file paths instead of file contents, or "
            "split the request.",
        )
