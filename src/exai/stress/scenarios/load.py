"""load: ramp to many concurrent tool calls over many sessions from several client processes."""

from __future__ import annotations

import time

import httpx2

from exai.stress.context import Context
from exai.stress.metrics import ResourceMonitor, histogram_quantile, scrape
from exai.stress.results import Sample, ScenarioResult
from exai.stress.worker import run_workers
from exai.stress.workload import LoadPlan

NAME = "load"
SUMMARY = (
    "Ramps to 1,000 concurrent tool calls (new chats, continued threads, two-step debug workflows, consensus) over "
    "64 MCP sessions from 4 client processes, on a 200 ms upstream."
)
CRITERION = "0 errors; gateway overhead p95 (the daemon's exai_gateway_overhead_seconds) <= 5 ms at the peak."
OVERHEAD_P95_MS = 5.0


async def run(ctx: Context, result: ScenarioResult) -> None:
    processes = ctx.scale(4, 2)
    sessions = ctx.scale(64, 8)
    slots = ctx.scale(16, 4)  # 64 x 16 = 1,024 calls in flight at the peak (quick: 32)
    operations = ctx.scale(10, 5)
    upstream_ms = ctx.scale(200, 100)
    daemon = ctx.target.daemon("load")
    await ctx.sim.reset()
    await ctx.sim.latency(upstream_ms)
    plan = LoadPlan(
        url=daemon.mcp_url,
        sessions=sessions,
        slots_per_session=slots,
        operations_per_slot=operations,
        ramp_seconds=ctx.seconds(20, 3),
        token=ctx.target.token,
        prefix=f"load-{int(time.time())}",
    )
    expected = sessions * slots * sum(2 if k == "workflow" else 1 for k in _kinds(operations))
    monitor = ResourceMonitor(daemon.url, ctx.epoch, ctx.admin_headers())
    async with httpx2.AsyncClient(headers=ctx.admin_headers()) as http:
        before = await scrape(http, daemon.url)
        monitor.start()

        def on_sample(sample: Sample) -> None:
            result.samples.append(sample)
            ctx.progress(len(result.samples), expected, f"{sum(not s.ok for s in result.samples)} errors")

        try:
            await run_workers(processes, plan, ctx.epoch, on_sample, ceiling=ctx.seconds(900, 150))
        finally:
            await monitor.stop()
        after = await scrape(http, daemon.url)
    result.resources = monitor.readings
    stats = await ctx.sim.stats()
    overhead = histogram_quantile(after.bucket_delta(before, "exai_gateway_overhead_seconds"), 0.95)
    overhead_ms = round(overhead * 1000, 2) if overhead is not None else None
    errors = sum(not s.ok for s in result.samples)
    per_tool = {
        tool: histogram_quantile(after.bucket_delta(before, f"exai_gateway_overhead_seconds:{tool}"), 0.95)
        for tool in ("chat", "debug", "consensus")
    }
    result.figures |= {
        "client_processes": processes,
        "sessions": sessions,
        "concurrent_calls_planned": sessions * slots,
        "upstream_max_in_flight": stats.get("max_in_flight"),
        "upstream_latency_ms": upstream_ms,
        "gateway_overhead_p95_ms": overhead_ms,
        "gateway_overhead_p95_ms_by_tool": {k: round(v * 1000, 2) for k, v in per_tool.items() if v is not None},
        "daemon_peak_rss_mb": max((r[1] for r in monitor.readings), default=None),
    }
    result.check("calls completed", f"{expected}", f"{len(result.samples)}", len(result.samples) >= expected)
    result.check("errors", "0", f"{errors} {result.errors_by_category() or ''}".strip(), errors == 0)
    result.check(
        "gateway overhead p95",
        f"<= {OVERHEAD_P95_MS} ms",
        f"{overhead_ms} ms",
        overhead_ms is not None and overhead_ms <= OVERHEAD_P95_MS,
        judged=not ctx.quick,
    )
    ctx.target.stop_daemon(daemon)


def _kinds(operations: int) -> list[str]:
    from exai.stress.workload import MIX

    return [MIX[n % len(MIX)] for n in range(operations)]
