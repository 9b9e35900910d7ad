"""`status`: how the server is doing right now (the status page shows the same report, and more)."""

from __future__ import annotations

from pydantic import BaseModel

from exai.observability.health import Health, LimiterHealth, ProviderHealth
from exai.observability.stats import Stats, TenantUsage
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


def status_report(stats: Stats, health: Health) -> StatusOutput:
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
    )


def render_text(report: StatusOutput) -> str:
    lines = [f"health: {report.health}; uptime {report.uptime_seconds:.0f} s; in flight: {report.in_flight}"]
    lines += [f"{p.name}: {p.health} ({p.reason})" for p in report.providers]
    lines.append(f"limiter: {report.limiter.reason}")
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
        "and tokens and cost per tenant today (since daemon start)."
    )
    input_model = StatusInput
    output_model = StatusOutput

    async def run(self, args: StatusInput, ctx: ToolContext) -> ToolResult[StatusOutput]:
        report = status_report(ctx.services.stats, ctx.services.health)
        return ToolResult(text=render_text(report), data=report)
