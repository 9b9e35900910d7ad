"""`exai stdio --connect URL`: a thin stdio MCP server that forwards everything to a remote daemon.

It is how a client that only speaks stdio shares a team's daemon. Each local request becomes one remote request
on a shared Streamable HTTP session (the SDK matches answers to requests by id, so many calls run at once);
progress and log notifications are forwarded, and cancelling a local call cancels the remote one.

A request is sent again only when it provably never reached the daemon (see `bridge_transport`): a tool call
whose connection broke mid-call may have run, so it ends with an error that says so instead of running twice.
One failing request never disturbs the others; a lost session is replaced for later requests. No call waits
forever. The bridge speaks the MCP protocol only: it imports nothing of the daemon's own server or services.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import warnings
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, get_args
from urllib.parse import urlsplit

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from exai import __version__
from exai.errors import AuthError, ExaiError, InvalidInput, NetworkError
from exai.observability.logging import get_logger
from exai.server.bridge_transport import (
    Delivery,
    DeliveryTrackingTransport,
    delivery_of,
    permanent_failure,
    refused_status,
)
from exai.server.results import error_result

log = get_logger(__name__)
T = TypeVar("T")
LogSink = Callable[[types.LoggingMessageNotificationParams], Awaitable[None]]
LEVEL_NAMED: dict[str, types.LoggingLevel] = {level: level for level in get_args(types.LoggingLevel)}
_log_sink: ContextVar[LogSink | None] = ContextVar("exai_bridge_log_sink", default=None)


PLAIN_HTTP_SETTING = "EXAI_BRIDGE_ALLOW_PLAIN_HTTP"


def is_loopback_host(host: str) -> bool:
    """`localhost` (and names under it) or a loopback address, by the URL's text: no DNS answer can widen it."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_daemon_url(url: str) -> None:
    """Refuse at start a URL no request could use (no http:// or https://, no host): every call would otherwise be
    retried until the connect timeout and then reported as a daemon that cannot be reached."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number or out of range, a bracket left open
        usable = False
    if usable:
        return
    raise InvalidInput(
        f"--connect {url[:200]!r} is not a daemon's URL: it needs http:// or https://, a host and a valid port.",
        code="invalid_daemon_url",
        remedy="Give the daemon's MCP endpoint in full, e.g. --connect http://127.0.0.1:8765/mcp.",
    )


def check_token_transport(url: str, token: str | None, allow_plain_http: bool) -> None:
    """Refuse to send a token in clear text to another machine unless the user said so (EXAI_BRIDGE_ALLOW_PLAIN_HTTP).

    Anyone on the path could read a bearer token sent over plain http:// and use it as the user.
    """
    parts = urlsplit(url)
    if token is None or parts.scheme != "http" or allow_plain_http or is_loopback_host(parts.hostname or ""):
        return
    raise InvalidInput(
        f"Refusing to send EXAI_TOKEN over plain http:// to {parts.hostname}: anyone on the network path could read "
        "it and use it.",
        code="token_over_plain_http",
        remedy=f"Use an https:// URL for the daemon (e.g. behind the TLS proxy of deploy/nginx.conf), or, on a "
        f"network you trust, set {PLAIN_HTTP_SETTING}=true.",
    )


@dataclass
class _Session:
    """One live session with the daemon and the requests currently using it."""

    client: Client
    closed: asyncio.Event
    runner: asyncio.Task[None]
    users: int = 0
    retired: bool = False

    @property
    def usable(self) -> bool:
        return not self.retired and not self.closed.is_set()

    async def close(self) -> None:
        await _stop(self.closed, self.runner)


async def _stop(closed: asyncio.Event, runner: asyncio.Task[None]) -> None:
    closed.set()
    runner.cancel()
    with contextlib.suppress(BaseException):
        await runner


class RemoteDaemon:
    """The daemon behind the bridge: sessions, delivery-aware requests and the errors they end in."""

    def __init__(self, url: str, token: str | None, connect_timeout: float, call_timeout: float) -> None:
        self.url = url
        self.token = token
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._current: _Session | None = None
        self._lock = asyncio.Lock()

    async def request(self, operation: Callable[[Client], Awaitable[T]], *, what: str, idempotent: bool) -> T:
        """Run one remote request. Sent again only if it never reached the daemon (or repeating it is harmless)."""
        loop = asyncio.get_running_loop()
        delay, deadline = 0.2, loop.time() + self.connect_timeout
        while True:
            session = await self._session()
            session.users += 1
            try:
                return await asyncio.wait_for(operation(session.client), self.call_timeout)
            except MCPError as exc:
                if (status := refused_status(exc)) is not None:
                    raise self._refused(status) from None
                if (detail := permanent_failure(exc)) is not None:
                    raise self._misdirected(detail) from None
                delivery = delivery_of(exc)
                if delivery is None:
                    raise  # the daemon's own answer
                session.retired = True  # later requests use a fresh session; this one closes once idle
                out_of_time = loop.time() + delay > deadline
                if delivery is Delivery.UNKNOWN and (not idempotent or out_of_time):
                    raise self._lost(what, exc.message) from None
                if out_of_time:
                    raise self._unreachable(exc.message) from None
                log.info("bridge_resending", url=self.url, request=what, reason=exc.message, in_seconds=delay)
            except TimeoutError:
                raise self._timed_out(what) from None
            finally:
                await self._release(session)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)

    async def close(self) -> None:
        async with self._lock:
            if self._current is not None:
                await self._current.close()
                self._current = None

    async def _session(self) -> _Session:
        async with self._lock:
            if self._current is not None and self._current.usable:
                return self._current
            stale, self._current = self._current, None
            if stale is not None and stale.users == 0:
                await stale.close()
            self._current = await self._connect()
            return self._current

    async def _release(self, session: _Session) -> None:
        session.users -= 1
        if session.users == 0 and not session.usable and session is not self._current:
            await session.close()

    async def _connect(self) -> _Session:
        loop = asyncio.get_running_loop()
        delay, deadline = 0.2, loop.time() + self.connect_timeout
        while True:
            ready: asyncio.Future[Client] = loop.create_future()
            closed = asyncio.Event()
            runner = asyncio.create_task(self._run(ready, closed), name="exai-bridge-session")
            try:
                client = await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout)
            except Exception as exc:
                await _stop(closed, runner)
                if (status := refused_status(exc)) is not None:
                    raise self._refused(status) from None  # a refused token stays refused: never retried
                if (detail := permanent_failure(exc)) is not None:
                    raise self._misdirected(detail) from None  # so does a wrong URL or an untrusted certificate
                if loop.time() + delay > deadline:
                    raise self._unreachable(_describe(exc)) from None
                log.info("bridge_retrying", url=self.url, in_seconds=round(delay, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            log.info("bridge_connected", url=self.url)
            return _Session(client=client, closed=closed, runner=runner)

    async def _run(self, ready: asyncio.Future[Client], closed: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        transport = DeliveryTrackingTransport(httpx2.AsyncHTTPTransport())
        try:
            async with (
                httpx2.AsyncClient(
                    headers=headers, timeout=httpx2.Timeout(30, read=self.call_timeout), transport=transport
                ) as http,
                Client(streamable_http_client(self.url, http_client=http), logging_callback=_forward_log) as client,
            ):
                await client.list_tools()  # proves the session works and primes output-schema validation
                ready.set_result(client)
                await closed.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("bridge_session_lost", url=self.url, error=_describe(exc))
        finally:
            closed.set()

    def _unreachable(self, detail: str) -> NetworkError:
        return NetworkError(
            f"Cannot reach the EX-AI daemon at {self.url}: {detail}. The request was not sent, so it is safe to retry.",
            code="daemon_unreachable",
            remedy="Start the daemon (`exai serve`), check the URL given to --connect, and EXAI_TOKEN if the daemon "
            "requires a token. The bridge reconnects by itself on the next call.",
            retryable=True,
        )

    def _refused(self, status: int) -> AuthError:
        sent = "" if self.token else " (no EXAI_TOKEN was set)"
        scope = " with the exai:tools scope" if status == 403 else ""
        return AuthError(
            f"The daemon at {self.url} refused the token ({status}){sent}.",
            code="daemon_refused_token",
            remedy=f"Set EXAI_TOKEN to a valid token{scope} (`exai token issue --sub NAME` with the daemon's "
            "EXAI_JWT_SECRET, or a key from `exai token apikey` listed in its EXAI_API_KEYS), then restart the bridge.",
        )

    def _misdirected(self, detail: str) -> NetworkError:
        return NetworkError(
            f"The EX-AI daemon is not at {self.url}: {detail}. The request was not sent.",
            code="daemon_misconfigured",
            remedy="Check the URL given to --connect (the daemon serves MCP at http://host:8765/mcp); for https, that "
            "the daemon's certificate is trusted here; for 421, add the URL's host name to the daemon's "
            "EXAI_ALLOWED_HOSTS. Retrying as is cannot succeed.",
            retryable=False,
        )

    def _lost(self, what: str, detail: str) -> NetworkError:
        return NetworkError(
            f"The connection to the daemon at {self.url} was lost while {what} was running ({detail}). "
            "The daemon may have run it, so it was not sent again.",
            code="daemon_connection_lost",
            remedy="Check whether it completed (the daemon's log; the `threads` tool for a conversation) before "
            "retrying: retrying blindly may run it twice. The bridge reconnects by itself for later calls.",
            retryable=False,
        )

    def _timed_out(self, what: str) -> NetworkError:
        return NetworkError(
            f"The daemon at {self.url} did not answer {what} within {self.call_timeout:.0f} s. It may still have "
            "run, so it was not sent again.",
            code="daemon_timeout",
            remedy="Check the daemon's `status` tool and logs before retrying: retrying blindly may run it twice.",
            retryable=False,
        )


async def _forward_log(params: types.LoggingMessageNotificationParams) -> None:
    """Hand a daemon log message to the local call it belongs to (the SDK runs this in that call's context)."""
    sink = _log_sink.get()
    if sink is None:
        log.debug("daemon_log_outside_a_call", level=params.level)
        return
    await sink(params)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:200]


