"""The MCP surface: tools, prompts, resources, logging and tasks on the SDK's low-level server.

Every `tools/call` enters at `call_tool` here: it binds the correlation id, builds the tool's context and hands
the call to the pipeline in `server/calls.py`. Unknown tools are JSON-RPC errors; a token sees (in listings and
errors) only the tools it may call.

A tool that calls a model runs detached from the request, as a durable call (`server/call_records.py`): the request
waits for it, sending progress every few seconds when the client asked for progress, up to EXAI_CLIENT_WAIT_SECONDS;
a call still running then answers "pending" with the call that collects the answer (`server/answers.py`). A client
that asked for a task (2025-11-25) gets it at once; a 2026-07-28 client that declared the Tasks extension gets one
once the call has run EXAI_TASK_AFTER_SECONDS (`server/tasks.py`).
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any, get_args
from weakref import WeakKeyDictionary

import mcp_types as types
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from exai import __version__
from exai.app import Services
from exai.conversations.threads import is_thread_id
from exai.errors import NotFoundError
from exai.observability.context import bind_correlation_id, caller_correlation_id
from exai.observability.logging import get_logger
from exai.security.auth import COLLECT_TOOL, token_tenant, visible_tools
from exai.server.answers import pending_result, with_pending
from exai.server.call_records import Execution
from exai.server.calls import Caller, handle_call
from exai.server.internals import connection_of
from exai.server.tasks import LEGACY_CAPABILITY as LEGACY_TASKS
from exai.server.tasks import (
    TasksSurface,
    announce_end,
    created,
    declares_extension,
    refusal_error,
    requested_ttl_seconds,
)
from exai.server.tool_refusals import unknown_tool
from exai.tools.base import Tool, ToolContext, compact_schema, input_schema

log = get_logger(__name__)
LEVELS: tuple[types.LoggingLevel, ...] = get_args(types.LoggingLevel)
"""MCP's log levels, least severe first."""
LEVEL_NAMED: dict[str, types.LoggingLevel] = {level: level for level in LEVELS}
HEARTBEAT_SECONDS = 5.0
"""While a model works, a client that sent a progress token hears from the call at least this often."""
INSTRUCTIONS = (
    "EX-AI gives you other models as tools. Use `chat` for a second opinion from Kimi, GLM, OpenAI, Anthropic or a "
    "local model; `listmodels` shows what is configured; `status` shows provider health."
)


def incoming_correlation_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The caller's request id (X-Request-ID, else the W3C traceparent's trace id), if it is a safe one."""
    headers = getattr(ctx.request, "headers", None)
    return None if headers is None else caller_correlation_id(headers)


def _progress_token(ctx: ServerRequestContext[Any, Any]) -> Any:
    meta = ctx.meta or {}
    token = meta.get("progress_token")
    return meta.get("progressToken") if token is None else token  # 0 is a valid token


class ExaiServer(Server[Any]):
    """The SDK's server, advertising 2025-11-25 tasks in the handshake (the SDK derives no `tasks` capability)."""

    def get_capabilities(self, *args: Any, **kwargs: Any) -> types.ServerCapabilities:
        capabilities = super().get_capabilities(*args, **kwargs)
        if kwargs.get("protocol_version") is None:  # the handshake: 2025-11-25 and earlier
            capabilities.tasks = types.ServerTasksCapability.model_validate(LEGACY_TASKS)
        return capabilities


def output_schema(tool: Tool[Any, Any]) -> dict[str, Any] | None:
    """The tool's output schema; for tools that call models, also the shape of a pending answer."""
    if tool.output_model is None:
        return None
    schema = compact_schema(tool.output_model)
    return with_pending(schema) if tool.calls_model else schema


