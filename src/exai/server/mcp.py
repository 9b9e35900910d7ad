"""The MCP surface: tools, prompts, resources and logging on the SDK's low-level server.

Every `tools/call` passes through `call_tool` here: it binds the correlation id, validates the arguments
against the tool's input model, runs the tool, and turns any failure into an MCP tool error that carries
the error's category, a remedy and the correlation id. Unknown tools are JSON-RPC errors.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any
from weakref import WeakKeyDictionary

import anyio
import mcp_types as types
import pydantic
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from exai import __version__
from exai.app import Services
from exai.observability.context import bind_correlation_id, start_upstream_clock
from exai.observability.errors import (
    ExaiError,
    InternalError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ValidationError,
)
from exai.observability.logging import get_logger
from exai.observability.metrics import Metrics
from exai.observability.tracing import tracer
from exai.security.auth import ADMIN_TOOLS, may_call
from exai.storage.base import AuditRecord
from exai.tools.base import Tool, ToolContext, compact_schema

log = get_logger(__name__)
LOCAL_TENANT = "local"
LEVELS: list[str] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
INSTRUCTIONS = (
    "EX-AI gives you other models as tools. Use `chat` for a second opinion from Kimi, GLM, OpenAI, Anthropic or a "
    "local model; `listmodels` shows what is configured; `status` shows provider health."
)


def error_result(error: ExaiError) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=error.render())],
        structured_content={"error": error.to_dict()},
        is_error=True,
    )


def validation_error(tool: Tool[Any, Any], exc: pydantic.ValidationError) -> ValidationError:
    problems = []
    fields = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(arguments)"
        fields.append(field)
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append(f"{field}: {message}")
    return ValidationError(
        f"Invalid arguments for '{tool.name}': " + "; ".join(problems) + ".",
        code="invalid_arguments",
        remedy=f"Correct the named fields; the tool's input schema is in tools/list under '{tool.name}'.",
        details={"fields": fields},
    )


def _incoming_correlation_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    if headers is None:
        return None
    if request_id := headers.get("x-request-id"):
        return request_id[:64]
    traceparent = headers.get("traceparent", "")
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def audit_record(
    tenant: str,
    tool: str,
    outcome: str,
    category: str | None,
    correlation_id: str,
    data: dict[str, Any] | None,
    latency_ms: float,
    services: Services,
) -> AuditRecord:
    """What the audit log keeps of one call; model, usage and cost come from the tool's structured output."""
    data = data or {}
    usage = data.get("usage") or {}
    model = data.get("model")
    info = services.catalogue.get(model) if model else None
    tokens_in, tokens_out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return AuditRecord(
        tenant=tenant,
        tool=tool,
        model=model,
        provider=data.get("provider"),
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=info.cost(tokens_in, tokens_out) if info else 0.0,
        latency_ms=round(latency_ms, 2),
        outcome=outcome,
        error_category=category,
        correlation_id=correlation_id,
        thread_id=data.get("continuation_id"),
    )


def _record_usage(metrics: Metrics, data: dict[str, Any] | None) -> None:
    if not data or not data.get("provider") or not data.get("model"):
        return
    provider, model, usage = data["provider"], data["model"], data.get("usage") or {}
    metrics.tokens.labels(provider, model, "in").inc(usage.get("input_tokens", 0))
    metrics.tokens.labels(provider, model, "out").inc(usage.get("output_tokens", 0))
    if data.get("cost_usd"):
        metrics.cost.labels(provider, model).inc(data["cost_usd"])


def _connection_of(ctx: ServerRequestContext[Any, Any]) -> Any:
    """The client connection behind a request (the SDK builds a new session object for every request).

    `logging/setLevel` is connection state on handshake-era protocol versions; the SDK offers no public
    handle for the connection on the low-level context, so the private attribute is read here, in one place.
    """
    return getattr(ctx.session, "_connection", ctx.session)


def _progress_token(ctx: ServerRequestContext[Any, Any]) -> Any:
    meta = ctx.meta or {}
    return meta.get("progress_token") or meta.get("progressToken")


