"""One `tools/call`, as a short pipeline of named steps: authorize → admit → validate → record → run → account.

Each step is a small function that either passes or raises an `ExaiError`; `handle_call` runs them in order and
turns the outcome into an MCP result. `record` (given for the tools that call models) writes the durable call record
before anything is spent: when the store cannot take it, the call ends there with `storage`. Every call, refused
ones included, ends in exactly one `CallEvent`, which
`Events` fans out to stats, metrics, alerts and the audit log. Usage comes from the model calls the tool made
through its context, never from its output.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import pydantic

from exai.app import Services
from exai.errors import ExaiError, InternalError, InvalidInput, PermissionDeniedError, RateLimitError
from exai.observability.events import CallEvent, Outcome
from exai.observability.tracing import tracer
from exai.security.auth import ADMIN_SCOPE, ADMIN_TOOLS, TOOLS_SCOPE, may_call
from exai.security.call_tokens import CallTokens
from exai.server.results import error_result
from exai.server.tool_refusals import charge_refusal
from exai.tools.base import ArgumentError, Tool, ToolContext


@dataclass
class Caller:
    """Who is calling: the tenant, and the token's scopes (None when the daemon runs without auth)."""

    tenant: str
    scopes: list[str] | None


async def authorize(services: Services, tool: Tool[Any, Any], caller: Caller) -> None:
    if caller.scopes is None or may_call(tool.name, caller.scopes):
        return
    await charge_refusal(services, caller.tenant)  # a forbidden call counts against the rate limit too
    needed = ADMIN_SCOPE if tool.name in ADMIN_TOOLS else f"{TOOLS_SCOPE} (or exai:tool:{tool.name})"
    raise PermissionDeniedError(
        f"Your token does not allow the '{tool.name}' tool.",
        code="missing_scope",
        remedy=f"Ask the operator for a token with scope {needed}.",
    )


def validate(tool: Tool[Any, Any], arguments: dict[str, Any] | None) -> pydantic.BaseModel:
    try:
        return tool.input_model.model_validate(arguments or {})
    except pydantic.ValidationError as exc:
        raise validation_error(tool, exc) from None


def validation_error(tool: Tool[Any, Any], exc: pydantic.ValidationError) -> InvalidInput:
    problems = []
    fields = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ArgumentError):  # found anywhere in the arguments by the input models' own check
            field, message = cause.path, str(cause)
        else:
            field = ".".join(str(part) for part in err["loc"]) or "(arguments)"
            message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        fields.append(field)
        problems.append(f"{field}: {message}")
    return InvalidInput(
        f"Invalid arguments for '{tool.name}': " + "; ".join(problems) + ".",
        code="invalid_arguments",
        remedy=f"Correct the named fields; the tool's input schema is in tools/list under '{tool.name}'.",
        details={"fields": fields},
    )


@asynccontextmanager
async def admitted(services: Services, tool: Tool[Any, Any], tenant: str, ctx: ToolContext) -> AsyncIterator[None]:
    """Hold a slot of the tenant's limits for the call; give it back and settle its tokens, even if cancelled.

    The call's `CallTokens` owns both, from here to its one settlement. A tool that only waits for another call
    (`collect`) holds no slot: that call holds its own while it runs."""
    limiter = services.limiter
    if limiter is None:
        yield
        return
    ctx.tokens = await CallTokens.admit(
        limiter, tenant, tool.name, tool.holds_slot, tool.calls_model, tool.writes_threads
    )
    try:
        yield
    finally:
        await ctx.tokens.close()  # a no-op when `record_turns` settled it while an answer's turns were written


async def run(tool: Tool[Any, Any], args: pydantic.BaseModel, ctx: ToolContext) -> types.CallToolResult:
    with tracer.start_as_current_span(
        f"tool {tool.name}",
        attributes={"exai.tool": tool.name, "exai.tenant": ctx.tenant, "exai.correlation_id": ctx.correlation_id},
    ):
        result = await tool.run(args, ctx)
    if isinstance(result, types.CallToolResult):  # a whole result (`collect`): passed on as it is
        return result
    answer = types.CallToolResult(
        content=[types.TextContent(type="text", text=result.text)],
        structured_content=result.data.model_dump(mode="json", exclude_none=True),
    )
    if ctx.unsaved_thread:
        return not_saved_to_thread(answer, ctx.unsaved_thread, ctx.unsaved_because)
    return answer


