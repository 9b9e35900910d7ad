"""`exai stdio --connect URL`: a thin stdio MCP server that forwards everything to a remote daemon.

It is how a client that only speaks stdio shares a team's daemon. Each local request becomes one remote
request on a shared Streamable HTTP session (the SDK matches responses to requests by id, so many calls run at
once); progress is forwarded, and cancelling a local call cancels the remote one. When the daemon is unreachable
the bridge retries connecting with backoff for a bounded time, then answers with a clear error; a call cut off by
a lost connection is retried once on a fresh session. No call waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from exai import __version__
from exai.observability.errors import NetworkError
from exai.observability.logging import get_logger
from exai.server.mcp import error_result

log = get_logger(__name__)
T = TypeVar("T")
_LOST = {types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT}  # the SDK's codes for a request cut off in transit


class RemoteDaemon:
    """One live session with the daemon, re-established when it is lost."""

    def __init__(self, url: str, token: str | None, connect_timeout: float, call_timeout: float) -> None:
        self.url = url
        self.token = token
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._client: Client | None = None
        self._closing: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _run(self, ready: asyncio.Future[Client], closing: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=self.call_timeout)) as http,
                Client(streamable_http_client(self.url, http_client=http)) as client,
            ):
                await client.list_tools()  # proves the session works and primes output-schema validation
                ready.set_result(client)
                await closing.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("bridge_session_lost", url=self.url, error=repr(exc)[:200])
        finally:
            closing.set()

    async def _connect(self) -> Client:
        delay, deadline = 0.2, asyncio.get_running_loop().time() + self.connect_timeout
        while True:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[Client] = loop.create_future()
            closing = asyncio.Event()
            runner = asyncio.create_task(self._run(ready, closing), name="exai-bridge-session")
            try:
                client = await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout)
            except Exception as exc:
                closing.set()
                runner.cancel()
                with contextlib.suppress(BaseException):
                    await runner
                if loop.time() + delay > deadline:
                    raise NetworkError(
                        f"Cannot reach the EX-AI daemon at {self.url}: {_describe(exc)}.",
                        code="daemon_unreachable",
                        remedy="Start the daemon (`exai serve`), check the URL given to --connect, and EXAI_TOKEN "
                        "if the daemon requires a token. The bridge keeps retrying on every call.",
                    ) from None
                log.info("bridge_retrying", url=self.url, in_seconds=round(delay, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            self._client, self._closing, self._runner = client, closing, runner
            log.info("bridge_connected", url=self.url)
            return client

    async def client(self) -> Client:
        async with self._lock:
            if self._client is not None and self._closing is not None and not self._closing.is_set():
                return self._client
            return await self._connect()

    async def _drop(self, client: Client) -> None:
        async with self._lock:
            if self._client is client:
                await self._shutdown()

    async def _shutdown(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(BaseException):
                await self._runner
        self._client = self._closing = self._runner = None

    async def call(self, operation: Callable[[Client], Awaitable[T]]) -> T:
        """Run one remote request; a lost session is replaced and the request sent once more."""
        for attempt in (1, 2):
            client = await self.client()
            try:
                return await asyncio.wait_for(operation(client), self.call_timeout)
            except MCPError as exc:
                lost = exc.code in _LOST or "session" in exc.message.lower()
                if not lost or attempt == 2:
                    raise
                await self._drop(client)
                log.info("bridge_reconnecting", url=self.url, error=exc.message)
            except TimeoutError:
                raise NetworkError(
                    f"The daemon at {self.url} did not answer within {self.call_timeout:.0f} s.",
                    code="daemon_timeout",
                    remedy="Check the daemon's `status` tool and logs, then retry.",
                ) from None
            except Exception as exc:
                await self._drop(client)
                if attempt == 2:
                    raise NetworkError(
                        f"Lost the connection to the daemon at {self.url}: {_describe(exc)}.",
                        code="daemon_connection_lost",
                        remedy="Retry the call; the bridge reconnects by itself.",
                    ) from None
                log.info("bridge_reconnecting", url=self.url, error=_describe(exc))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        async with self._lock:
            await self._shutdown()


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:200]


def build_bridge(remote: RemoteDaemon) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        result = await _or_protocol_error(remote.call(lambda c: c.list_tools()))
        return types.ListToolsResult(tools=result.tools)

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        async def forward_progress(done: float, total: float | None, message: str | None) -> None:
            with contextlib.suppress(Exception):
                await ctx.session.report_progress(done, total, message)

        try:
            return await remote.call(
                lambda c: c.call_tool(params.name, params.arguments or {}, progress_callback=forward_progress)
            )
        except NetworkError as exc:
            return error_result(exc)

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        result = await _or_protocol_error(remote.call(lambda c: c.list_prompts()))
        return types.ListPromptsResult(prompts=result.prompts)

    async def get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        result = await _or_protocol_error(remote.call(lambda c: c.get_prompt(params.name, params.arguments)))
        return types.GetPromptResult(description=result.description, messages=result.messages)

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        result = await _or_protocol_error(remote.call(lambda c: c.list_resources()))
        return types.ListResourcesResult(resources=result.resources)

    async def read_resource(ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
        result = await _or_protocol_error(remote.call(lambda c: c.read_resource(str(params.uri))))
        return types.ReadResourceResult(contents=result.contents)

    return Server(
        "exai-bridge",
        version=__version__,
        title="EX-AI MCP Server (bridge)",
        instructions=f"Forwards to the EX-AI daemon at {remote.url}.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


async def _or_protocol_error(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except NetworkError as exc:
        raise MCPError(types.INTERNAL_ERROR, exc.render(), data=exc.to_dict()) from None


async def serve_bridge(url: str, token: str | None, connect_timeout: float, call_timeout: float) -> None:
    remote = RemoteDaemon(url, token, connect_timeout, call_timeout)
    server = build_bridge(remote)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await remote.close()
