"""Graceful shutdown that lets every call in flight finish its answer stream.

sse-starlette (under the SDK's Streamable HTTP transport) ends every server-sent event stream as soon as uvicorn
receives SIGTERM, so a call whose answer was still streaming failed mid-response, and a rolling restart behind a
balancer failed calls. Here the streams of POST requests (calls in flight) are left to finish; only once none is
left, or the grace period is over, are the remaining streams (idle GET streams) told to end. Calls still running
at the end of the grace period are cut first, so that each caller gets a typed error rather than a torn stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from exai.observability.logging import get_logger
from exai.server.internals import end_every_stream

log = get_logger(__name__)


class InFlightPosts:
    """Counts the POST requests being answered, so a shutdown can wait for them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        self.count += 1
        self.idle.clear()
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if not self.count:
                self.idle.set()


CUT_SECONDS = 2.0
"""How long calls cut at the end of the grace period have to send their error answers."""


async def end_streams_when_idle(posts: InFlightPosts, grace_seconds: float, cut_calls: Callable[[], int]) -> None:
    """Once no POST is in flight, end the streams that are left; at the end of the grace period, cut the calls
    still running first and give their error answers CUT_SECONDS to go out. (Calls that no request waits for any
    more, answered "pending" or running as tasks, are given the grace period after the listener has closed:
    `CallRunner.finish_running`.)"""
    with anyio.move_on_after(grace_seconds):
        await posts.idle.wait()
    if not posts.idle.is_set():
        log.warning("grace period over: cutting the calls still running", calls=cut_calls())
        with anyio.move_on_after(CUT_SECONDS):
            await posts.idle.wait()
    end_every_stream()