def not_saved_to_thread(
    result: types.CallToolResult, thread_id: str, because: ExaiError | None = None
) -> types.CallToolResult:
    """The paid answer with `_meta["exai/thread_saved"]: false`, `_meta["exai/thread_error"]` (the code of what
    stopped the write and what to do) and a line saying why and what that means for the thread."""
    code = because.code if because is not None else "storage_unavailable"
    why, then = _NOT_SAVED.get(code, _NOT_SAVED["storage_unavailable"])
    note = f"Note: {why}, so this exchange was not saved to thread {thread_id}; {then}"
    meta = {
        **(result.meta or {}),
        "exai/thread_saved": False,
        "exai/thread_error": {"code": code, "remedy": then},
    }
    return result.model_copy(
        update={"meta": meta, "content": [*result.content, types.TextContent(type="text", text=note)]}
    )


_REPEAT = "repeat what matters from this answer in your next prompt"
_NOT_SAVED: dict[str, tuple[str, str]] = {
    "storage_unavailable": (
        "the conversation store was unavailable",
        f"continuing that thread will not include it ({_REPEAT}).",
    ),
    "thread_full": (
        "the thread reached its turn limit while the model worked (other calls on it filled it)",
        f"start a new thread (call without continuation_id) and {_REPEAT}.",
    ),
    "conflict": (
        "other calls kept changing the thread while this one tried to add its turns",
        f"continuing that thread will not include it ({_REPEAT}); avoid many simultaneous calls on one thread.",
    ),
    "thread_not_found": (
        "the thread was deleted while the model worked",
        f"start a new thread (call without continuation_id) and {_REPEAT}.",
    ),
    "thread_expired": (
        "the thread expired while the model worked",
        f"start a new thread (call without continuation_id) and {_REPEAT}.",
    ),
}
"""Why a paid answer's turns could not be written (by the code of the error that stopped them), and what to do."""


async def handle_call(
    services: Services,
    tool: Tool[Any, Any],
    arguments: dict[str, Any] | None,
    caller: Caller,
    ctx: ToolContext,
    record: Callable[[], Awaitable[None]] | None = None,
) -> types.CallToolResult:
    """Run one call through every step; whatever happens, account for it once."""
    started = time.perf_counter()
    outcome: Outcome = "cancelled"
    error: ExaiError | None = None
    crash: Exception | None = None
    began = False
    try:
        await authorize(services, tool, caller)
        async with (
            services.admission.slot(queued=tool.calls_model),
            admitted(services, tool, caller.tenant, ctx),
        ):
            services.events.call_started()
            began = True
            args = validate(tool, arguments)
            await services.discovery.settled()  # a call just after start needs the Custom endpoint's models
            if record is not None:
                await record()
            result = await run(tool, args, ctx)
            if record is not None and ctx.tokens is not None:  # the call's record keeps the result for `collect`
                ctx.tokens.add_stored_text(kept_chars(result))
        outcome = "ok"
        return result
    except ExaiError as exc:
        error = exc
    except Exception as exc:
        crash = exc
        error = InternalError(
            f"'{tool.name}' failed unexpectedly ({type(exc).__name__}).",
            code="internal_error",
            remedy="Retry; if it persists, report it with the correlation id.",
        )
    finally:
        if error is not None:
            outcome = _outcome_of(error)
        services.events.call_finished(
            CallEvent(
                tool=tool.name,
                tenant=caller.tenant,
                correlation_id=ctx.correlation_id,
                outcome=outcome,
                latency_s=time.perf_counter() - started,
                upstream_s=ctx.upstream_seconds,
                error_category=error.category.value if error is not None else None,
                error_code=error.code if error is not None else None,
                error_message=error.message if error is not None else None,
                model_calls=ctx.model_calls,
                thread_id=ctx.thread_id,
            ),
            started=began,
            crash=crash,
        )
    assert error is not None
    return error_result(error)


def kept_chars(result: types.CallToolResult) -> int:
    """About the characters a call's record keeps of its result: its text and its structured content."""
    text = sum(len(block.text) for block in result.content if isinstance(block, types.TextContent))
    structured = result.structured_content
    return text + (len(json.dumps(structured, ensure_ascii=False)) if structured else 0)


def _outcome_of(error: ExaiError) -> Outcome:
    if isinstance(error, PermissionDeniedError):
        return "denied"
    if isinstance(error, RateLimitError):
        return "rate_limited"
    return "error"
