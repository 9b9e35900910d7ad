"""`status`: how the server is doing right now (the status page shows the same report, and more)."""

from __future__ import annotations

import time

from pydantic import BaseModel

from exai.observability.health import Health, LimiterHealth, ProviderHealth
from exai.observability.stats import Stats, TenantUsage
from exai.storage.base import CallCounts
from exai.tools.base import Tool, ToolContext, ToolInput, ToolResult


class StatusInput(ToolInput):
    pass


class UsageToday(BaseModel):
    day: str
    """Today's date (UTC)."""
    since: float
    """When counting began: the daemon's start, or midnight UTC if that is later."""
    note: str
    tenants: dict[str, TenantUsage]


class LongCalls(BaseModel):
    """Durable calls (tasks and answers kept for later) in the store, whichever replica runs them."""

    working: int
    completed: int
    failed: int
    cancelled: int
    oldest_working_seconds: float | None = None
    running_here: int
    """Calls this replica runs now."""


class StatusOutput(BaseModel):
    health: str
    uptime_seconds: float
    in_flight: int
    calls: dict[str, dict[str, int]]
    recent_errors: dict[str, int]
    """Errors returned to clients in the window, by category."""
    window_seconds: float
    providers: list[ProviderHealth]
    limiter: LimiterHealth
    usage_today: UsageToday
    long_calls: LongCalls


def long_calls(counts: CallCounts, running_here: int, now: float) -> LongCalls:
    by_status = counts.by_status
    oldest = counts.oldest_working
    return LongCalls(
        working=by_status.get("working", 0),
        completed=by_status.get("completed", 0),
        failed=by_status.get("failed", 0),
        cancelled=by_status.get("cancelled", 0),
        oldest_working_seconds=None if oldest is None else round(max(0.0, now - oldest), 1),
        running_here=running_here,
    )


def status_report(stats: Stats, health: Health, long: LongCalls) -> StatusOutput:
    providers = health.providers()
    calls: dict[str, dict[str, int]] = {}
    for (tool, outcome), count in sorted(stats.calls.items()):
        calls.setdefault(tool, {})[outcome] = count
    tenants = stats.usage_today()
    midnight = stats.clock() // 86400 * 86400
    return StatusOutput(
        health=health.overall(providers),
        uptime_seconds=round(stats.uptime(), 1),
        in_flight=stats.in_flight,
        calls=calls,
        recent_errors=dict(stats.window(health.window_seconds).error_categories),
        window_seconds=health.window_seconds,
        providers=providers,
        limiter=health.limiter(),
        usage_today=UsageToday(
            day=stats.usage_day,
            since=max(stats.started_at, midnight),
            note="counted in memory since daemon start (today, UTC); the audit log has the full history",
            tenants=dict(sorted(tenants.items())),
        ),
        long_calls=long,
    )


def render_text(report: StatusOutput) -> str:
    lines = [f"health: {report.health}; uptime {report.uptime_seconds:.0f} s; in flight: {report.in_flight}"]
    lines += [f"{p.name}: {p.health} ({p.reason})" for p in report.providers]
    lines.append(f"limiter: {report.limiter.reason}")
    tasks = report.long_calls
    oldest = "" if tasks.oldest_working_seconds is None else f", the oldest for {tasks.oldest_working_seconds:.0f} s"
    lines.append(
        f"long calls: {tasks.working} working{oldest} ({tasks.running_here} here), {tasks.completed} completed, "
        f"{tasks.failed} failed, {tasks.cancelled} cancelled"
    )
    if report.recent_errors:
        lines.append(f"errors in the last {report.window_seconds:g} s: {report.recent_errors}")
    usage = report.usage_today
    lines.append(f"usage today ({usage.day} UTC, since daemon start):")
    lines += [
        f"  {tenant}: {u.calls} calls, {u.input_tokens + u.output_tokens:,} tokens, ${u.cost_usd:.4f}"
        for tenant, u in usage.tenants.items()
    ] or ["  none"]
    return "\n".join(lines)


class StatusTool(Tool[StatusInput, StatusOutput]):
    name = "status"
    title = "Server status"
    description = (
        "Uptime, calls in flight, per-provider health with its reason, the rate limiter's state, recent errors, "
        "long calls (tasks) by status, and tokens and cost per tenant today (since daemon start)."
    )
    input_model = StatusInput
    output_model = StatusOutput

    async def run(self, args: StatusInput, ctx: ToolContext) -> ToolResult[StatusOutput]:
        calls = long_calls(ctx.calls.counts, ctx.calls.running, time.time())
        report = status_report(ctx.stats, ctx.health, calls)
        return ToolResult(text=render_text(report), data=report)
