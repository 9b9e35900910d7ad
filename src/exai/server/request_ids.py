"""Refuse a JSON-RPC request whose id is already in flight on the same MCP session.

The SDK's Streamable HTTP transport routes each answer by the request id (as a string) within a session; two
requests with one id at once overwrite each other's response stream, so one caller gets the other's answer and
the other hangs. JSON-RPC requires ids to be unique among a client's outstanding requests, so a duplicate is an
Invalid Request (-32600), answered at once, before the SDK sees it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exai.server.refusals import refuse
from exai.server.request_body import read_body


def request_ids(body: bytes) -> list[Any]:
    """The ids of the JSON-RPC requests (not notifications or responses) in a POST body."""
    try:
        # The SDK's own parser: its depth limit (about 200 levels) answers deep nesting with a JSON-RPC parse
        # error, where json.loads would raise RecursionError. A body it cannot parse has no ids; the SDK
        # answers it -32700.
        payload = pydantic_core.from_json(body)
    except ValueError:
        return []
    items = payload if isinstance(payload, list) else [payload]
    return [item["id"] for item in items if isinstance(item, dict) and "method" in item and "id" in item]


MAX_META_BYTES = 65_536
"""How large a message's `params._meta` may be: it carries small protocol fields (a progress token, a task's
options), and whatever it holds lives as long as the request's handler, which goes on after a client hangs up."""


def _messages(body: bytes) -> list[Any]:
    try:
        payload = pydantic_core.from_json(body)
    except ValueError:  # the SDK answers it -32700
        return []
    return payload if isinstance(payload, list) else [payload]


MAX_ID_CHARS = 256
"""The longest string id taken. Clients send counters or UUIDs; an id is held while its request runs (the session's
in-flight ids) and goes back in its answer, so one of 100,000 characters (a body may hold that) is refused, and so
is an integer id outside 64 bits (the parser takes 4,300 digits)."""


def id_problem(value: Any) -> str | None:
    """What is wrong with a request's id, or None: MCP allows strings and integers, and this server short strings."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return f"is a {_json_kind(value)}; JSON-RPC request ids in MCP are strings or integers"
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        return f"has {len(value):,} characters; this server takes string ids of at most {MAX_ID_CHARS}"
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return "is an integer outside the signed 64-bit range this server takes"
    return None


def wrong_id(messages: list[Any]) -> tuple[Any, str] | None:
    """The first id of a message with a method that is not one to take, with what is wrong with it.

    The SDK reads a message whose id is of another type as a notification and answers 202 with no body, so the
    caller waits for an answer that never comes.
    """
    for item in messages:
        is_request = isinstance(item, dict) and "method" in item and "id" in item
        if is_request and (problem := id_problem(item["id"])) is not None:
            return item["id"], problem
    return None


def oversized_meta(messages: list[Any]) -> int | None:
    """The size of the first `params._meta` over `MAX_META_BYTES`, if any."""
    for item in messages:
        params = item.get("params") if isinstance(item, dict) else None
        meta = params.get("_meta") if isinstance(params, dict) else None
        if meta is not None and (size := len(pydantic_core.to_json(meta))) > MAX_META_BYTES:
            return size
    return None


class MessageCheck:
    """Answer with an Invalid Request a message whose id is of the wrong type (a float, a boolean, null, an object)
    or a string over `MAX_ID_CHARS`, or whose `_meta` is over `MAX_META_BYTES`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, messages, whole = await read_body(receive, DEFAULT_MAX_REQUEST_BODY_SIZE)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        sent = _messages(body) if whole else []
        if (size := oversized_meta(sent)) is not None:
            await refuse(
                send,
                400,
                f"Invalid Request: params._meta holds {size} bytes, at most {MAX_META_BYTES}; it is for small protocol "
                "fields (a progress token), not data. Put data in the tool's arguments.",
            )
            return
        if (wrong := wrong_id(sent)) is not None:
            value, problem = wrong
            await refuse(
                send,
                400,
                f"Invalid Request: the request id {_shown(value)} {problem}. Send the request again with "
                f"a string (at most {MAX_ID_CHARS} characters) or a 64-bit integer id.",
            )
            return
        await self.app(scope, replay, send)


