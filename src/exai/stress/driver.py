"""One MCP client session over Streamable HTTP, and one timed tool call that never hangs and never raises."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from exai.stress.results import Sample


@dataclass
class Outcome:
    sample: Sample
    data: dict[str, Any]  # the structured result, or the error (`_meta["exai/error"]`) when not ok


def leaves(exc: BaseException) -> list[BaseException]:
    """The real errors inside `exc`: an anyio task group (the SDK's transport runs one per session) raises an
    `ExceptionGroup` wrapping the error of the task that failed; groups may nest."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def describe(exc: BaseException) -> tuple[str, str]:
    """The type name(s) and message of what `exc` is really about: the leaves of a task group's exception group
    (the cancellations a failing task causes in its siblings left out), e.g. `("ReadTimeout", "ReadTimeout: …")`
    for a group wrapping an httpx read timeout. A message-less exception (httpx timeouts often are) is described
    by the exception it was raised from."""
    found = leaves(exc)
    real = [e for e in found if not isinstance(e, asyncio.CancelledError)] or found
    names = list(dict.fromkeys(type(e).__name__ for e in real))
    return "+".join(names), "; ".join(dict.fromkeys(f"{type(e).__name__}: {_said(e)}" for e in real))[:300]


def _said(exc: BaseException) -> str:
    """`exc`'s message, or else that of the first exception down its chain that has one, named: httpx's ReadError
    says nothing, the `ConnectionResetError` it was raised from says what happened."""
    if str(exc):
        return str(exc)
    seen: set[int] = {id(exc)}
    inner = exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen:
        if str(inner):
            return f"{type(inner).__name__}: {inner}"
        seen.add(id(inner))
        inner = inner.__cause__ or inner.__context__
    return "(no message)"


@asynccontextmanager
async def session(url: str, token: str | None = None, timeout: float = 300.0) -> AsyncIterator[Client]:
    """An initialised MCP session on `url` (…/mcp); closed (DELETE) on exit."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout, connect=30)) as http,
        Client(streamable_http_client(url, http_client=http), read_timeout_seconds=timeout) as client,
    ):
        yield client


MARKED_FIELDS = ("prompt", "step")
"""The argument a call's marker is appended to: the text that reaches the model (a chat's prompt, a workflow step)."""


def mark(args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`args` with a fresh simulator marker in its prompt (or step), and the marker ("" when there is no text)."""
    for name in MARKED_FIELDS:
        if isinstance(args.get(name), str):
            marker = f"simmark-{secrets.token_hex(8)}"
            return {**args, name: f"{args[name]} {marker}"}, marker
    return args, ""


async def call(
    client: Client,
    tool: str,
    args: dict[str, Any],
    epoch: float,
    ceiling: float = 300.0,
    *,
    marked: bool = True,
    on_cut: Callable[[Sample], None] | None = None,
) -> Outcome:
    """Call `tool`; the sample's category is the server's error category, `hang` past `ceiling`, or the
    exception's class for a transport failure. Unless `marked` is False the prompt carries a marker, so the run can
    ask the simulator whether a failed call was answered (paid for) upstream.

    A call cut off by a cancellation (its session's transport failed, and the SDK's task group cancelled every call
    of the session) raises it on; `on_cut` first gets its sample (category `cut`, with its marker), so the session's
    failure can be counted per call and each call checked against the simulator."""
    args, marker = mark(args) if marked else (args, "")
    started = time.perf_counter()
    data: dict[str, Any] = {}
    try:
        async with asyncio.timeout(ceiling):
            result = await client.call_tool(tool, args)
    except asyncio.CancelledError:
        if on_cut is not None:
            t, ms = round(time.monotonic() - epoch, 3), round((time.perf_counter() - started) * 1000, 2)
            on_cut(Sample(t, ms, False, "cut", tool, marker))
        raise
    except TimeoutError:
        ok, category, data = False, "hang", {"message": f"no answer within the client's {ceiling:g} s"}
    except Exception as exc:  # a transport or protocol failure is a measured outcome, not a crash of the run
        kind, message = describe(exc)
        ok, category, data = False, f"client:{kind}", {"message": message}
    else:
        ok = not result.is_error
        if ok:
            category, data = "", dict(result.structured_content or {})
        else:
            data = dict((result.meta or {}).get("exai/error") or {})
            category = str(data.get("category", "tool_error"))
    ended = time.perf_counter()
    detail = "" if ok else str(data.get("message", ""))[:300]
    t, ms = round(time.monotonic() - epoch, 3), round((ended - started) * 1000, 2)
    return Outcome(Sample(t, ms, ok, category, tool, marker, detail=detail), data)
