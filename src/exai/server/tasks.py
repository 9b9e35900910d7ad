"""MCP Tasks, both generations, as views of the durable call record.

- 2025-11-25: `capabilities.tasks`; `tools/call` with `params.task` is answered with `CreateTaskResult` at once
  (the work runs on); `tasks/get`, `tasks/result` (waits for the end), `tasks/list` (the caller's own), `tasks/cancel`.
- 2026-07-28, the `io.modelcontextprotocol/tasks` extension: declared under `capabilities.extensions`; the server
  directs: a declaring client's call still running after EXAI_TASK_AFTER_SECONDS becomes `resultType: "task"`;
  `tasks/get` inlines the result or error; `tasks/update` and `tasks/cancel` acknowledge. A client that did not
  declare the extension gets -32021 for `tasks/*`, and ordinary answers.

A task belongs to its tenant, not to a connection: any connection of the tenant, on any replica, may read, collect
or cancel it, with a token that may call the tool that made it; for another tenant, or a token without that tool,
it does not exist (the same error as an unknown id).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ConfigDict

from exai.errors import ExaiError, InvalidInput
from exai.security.limits import RateLimiter
from exai.server.call_records import CallRunner, jsonrpc_error, result_payload
from exai.server.results import ERROR_META_KEY
from exai.storage.base import TERMINAL, CallRecord

EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK = "io.modelcontextprotocol/related-task"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
POLL_INTERVAL_MS = 2000
LEGACY_CAPABILITY: dict[str, Any] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
CLIENT_FAULTS = frozenset({"validation", "auth", "permission", "rate_limit", "not_found"})
RESULT_WAIT_SECONDS = 3600.0
"""`tasks/result` waits for the end, as the 2025-11-25 specification says; a client gives up before this does."""
LIST_PAGE = 50

TenantOf = Callable[[], str]
ToolsOf = Callable[[], list[str]]
StartTask = Callable[[ServerRequestContext[Any, Any], types.CallToolRequestParams], Awaitable[HandlerResult]]


class TaskIdParams(types.RequestParams):
    model_config = ConfigDict(extra="allow")
    task_id: str


class ListParams(types.RequestParams):
    cursor: str | None = None


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def declares_extension(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this 2026-07-28 request declares the Tasks extension in its per-request capabilities."""
    if not is_modern(ctx):
        return False
    capabilities = (ctx.meta or {}).get(CLIENT_CAPABILITIES) or {}
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and EXTENSION in extensions


def task_fields(call: CallRecord, *, modern: bool) -> dict[str, Any]:
    """The `Task` object of a call record, in the generation's field names."""
    ttl_ms = round(call.ttl_seconds * 1000)
    fields: dict[str, Any] = {
        "taskId": call.id,
        "status": call.status,
        "createdAt": iso(call.created_at),
        "lastUpdatedAt": iso(call.updated_at),
        "ttlMs" if modern else "ttl": ttl_ms,
        "pollIntervalMs" if modern else "pollInterval": POLL_INTERVAL_MS,
    }
    if call.status == "working" and call.cancel_requested:
        fields["statusMessage"] = "Cancellation requested; the model call is being cut."
    elif call.status_message:
        fields["statusMessage"] = call.status_message
    return fields


def detailed(call: CallRecord, runner: CallRunner) -> dict[str, Any]:
    """A 2026-07-28 `DetailedTask`: the task with its result or error inline once it has ended."""
    fields = task_fields(call, modern=True)
    if call.status == "completed":
        fields["result"] = result_payload(runner.outcome(call))
    elif call.status == "failed":
        fields["error"] = jsonrpc_error(call)
    return fields


def created(call: CallRecord, *, modern: bool) -> dict[str, Any]:
    """The answer to a call that became a task (wire form: a middleware or extension shape, never sieved)."""
    fields = task_fields(call, modern=modern)
    return {"resultType": "task", **fields} if modern else {"task": fields}


_ANNOUNCING: set[asyncio.Task[None]] = set()