def build_server(services: Services) -> Server[Any]:
    """The MCP server for one set of services; the same object serves stdio and HTTP."""
    tools: dict[str, Tool[Any, Any]] = {tool.name: tool for tool in services.tools}
    levels: WeakKeyDictionary[Any, str] = WeakKeyDictionary()

    @cache
    def listing() -> types.ListToolsResult:
        """Built on the first `tools/list` (~20 ms of schema generation a stdio client need not wait for)."""
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=tool.name,
                    title=tool.title,
                    description=tool.description,
                    input_schema=input_schema(tool.input_model, services.settings.max_prompt_chars),
                    output_schema=output_schema(tool),
                    execution=types.ToolExecution(task_support="optional" if tool.calls_model else "forbidden"),
                    annotations=types.ToolAnnotations(
                        read_only_hint=tool.read_only,
                        open_world_hint=tool.calls_model,
                        idempotent_hint=not tool.calls_model,
                    ),
                )
                for tool in tools.values()
            ]
        )

    def caller_tenant() -> str:
        return token_tenant(get_access_token())

    def caller_scopes() -> list[str] | None:
        """The scopes of the caller's token; None when the daemon runs without auth (or over stdio)."""
        token = get_access_token()
        return None if services.verifier is None or token is None else list(token.scopes)

    def visible(names: list[str]) -> list[str]:
        """The tools the caller's token may call, and so may learn of (listings, prompts, errors)."""
        return visible_tools(names, caller_scopes())

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        names = set(visible(list(tools)))
        return types.ListToolsResult(tools=[t for t in listing().tools if t.name in names])

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        return await dispatch(ctx, params, as_task=False)

    async def start_task(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        return await dispatch(ctx, params, as_task=True)

    async def dispatch(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams, as_task: bool) -> Any:
        correlation_id = bind_correlation_id(incoming_correlation_id(ctx))
        caller = Caller(tenant=caller_tenant(), scopes=caller_scopes())
        tool = tools.get(params.name)
        if tool is None:
            raise await unknown_tool(services, params.name, caller.tenant, correlation_id, sorted(visible(list(tools))))
        if as_task and not tool.calls_model:
            raise MCPError(
                types.METHOD_NOT_FOUND,
                f"'{tool.name}' answers at once and does not run as a task; call it without `task`.",
            )
        wants_progress = _progress_token(ctx) is not None
        attached = True  # notifications go to the request's stream only while the request waits for the call
        reported = 0.0

        async def progress(done: float, total: float | None, message: str | None) -> None:
            nonlocal reported
            if wants_progress and attached:
                reported = max(done, reported + 0.001)  # progress must increase, heartbeats included
                try:
                    await ctx.session.report_progress(reported, total, message)
                except Exception:  # a lost notification must never fail the call
                    log.debug("progress_not_sent", exc_info=True)

        async def send_log(level: str, message: str) -> None:
            if not attached:
                return
            wire_level = LEVEL_NAMED[level]  # tools log at MCP's levels only
            threshold = levels.get(connection_of(ctx), "info")
            if LEVELS.index(wire_level) < LEVELS.index(threshold):
                return
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    await ctx.session.send_log_message(
                        wire_level,
                        {"message": message, "correlation_id": correlation_id},
                        logger="exai",
                        related_request_id=ctx.request_id,
                    )
            except Exception:
                log.debug("log_notification_not_sent", exc_info=True)

        tool_ctx = ToolContext(
            services.tool_services,
            correlation_id,
            progress,
            send_log,
            wants_progress,
            tenant=caller.tenant,
            visible_tools=visible(list(tools)),
        )
        if not tool.calls_model:
            return await handle_call(services, tool, params.arguments, caller, tool_ctx)
        continuation = (params.arguments or {}).get("continuation_id")
        modern_task = declares_extension(ctx)
        ttl_seconds = requested_ttl_seconds(params)  # a negative ttl is refused here, before anything is recorded
        execution = services.calls.launch(
            lambda record: handle_call(services, tool, params.arguments, caller, tool_ctx, record),
            tenant=caller.tenant,
            tool=tool.name,
            correlation_id=correlation_id,
            # kept with the call's record, so only what could name a thread (the call refuses anything else)
            continuation_id=continuation if isinstance(continuation, str) and is_thread_id(continuation) else None,
            task=as_task or modern_task,
            ttl_seconds=ttl_seconds,
            answered=lambda: tool_ctx.answered,
        )
        try:
            call = await execution.record()
            if call is None:  # refused before anything was recorded or spent
                refused = execution.outcome()
                if as_task:  # the client waits for `CreateTaskResult`: a refusal is the request's error
                    raise refusal_error(refused)
                return refused
            if as_task:
                attached = False
                announce_end(ctx.session, services.calls, call, execution.task)
                return created(call, modern=False)
            settings = services.settings
            if modern_task:
                wait = settings.task_after_seconds
            elif COLLECT_TOOL in tools and settings.client_wait_seconds:
                wait = settings.client_wait_seconds
            else:
                wait = float("inf")
            if await wait_with_heartbeat(execution, wait, progress if wants_progress else None):
                return execution.outcome()
        except asyncio.CancelledError:  # the client cancelled (or went away) while it still waited: so does the work
            execution.cancel()  # unless its answer has arrived: then it completes, kept for `collect`
            raise
        attached = False
        if modern_task:
            return created(call, modern=True)
        return pending_result(call, settings.client_wait_seconds)

    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        levels[connection_of(ctx)] = params.level
        return types.EmptyResult()

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        allowed = set(visible(list(tools)))
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name=name,
                    title=tool.title,
                    description=f"Use the `{name}` tool: {tool.description}",
                    arguments=[types.PromptArgument(name="request", description="What to ask or do", required=False)],
                )
                for name, tool in tools.items()
                if name in allowed
            ]
        )

    async def get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        tool = tools.get(params.name)
        if tool is None or not visible([tool.name]):
            names = ", ".join(visible(list(tools)))
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt '{params.name[:80]}'. Prompts: {names}.")
        request = (params.arguments or {}).get("request", "")
        text = f"Use the EX-AI `{tool.name}` tool" + (f" for this: {request}" if request else ".")
        return types.GetPromptResult(
            description=tool.description,
            messages=[types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))],
        )

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri="exai://models",
                    name="models",
                    title="Configured models",
                    description="The models this server can route to, with capabilities.",
                    mime_type="application/json",
                ),
            ]
        )

    async def read_resource(ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
        if str(params.uri) != "exai://models":
            shown = ascii(str(params.uri)[:80])  # a caller's value is quoted short, control characters escaped
            error = NotFoundError(f"No resource {shown}.", remedy="List resources with resources/list.")
            raise MCPError(types.INVALID_PARAMS, error.message, data=error.to_dict())
        models = [
            {"name": m.name, "provider": m.provider, "aliases": m.aliases, **m.capabilities()}
            for m in services.router.available_models()
        ]
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri="exai://models", mime_type="application/json", text=json.dumps(models, indent=2)
                )
            ]
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # logging/setLevel is deprecated at 2026-07-28 but clients still use it
        server = ExaiServer(
            "exai",
            version=__version__,
            title="EX-AI MCP Server",
            instructions=INSTRUCTIONS,
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
            on_list_resources=list_resources,
            on_read_resource=read_resource,
            on_set_logging_level=set_level,
            get_tool_input_schema=lambda name: listing_schema(listing(), name),
        )
    TasksSurface(services.calls, services.limiter, caller_tenant, lambda: visible(list(tools)), start_task).install(
        server
    )
    return server


async def wait_with_heartbeat(
    execution: Execution, seconds: float, progress: Callable[[float, float | None, str | None], Awaitable[None]] | None
) -> bool:
    """Wait up to `seconds` for the call's answer (True), telling a client that listens for progress every few
    seconds that the model is still working (clients that reset their timeout on progress keep waiting)."""
    started = time.monotonic()
    while (left := seconds - (time.monotonic() - started)) > 0:
        if await execution.settled(min(left, HEARTBEAT_SECONDS)):
            return True
        if progress is not None:
            await progress(0, None, f"the model is still working ({time.monotonic() - started:.0f} s)")
    return await execution.settled(0)


def listing_schema(listing: types.ListToolsResult, name: str) -> dict[str, Any] | None:
    for tool in listing.tools:
        if tool.name == name:
            return tool.input_schema
    return None