def _shown(value: Any, chars: int = 40) -> str:
    text = json.dumps(value)
    if len(text) <= chars:
        return text
    return text[: chars - 2] + ('…"' if text.startswith('"') else "…")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float):
        return "number with a fraction or exponent"
    return {type(None): "null", list: "list", dict: "object"}.get(type(value), type(value).__name__)


ANSWERED_CLEANUP_SECONDS = 5.0
"""How long a request reusing an answered request's id waits for the SDK to forget that one (it does so at once
after the answer; a wait this long means its handler is stuck, and the id is refused as in flight)."""
UNANSWERED_GRACE_SECONDS = 0.5
"""How long a request reusing the id of one whose HTTP answer has not ended waits before it is refused: on an event
stream the JSON-RPC answer goes out as an event a moment before the stream ends, and a client may reuse the id as
soon as it reads the event."""


@dataclass
class _InFlight:
    answered: bool = False  # the whole response went out: the client may reuse the id
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # the SDK has forgotten the request


class InFlightIds:
    """Tracks the ids of requests being answered, per principal and session, and refuses duplicates.

    A request's id is the client's again once its whole answer has gone out (JSON-RPC allows reusing it), but
    the SDK forgets the request a moment later, when its handler returns; a request reusing the id in between
    would have its answer stream taken by that cleanup. So such a request waits for it; one reusing the id of a
    request whose answer has not gone out is refused unless that request ends within a moment (its answer may
    have gone out as an event on a stream not yet closed)."""

    def __init__(self, app: ASGIApp, principal_of: Callable[[Scope], str | None]) -> None:
        self.app, self.principal_of = app, principal_of
        self._in_flight: dict[tuple[str | None, str, str], _InFlight] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = Headers(scope=scope).get(MCP_SESSION_ID_HEADER) if scope["type"] == "http" else None
        if session is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, messages, whole = await read_body(receive, DEFAULT_MAX_REQUEST_BODY_SIZE)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        principal = self.principal_of(scope)
        # The SDK keys answers by str(id), so 7 and "7" are the same request to it.
        keys = {(principal, session, str(request_id)) for request_id in (request_ids(body) if whole else [])}
        if taken := await self._first_unanswered(keys):
            duplicate = next(i for i in request_ids(body) if str(i) == taken[2])
            await refuse(
                send,
                400,
                f"Request id {json.dumps(duplicate)} is already in flight on this session. Give every request "
                "an id that no unanswered request of the session uses.",
                request_id=duplicate,
            )
            return
        mine = _InFlight()
        for key in keys:
            self._in_flight[key] = mine

        async def send_and_note(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                mine.answered = True

        try:
            await self.app(scope, replay, send_and_note)
        finally:
            for key in keys:
                if self._in_flight.get(key) is mine:
                    del self._in_flight[key]
            mine.gone.set()

    async def _first_unanswered(self, keys: set[tuple[str | None, str, str]]) -> tuple[str | None, str, str] | None:
        """The first of `keys` still held by another request once that one had its moment to end (see
        ANSWERED_CLEANUP_SECONDS and UNANSWERED_GRACE_SECONDS). The keys are checked again after every wait: a
        request of the same id may have taken one meanwhile (bodies are single requests: the SDK refuses batches)."""
        for key in keys:
            while (held := self._in_flight.get(key)) is not None:
                try:
                    seconds = ANSWERED_CLEANUP_SECONDS if held.answered else UNANSWERED_GRACE_SECONDS
                    await asyncio.wait_for(held.gone.wait(), seconds)
                except TimeoutError:
                    return key
        return None
