"""`collect`: the answer of a call that was still running when its caller stopped waiting.

A client that knows nothing of MCP Tasks gets, after EXAI_CLIENT_WAIT_SECONDS, a normal result saying the model is
still working, with `_meta["exai/pending"].next_call` naming this tool and the call's id. Calling it waits up to the
same budget and returns the call's own result, exactly as the original call would have returned it (same text and
structured content), or the pending result again. Only the caller's tenant can collect its calls, and only with a
token that may call the tool that made the call.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from pydantic import Field

from exai.security.auth import COLLECT_TOOL
from exai.server.answers import pending_result
from exai.storage.base import TERMINAL
from exai.tools.base import Tool, ToolContext, ToolInput

DEFAULT_COLLECT_WAIT = 45.0
"""How long `collect` waits when answer-later is off (EXAI_CLIENT_WAIT_SECONDS=0)."""


class CollectInput(ToolInput):
    task_id: str = Field(min_length=1, max_length=64, description="The `task_id` of a pending answer.")
    cancel: bool = Field(
        default=False, description="Cancel the call instead of waiting for it (the model request is cut)."
    )


class CollectTool(Tool[CollectInput, Any]):
    name = COLLECT_TOOL
    title = "Collect a pending answer"
    description = (
        "Get the answer of an earlier call that was still running when it returned a pending result "
        '(its `_meta["exai/pending"]` names this call). Waits for the answer up to the server\'s client wait; '
        "with `cancel: true` it cancels the call instead."
    )
    input_model = CollectInput
    output_model = None  # the collected call's own result, whatever its tool's output schema
    holds_slot = False  # the call it waits for holds the tenant's slot already

    async def run(self, args: CollectInput, ctx: ToolContext) -> types.CallToolResult:
        calls, wait = ctx.calls, ctx.settings.client_wait_seconds or DEFAULT_COLLECT_WAIT
        await calls.get(args.task_id, ctx.tenant, ctx.visible_tools)  # a call of a tool this token may not call
        if args.cancel:  # is as unknown as one that does not exist: it may neither read nor cancel it
            call = await calls.cancel_and_wait(args.task_id, ctx.tenant)
        else:
            call = await calls.wait(args.task_id, ctx.tenant, wait)
        if call.status not in TERMINAL:
            return pending_result(call, wait)
        calls.collected(call)
        return calls.outcome(call)