def build_server(services: Services) -> Server[Any]:
    """The MCP server for one set of services; the same object serves stdio and HTTP."""
    tools: dict[str, Tool[Any, Any]] = {tool.name: tool for tool in services.tools}
    levels: WeakKeyDictionary[Any, str] = WeakKeyDictionary()
    listing = types.ListToolsResult(
        tools=[
            types.Tool(
                name=tool.name,
                title=tool.title,
                description=tool.description,
                input_schema=compact_schema(tool.input_model),
                output_schema=compact_schema(tool.output_model),
                annotations=types.ToolAnnotations(
                    read_only_hint=tool.read_only,
                    open_world_hint=tool.calls_model,
                    idempotent_hint=not tool.calls_model,
                ),
            )
            for tool in tools.values()
        ]
    )

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        token = get_access_token()
        if services.verifier is None or token is None:
            return listing
        return types.ListToolsResult(tools=[t for t in listing.tools if may_call(t.name, token.scopes)])

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        tool = tools.get(params.name)
        if tool is None:
            hint = ", ".join(sorted(tools))
            raise MCPError(
                types.INVALID_PARAMS,
                f"Unknown tool '{params.name}'. Available tools: {hint}.",
                data={"category": "not_found", "code": "unknown_tool", "tools": sorted(tools)},
            )
        correlation_id = bind_correlation_id(_incoming_correlation_id(ctx))
        token = get_access_token()
        tenant = token.subject if token is not None and token.subject else LOCAL_TENANT
        if services.verifier is not None and token is not None and not may_call(tool.name, token.scopes):
            error = PermissionDeniedError(
                f"Your token does not allow the '{tool.name}' tool.",
                code="missing_scope",
                remedy=f"Ask for a token with scope {'exai:admin' if tool.name in ADMIN_TOOLS else 'exai:tools'}"
                f" (or exai:tool:{tool.name}).",
            )
            services.metrics.errors.labels("permission").inc()
            return error_result(error)
        wants_progress = _progress_token(ctx) is not None

        async def progress(done: float, total: float | None, message: str | None) -> None:
            if wants_progress:
                try:
                    await ctx.session.report_progress(done, total, message)
                except Exception:  # a lost notification must never fail the call
                    log.debug("progress_not_sent", exc_info=True)

        async def send_log(level: str, message: str) -> None:
            threshold = levels.get(_connection_of(ctx), "info")
            if LEVELS.index(level) < LEVELS.index(threshold):
                return
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    await ctx.session.send_log_message(
                        level,
                        {"message": message, "correlation_id": correlation_id},
                        logger="exai",
                        related_request_id=ctx.request_id,
                    )
            except Exception:
                log.debug("log_notification_not_sent", exc_info=True)

        # Limits are per tenant, so they apply once tokens say who is calling (a daemon without auth serves
        # one trusted local user).
        limiter = services.limiter if services.verifier is not None else None
        try:
            lease = await limiter.acquire(tenant) if limiter is not None else None
        except RateLimitError as exc:
            services.metrics.rate_limited.labels(exc.details.get("limit", "?")).inc()
            services.metrics.errors.labels("rate_limit").inc()
            services.alerts.record("rate_limit")
            return error_result(exc)
        services.stats.begin()
        services.metrics.in_flight.inc()
        upstream = start_upstream_clock()
        outcome, category, data = "cancelled", None, None
        started = time.perf_counter()
        try:
            try:
                args = tool.input_model.model_validate(params.arguments or {})
            except pydantic.ValidationError as exc:
                raise validation_error(tool, exc) from None
            with tracer.start_as_current_span(
                f"tool {tool.name}",
                attributes={"exai.tool": tool.name, "exai.tenant": tenant, "exai.correlation_id": correlation_id},
            ):
                result = await tool.run(
                    args, ToolContext(services, correlation_id, progress, send_log, wants_progress, tenant=tenant)
                )
            outcome, data = "ok", result.data.model_dump(mode="json", exclude_none=True)
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=result.text)], structured_content=data
            )
        except ExaiError as exc:
            outcome, category = "error", exc.category.value
            log.info("tool_error", tool=tool.name, category=category, code=exc.code, error=exc.message)
            return error_result(exc)
        except Exception as exc:
            outcome, category = "error", "internal"
            log.exception("tool_crashed", tool=tool.name)
            return error_result(
                InternalError(
                    f"'{tool.name}' failed unexpectedly ({type(exc).__name__}).",
                    code="internal_error",
                    remedy="Retry; if it persists, report it with the correlation id.",
                )
            )
        finally:
            elapsed = time.perf_counter() - started
            if limiter is not None and lease is not None:
                with anyio.CancelScope(shield=True):  # a cancelled call must still give its slot back
                    await limiter.release(lease)
                    usage = (data or {}).get("usage") or {}
                    await limiter.add_tokens(tenant, usage.get("input_tokens", 0) + usage.get("output_tokens", 0))
            services.stats.end(tool.name, outcome, category, elapsed * 1000)
            metrics = services.metrics
            metrics.in_flight.dec()
            metrics.tool_calls.labels(tool.name, outcome).inc()
            metrics.tool_latency.labels(tool.name).observe(elapsed)
            metrics.gateway_overhead.labels(tool.name).observe(max(0.0, elapsed - upstream[0]))
            if category is not None:
                metrics.errors.labels(category).inc()
            _record_usage(metrics, data)
            services.alerts.record("latency", elapsed)
            services.audit.add(
                audit_record(
                    tenant,
                    tool.name,
                    outcome,
                    category,
                    correlation_id,
                    data,
                    (time.perf_counter() - started) * 1000,
                    services,
                )
            )

    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        levels[_connection_of(ctx)] = params.level
        return types.EmptyResult()

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name=name,
                    title=tool.title,
                    description=f"Use the `{name}` tool: {tool.description}",
                    arguments=[types.PromptArgument(name="request", description="What to ask or do", required=False)],
                )
                for name, tool in tools.items()
            ]
        )

    async def get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        tool = tools.get(params.name)
        if tool is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt '{params.name}'. Prompts: {', '.join(tools)}.")
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
            error = NotFoundError(f"No resource '{params.uri}'.", remedy="List resources with resources/list.")
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
        return Server(
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
            get_tool_input_schema=lambda name: listing_schema(listing, name),
        )


def listing_schema(listing: types.ListToolsResult, name: str) -> dict[str, Any] | None:
    for tool in listing.tools:
        if tool.name == name:
            return tool.input_schema
    return None