def announce_end(session: Any, runner: CallRunner, call: CallRecord, work: asyncio.Task[Any]) -> None:
    """2025-11-25: when the task ends, tell the client on its open stream (`notifications/tasks/status`, with the
    related-task `_meta`). Best effort: polling `tasks/get` is the contract; a closed stream just misses it."""

    async def announce() -> None:
        with contextlib.suppress(Exception):  # a closed stream or a store that is down: the client polls anyway
            await asyncio.wait({work})
            ended = await runner.get(call.id, call.tenant)
            params = {**task_fields(ended, modern=False), "_meta": {RELATED_TASK: {"taskId": call.id}}}
            await session.send_notification(
                types.TaskStatusNotification(params=types.TaskStatusNotificationParams.model_validate(params))
            )

    task = asyncio.create_task(announce())
    _ANNOUNCING.add(task)
    task.add_done_callback(_ANNOUNCING.discard)


def protocol_error(exc: ExaiError) -> MCPError:
    """An error of ours as a `tasks/*` request's JSON-RPC error, with the tool error's data."""
    code = types.INVALID_PARAMS if exc.category.value in CLIENT_FAULTS else types.INTERNAL_ERROR
    return MCPError(code, exc.render(), data=exc.to_dict())


def requested_ttl_seconds(params: types.CallToolRequestParams) -> float | None:
    """How long the caller asks its task to be kept (`task.ttl`, in ms; None or 0: EXAI_TASK_TTL_SECONDS). A negative
    ttl is refused as invalid params: it would make a record that expired before it was written."""
    ttl_ms = params.task.ttl if params.task is not None else None
    if ttl_ms is not None and ttl_ms < 0:
        raise protocol_error(
            InvalidInput(
                f"task.ttl is {ttl_ms} ms; a task's time to live cannot be negative.",
                code="invalid_task_ttl",
                remedy="Send task.ttl in milliseconds, 0 or more (or leave it out for the server's default).",
                details={"ttl": ttl_ms},
            )
        )
    return ttl_ms / 1000 if ttl_ms else None


def refusal_error(refused: types.CallToolResult) -> MCPError:
    """A task-augmented call refused before it became a task (limits, the task cap, a store that is down): the
    request's JSON-RPC error with the same data a tool error carries, not a `CallToolResult` the client cannot read
    where it expects `CreateTaskResult`."""
    error = (refused.meta or {}).get(ERROR_META_KEY) or {}
    text = "".join(block.text for block in refused.content if isinstance(block, types.TextContent))
    message = text or "The call was refused before it started."
    code = types.INVALID_PARAMS if error.get("category") in CLIENT_FAULTS else types.INTERNAL_ERROR
    return MCPError(code, message, data=error or None)


def _unknown(task_id: str) -> MCPError:
    shown = ascii(task_id[:80])  # echoed to its caller: control characters escaped, never sent raw
    return MCPError(types.INVALID_PARAMS, f"Failed to retrieve task: Task not found ({shown}).")


def _missing_extension() -> MCPError:
    return MCPError(
        types.MISSING_REQUIRED_CLIENT_CAPABILITY,
        "Missing required client capability: declare the io.modelcontextprotocol/tasks extension.",
        data={"requiredCapabilities": {"extensions": {EXTENSION: {}}}},
    )