def build_bridge(remote: RemoteDaemon) -> Server[Any]:
    handshake_level: dict[str, types.LoggingLevel] = {"level": "info"}  # one stdio client per bridge process

    def wanted_log_level(ctx: ServerRequestContext[Any, Any]) -> types.LoggingLevel | None:
        """The level the local client asked for: per request on modern connections, by logging/setLevel before."""
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            asked = (ctx.meta or {}).get(types.LOG_LEVEL_META_KEY)
            return LEVEL_NAMED.get(asked) if isinstance(asked, str) else None
        return handshake_level["level"]

    async def read(operation: Callable[[Client], Awaitable[T]], what: str) -> T:
        try:
            return await remote.request(operation, what=what, idempotent=True)
        except ExaiError as exc:
            raise MCPError(types.INTERNAL_ERROR, exc.render(), data=exc.to_dict()) from None

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=(await read(lambda c: c.list_tools(), "tools/list")).tools)

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        async def forward_progress(progress: float, total: float | None, message: str | None) -> None:
            with contextlib.suppress(Exception):
                await ctx.session.report_progress(progress, total, message)

        async def forward_log(entry: types.LoggingMessageNotificationParams) -> None:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the logging capability is deprecated at 2026-07-28
                await ctx.session.send_log_message(
                    entry.level, entry.data, logger=entry.logger, related_request_id=ctx.request_id
                )

        level = wanted_log_level(ctx)
        meta: types.RequestParamsMeta | None = None
        if level:
            meta = {}
            # An extra key the SDK's TypedDict allows (`extra_items`), named by an SDK constant that is not `Final`.
            meta[types.LOG_LEVEL_META_KEY] = level  # type: ignore[literal-required]
        _log_sink.set(forward_log)
        try:
            return await remote.request(
                lambda c: c.call_tool(
                    params.name, params.arguments or {}, progress_callback=forward_progress, meta=meta
                ),
                what=f"'{params.name}'",
                idempotent=False,
            )
        except ExaiError as exc:
            return error_result(exc)

    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        handshake_level["level"] = params.level
        return types.EmptyResult()

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=(await read(lambda c: c.list_prompts(), "prompts/list")).prompts)

    async def get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        result = await read(lambda c: c.get_prompt(params.name, params.arguments), "prompts/get")
        return types.GetPromptResult(description=result.description, messages=result.messages)

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        result = await read(lambda c: c.list_resources(), "resources/list")
        return types.ListResourcesResult(resources=result.resources)

    async def read_resource(ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
        result = await read(lambda c: c.read_resource(str(params.uri)), "resources/read")
        return types.ReadResourceResult(contents=result.contents)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # logging/setLevel is deprecated at 2026-07-28 but clients still use it
        return Server(
            "exai-bridge",
            version=__version__,
            title="EX-AI MCP Server (bridge)",
            instructions=f"Forwards to the EX-AI daemon at {remote.url}.",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_set_logging_level=set_level,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
            on_list_resources=list_resources,
            on_read_resource=read_resource,
        )


async def serve_bridge(url: str, token: str | None, connect_timeout: float, call_timeout: float) -> None:
    remote = RemoteDaemon(url, token, connect_timeout, call_timeout)
    server = build_bridge(remote)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await remote.close()
