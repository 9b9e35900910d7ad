"""Refused calls cost the caller like any other call: a probe for tools counts against the tenant's rate limit.

Without this, a tenant limited to 30 calls a minute could make a thousand calls to unknown or forbidden tools
in seconds, each written to the audit log. Now each such call takes one request of the tenant's per-minute
budget (and is refused as rate limited once that is spent); the audit log keeps the first of each repeated
refusal per minute (see `observability/refusals.py`).
"""

from __future__ import annotations

import mcp_types as types
from mcp.shared.exceptions import MCPError

from exai.app import Services
from exai.errors import RateLimitError
from exai.observability.events import CallEvent, Outcome
from exai.tools import PROFILES

UNKNOWN_TOOL = "(unknown)"
"""How a call to a tool that does not exist is recorded (never its name: metrics labels stay bounded)."""


async def charge_refusal(services: Services, tenant: str) -> None:
    """Count one refused call against `tenant`'s limits; raises `RateLimitError` when they are spent."""
    limiter = services.limiter
    if limiter is not None:
        await limiter.release(
            await limiter.acquire(tenant, spends_tokens=False, writes_threads=False)
        )  # refused for its own reason


async def unknown_tool(services: Services, name: str, tenant: str, correlation_id: str, visible: list[str]) -> MCPError:
    """The JSON-RPC error for a call to a tool that does not exist (or is hidden from this token), recorded once."""
    refusal = MCPError(
        types.INVALID_PARAMS,
        f"Unknown tool '{name[:80]}'. Available tools: {', '.join(visible)}.{not_offered(services, name)}",
        data={"category": "not_found", "code": "unknown_tool", "tools": visible},
    )
    outcome: Outcome = "error"
    category, code = "not_found", "unknown_tool"
    try:
        await charge_refusal(services, tenant)
    except RateLimitError as limited:
        refusal = MCPError(types.INVALID_PARAMS, limited.message, data=limited.to_dict())
        outcome, category, code = "rate_limited", limited.category.value, limited.code
    services.events.call_finished(  # probing for tools is audited like any other call
        CallEvent(
            tool=UNKNOWN_TOOL,
            tenant=tenant,
            correlation_id=correlation_id,
            outcome=outcome,
            latency_s=0.0,
            error_category=category,
            error_code=code,
            error_message=refusal.error.message,
        ),
        started=False,
    )
    return refusal


def not_offered(services: Services, name: str) -> str:
    """For one of EX-AI's tools that this server does not offer at all (its profile or EXAI_DISABLED_TOOLS leave it
    out): how its operator turns it on. A tool the server offers but the caller's token may not call stays unknown
    without a hint, as it is to that caller."""
    settings = services.settings
    if name not in PROFILES["full"] or any(tool.name == name for tool in services.tools):
        return ""
    steps = []
    if name not in PROFILES[settings.tool_profile]:
        steps.append(f"EXAI_TOOL_PROFILE=full (this server's profile is {settings.tool_profile})")
    if name in settings.disabled_tools:
        steps.append("removing it from EXAI_DISABLED_TOOLS")
    return f" '{name}' is one of EX-AI's tools, not offered here: its operator turns it on with {' and '.join(steps)}."