class TasksSurface:
    """The `tasks/*` methods and the 2025-11-25 task-augmented `tools/call`, over one `CallRunner`."""

    def __init__(
        self,
        runner: CallRunner,
        limiter: RateLimiter | None,
        tenant_of: TenantOf,
        tools_of: ToolsOf,
        start_task: StartTask,
    ) -> None:
        self.runner = runner
        self.limiter = limiter
        self.tenant_of = tenant_of
        self.tools_of = tools_of
        """The tools the caller's token may call: a task of any other tool is as unknown as one that does not
        exist (an `exai:tool:version` token neither reads nor cancels a `chat` task of its tenant)."""
        self.start_task = start_task

    def install(self, server: Any) -> None:
        server.add_request_handler("tasks/get", TaskIdParams, self.get)
        server.add_request_handler("tasks/result", TaskIdParams, self.result)
        server.add_request_handler("tasks/list", ListParams, self.list)
        server.add_request_handler("tasks/cancel", TaskIdParams, self.cancel)
        server.add_request_handler("tasks/update", TaskIdParams, self.update)
        server.middleware.append(self.legacy_task_call)
        server.extensions[EXTENSION] = {}

    async def _admit(self) -> None:
        """Count the request against the tenant's `tasks/*` window (each reads the store), or refuse it with the
        rate-limit error a tool call gets (its `details.retry_after_seconds` included), as the JSON-RPC error."""
        if self.limiter is None:
            return
        try:
            await self.limiter.task_request(self.tenant_of())
        except ExaiError as exc:
            raise protocol_error(exc) from None

    async def _call(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> CallRecord:
        if is_modern(ctx) and not declares_extension(ctx):
            raise _missing_extension()
        await self._admit()
        try:
            call = await self.runner.get(task_id, self.tenant_of(), self.tools_of())
        except ExaiError as exc:
            if exc.category.value == "not_found":
                raise _unknown(task_id) from None
            raise protocol_error(exc) from None
        if not call.task:
            raise _unknown(task_id)
        return call

    async def get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        call = await self._call(ctx, params.task_id)
        return detailed(call, self.runner) if is_modern(ctx) else task_fields(call, modern=False)

    async def result(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """2025-11-25: wait for the end; the call's own result (or the JSON-RPC error of a lost call)."""
        if is_modern(ctx):
            raise MCPError(types.METHOD_NOT_FOUND, "tasks/result is not part of the 2026-07-28 Tasks extension.")
        call = await self._call(ctx, params.task_id)
        if call.status not in TERMINAL:
            try:
                call = await self.runner.wait(call.id, call.tenant, RESULT_WAIT_SECONDS)
            except ExaiError as exc:  # too many waits, or the store went away while waiting
                raise protocol_error(exc) from None
        if call.status == "failed":
            error = jsonrpc_error(call)
            raise MCPError(error["code"], error["message"], data=error["data"])
        self.runner.collected(call)
        payload = result_payload(self.runner.outcome(call))
        payload["_meta"] = {**payload.get("_meta", {}), RELATED_TASK: {"taskId": call.id}}
        return payload

    async def list(self, ctx: ServerRequestContext[Any, Any], params: ListParams) -> dict[str, Any]:
        if is_modern(ctx):
            raise MCPError(types.METHOD_NOT_FOUND, "tasks/list is not part of the 2026-07-28 Tasks extension.")
        await self._admit()
        try:
            before = float(params.cursor) if params.cursor else None
        except ValueError:
            raise MCPError(types.INVALID_PARAMS, "Invalid cursor: pass the nextCursor of the previous page.") from None
        calls = await self.runner.store.list_calls(self.tenant_of(), LIST_PAGE, before)
        tools = set(self.tools_of())
        page: dict[str, Any] = {"tasks": [task_fields(call, modern=False) for call in calls if call.tool in tools]}
        if len(calls) == LIST_PAGE:
            page["nextCursor"] = repr(calls[-1].created_at)
        return page

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        call = await self._call(ctx, params.task_id)
        if call.status in TERMINAL and is_modern(ctx):
            return {}  # 2026-07-28: an idempotent acknowledgement; -32602 is for unknown ids only
        if call.status in TERMINAL:
            raise MCPError(types.INVALID_PARAMS, f"Cannot cancel task: it has already ended ({call.status}).")
        if is_modern(ctx):
            await self.runner.cancel(call.id, call.tenant)
            return {}
        try:  # 2025-11-25 answers the task as `tasks/get` will show it from now on
            ended = await self.runner.cancel_and_wait(call.id, call.tenant)
        except ExaiError as exc:
            raise protocol_error(exc) from None
        return task_fields(ended, modern=False)

    async def update(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """No call here ever asks the client for input: responses are acknowledged and ignored, as specified."""
        if not is_modern(ctx):
            raise MCPError(types.METHOD_NOT_FOUND, "tasks/update belongs to the 2026-07-28 Tasks extension.")
        await self._call(ctx, params.task_id)
        return {}

    async def legacy_task_call(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """A 2025-11-25 `tools/call` with `params.task`: answered here with `CreateTaskResult` (the SDK's result
        check knows only `CallToolResult` for `tools/call`)."""
        raw = ctx.params
        if ctx.method != "tools/call" or is_modern(ctx) or not isinstance(raw, dict) or raw.get("task") is None:
            return await call_next(ctx)
        try:
            params = types.CallToolRequestParams.model_validate(ctx.params, by_name=False)
        except Exception:
            return await call_next(ctx)  # the ordinary path reports invalid params
        result = await self.start_task(ctx, params)
        return (
            result.model_dump(by_alias=True, mode="json", exclude_none=True)
            if isinstance(result, BaseModel)
            else result
        )
