"""Answer later: what a client that knows nothing of tasks gets when a model is still working.

After EXAI_CLIENT_WAIT_SECONDS (below the 60 s at which most clients give up) the call comes back as a normal,
non-error result: one or two sentences telling the agent the model is still working and the exact call that
collects the answer, and `_meta["exai/pending"]` = {task_id, next_call: {name, arguments}, retry_after_seconds}
for programs. The work goes on; `collect` returns the answer when it is ready.

Clients validate a result's structured content against the tool's output schema, so the schema of every tool that
may answer later accepts either its own output or `{"pending": ...}` (see `with_pending`).
"""

from __future__ import annotations

import time
from typing import Any

import mcp_types as types

from exai.errors import ExaiError
from exai.security.auth import COLLECT_TOOL
from exai.server.results import error_result
from exai.storage.base import CallRecord

PENDING_KEY = "exai/pending"
PENDING_SCHEMA: dict[str, Any] = {"properties": {"pending": {"type": "object"}}, "required": ["pending"]}
"""Kept small: it is in every model tool's listing (the shape of `pending` is in `_meta` and the README)."""


def with_pending(schema: dict[str, Any]) -> dict[str, Any]:
    """An output schema that also accepts the pending shape; `$defs` stay at the root, where `$ref`s point."""
    body = {k: v for k, v in schema.items() if k != "$defs"}
    merged: dict[str, Any] = {"type": "object", "anyOf": [body, PENDING_SCHEMA]}
    if "$defs" in schema:
        merged["$defs"] = schema["$defs"]
    return merged


def pending(call: CallRecord) -> dict[str, Any]:
    return {
        "task_id": call.id,
        "next_call": {"name": COLLECT_TOOL, "arguments": {"task_id": call.id}},
        "retry_after_seconds": 1,
    }


def pending_result(call: CallRecord, wait_seconds: float) -> types.CallToolResult:
    """The model is still working: say so, and how to collect the answer."""
    running = max(0.0, time.time() - call.created_at)
    waits = f" (it waits up to {wait_seconds:.0f} s for the answer)" if wait_seconds else ""
    text = (
        f"The model is still working on this '{call.tool}' call ({running:.0f} s so far); the answer will be kept. "
        f'To get it, call the `{COLLECT_TOOL}` tool with {{"task_id": "{call.id}"}}{waits}; '
        "call it again if it says the model is still working."
    )
    info = pending(call)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"pending": info},
        _meta={PENDING_KEY: info},
    )


def outcome_result(call: CallRecord, lost: ExaiError, cancelled: ExaiError) -> types.CallToolResult:
    """What an ended call returns: its own result when it completed, else the error that ended it."""
    if call.status == "completed" and call.result is not None:
        return types.CallToolResult.model_validate(call.result)
    return error_result(cancelled if call.status == "cancelled" else lost)
