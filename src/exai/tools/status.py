"""`status`: how the server is doing right now."""

from __future__ import annotations

import time
from collections import Counter

from pydantic import BaseModel

from exai.tools.base import Tool, ToolContext, ToolInput, ToolResult

WINDOW_SECONDS = 300


class StatusInput(ToolInput):
    pass


class ProviderHealth(BaseModel):
    name: str
    health: str
    breakers: dict[str, str]
    recent_errors: dict[str, int]


class StatusOutput(BaseModel):
    health: str
    uptime_seconds: float
    in_flight: int
    calls: dict[str, dict[str, int]]
    recent_errors: dict[str, int]
    window_seconds: int
    providers: list[ProviderHealth]


class StatusTool(Tool[StatusInput, StatusOutput]):
    name = "status"
    title = "Server status"
    description = "Uptime, calls in flight, per-provider health and circuit breakers, and recent errors."
    input_model = StatusInput
    output_model = StatusOutput

    async def run(self, args: StatusInput, ctx: ToolContext) -> ToolResult[StatusOutput]:
        services = ctx.services
        router = services.router
        cutoff = time.time() - WINDOW_SECONDS
        providers = []
        for name in sorted(router.providers):
            models = [m for m in router.available_models() if m.provider == name]
            breakers = {m.name: router.breaker_state(m) for m in models if router.breaker_state(m) != "closed"}
            errors = Counter(kind for at, prov, kind in router.recent_errors if prov == name and at >= cutoff)
            open_count = sum(1 for state in breakers.values() if state == "open")
            health = "down" if models and open_count == len(models) else "degraded" if breakers or errors else "ok"
            providers.append(ProviderHealth(name=name, health=health, breakers=breakers, recent_errors=dict(errors)))
        calls: dict[str, dict[str, int]] = {}
        for (tool, outcome), count in services.stats.calls.items():
            calls.setdefault(tool, {})[outcome] = count
        overall = "ok" if all(p.health == "ok" for p in providers) and providers else "degraded"
        data = StatusOutput(
            health=overall if providers else "no_providers",
            uptime_seconds=round(services.stats.uptime(), 1),
            in_flight=services.stats.in_flight,
            calls=calls,
            recent_errors=dict(services.stats.errors_since(WINDOW_SECONDS)),
            window_seconds=WINDOW_SECONDS,
            providers=providers,
        )
        lines = [f"health: {data.health}; uptime {data.uptime_seconds:.0f} s; in flight: {data.in_flight}"]
        lines += [
            f"{p.name}: {p.health}"
            + (f"; breakers {p.breakers}" if p.breakers else "")
            + (f"; errors {p.recent_errors}" if p.recent_errors else "")
            for p in providers
        ]
        return ToolResult(text="\n".join(lines), data=data)
