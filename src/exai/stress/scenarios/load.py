"""load: the daemon's capacity (an open-loop offered rate, stepped up to the knee), then 1,024 calls in flight."""

from __future__ import annotations

import asyncio
import os
import time

import httpx2

from exai.stress.capacity import OVERHEAD_P95_MS, Deployment, Step, find_knee, steps_json
from exai.stress.context import Context
from exai.stress.metrics import ResourceMonitor, histogram_quantile, scrape
from exai.stress.results import Sample, ScenarioResult
from exai.stress.worker import run_workers
from exai.stress.workload import LoadPlan

NAME = "load"
SUMMARY = (
    "First capacity: new chats offered at a fixed rate (open loop, from 2 client processes, 50 ms upstream), the rate "
    "stepped up until the daemons' own overhead p95 (exai_gateway_overhead_seconds) passes 5 ms or an error "
    "appears; the knee is the last rate that met both. Past the knee the steps go on while the daemons keep up "
    "without errors: the last such rate is their throughput. Measured for one daemon (the run's storage) and, in full "
    "mode, for 3 stateless replicas behind nginx (deploy/nginx.conf) on PostgreSQL + Redis. Then 1,024 concurrent "
    "tool calls (new chats, continued threads, two-step debug workflows, consensus) over 64 MCP sessions from 4 "
    "client processes, 200 ms upstream."
)
CRITERION = (
    "capacity: a knee is found for 1 replica and for 3 behind nginx (at least the first step within 5 ms overhead "
    "p95 and 0 errors), reported in calls/s and calls/s per core with the CPU time per call of daemons, nginx, "
    "simulator and clients (the throughput without errors reported beside it, not judged); at 1,024 in flight: "
    "every call completes, 0 errors, 0 paid-then-failed. Overhead at "
    "1,024 in flight is reported, not judged (it is the wait for the event loop of one process). A quick run judges "
    "errors only."
)
RATES = [10.0, 20.0, 40.0, 60.0, 90.0, 130.0, 180.0, 250.0, 350.0]
QUICK_RATES = [10.0, 20.0]
REPLICAS = 3


async def _capacity(ctx: Context, result: ScenarioResult) -> None:
    """The knee of one daemon (the run's storage), then of three replicas behind nginx on PostgreSQL + Redis."""
    await ctx.sim.reset()
    await ctx.sim.latency(50)
    rates, seconds = (QUICK_RATES, 5.0) if ctx.quick else (RATES, 20.0)
    daemon = await asyncio.to_thread(ctx.target.daemon, "load-capacity")
    try:
        await knee_of(ctx, result, Deployment.single(daemon), rates, seconds)
    finally:
        await asyncio.to_thread(ctx.target.stop_daemon, daemon)
    if ctx.quick:
        result.notes.append(
            f"quick: the capacity of {REPLICAS} replicas behind nginx is measured in full mode only "
            "(tests/test_stress_capacity.py drives that path at small scale)"
        )
        return
    label = f"{REPLICAS} replicas behind nginx"
    try:
        replicas = await asyncio.to_thread(ctx.target.replicas, "load-replica", REPLICAS)
    except RuntimeError as exc:  # nginx missing, or no source checkout with deploy/nginx.conf
        result.check(f"capacity knee found ({label})", "replicas and nginx started", str(exc)[:300], False)
        return
    try:
        await knee_of(ctx, result, Deployment.behind_nginx(replicas), rates, seconds)
    finally:
        await asyncio.to_thread(ctx.target.stop_replicas, replicas)


async def knee_of(
    ctx: Context, result: ScenarioResult, deployment: Deployment, rates: list[float], seconds: float
) -> Step | None:
    """Find `deployment`'s knee and throughput, record its steps, knee and throughput as figures and judge that a
    knee was found."""
    sim_pid = ctx.target.sim_pid or 0
    capacity_samples: list[Sample] = []
    try:
        found = await find_knee(ctx, deployment, sim_pid, rates, seconds, capacity_samples)
    finally:
        result.samples += capacity_samples
    steps, knee = found.steps, found.knee
    cores = os.cpu_count() or 1
    label = deployment.label
    result.figures[f"capacity steps, {label} (open loop, 50 ms upstream)"] = steps_json(steps)
    if knee is not None:
        result.figures[f"capacity knee, {label}"] = _summary(knee, cores)
    if found.throughput is not None:
        result.figures[f"throughput without errors, {label}"] = _summary(found.throughput, cores)
    missed = next((s for s in steps if not s.within()), None)
    why = (
        f"knee at {knee.completed_per_s:g} calls/s ({knee.completed_per_s / cores:.1f} per core); "
        if knee
        else "no step met the bound; "
    )
    if missed is None:
        why = f"knee above the highest step offered: {why}"
    else:
        why += (
            f"{'next' if knee else 'first'} step {missed.offered_per_s:g}/s: overhead p95 {missed.overhead_p95_ms} ms "
            f"(storage p95 {missed.storage_p95_ms} ms, event-loop lag p95 {missed.loop_lag_p95_ms} ms; per call "
            f"{_split(missed)}), {missed.errors} errors"
        )
    if found.throughput is not None and found.throughput is not knee:
        why += (
            f"; carried {found.throughput.completed_per_s:g} calls/s without errors (client p95 "
            f"{found.throughput.client_p95_ms} ms)"
        )
    result.check(
        f"capacity knee found ({label})",
        f"first step: overhead p95 <= {OVERHEAD_P95_MS:g} ms, 0 errors",
        why,
        knee is not None,
        judged=not ctx.quick,
    )
    return knee


def _split(at: Step) -> str:
    """A step's mean overhead per call and where it went, in a few words."""
    split = at.overhead_split_ms
    if not split:
        return "no call counted"
    return (
        f"mean {split['mean']:g} ms: store {split['store']:g}, limiter {split['limiter']:g}, the daemon's own "
        f"{split['rest']:g}"
    )


def _summary(at: Step, cores: int) -> dict[str, object]:
    """One step as the figures publish a knee or a throughput: calls/s, per core, and where the time goes."""
    return {
        "calls_per_s": at.completed_per_s,
        "calls_per_s_per_core": round(at.completed_per_s / cores, 1),
        "cores": cores,
        "overhead_p95_ms": at.overhead_p95_ms,
        "client_p95_ms": at.client_p95_ms,
        "storage_p95_ms": at.storage_p95_ms,
        "event_loop_lag_p95_ms": at.loop_lag_p95_ms,
        "overhead_per_call_ms": at.overhead_split_ms,
        "daemon_cores_busy": at.daemon_cpu_busy,
        "cpu_ms_per_call": {
            "daemons": at.daemon_cpu_ms_per_call,
            **({"nginx": at.balancer_cpu_ms_per_call} if at.balancer_cpu_ms_per_call is not None else {}),
            "simulator": at.simulator_cpu_ms_per_call,
            "clients": at.clients_cpu_ms_per_call,
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


async def run(ctx: Context, result: ScenarioResult) -> None:
    processes = ctx.scale(4, 2)
    sessions = ctx.scale(64, 8)
    slots = ctx.scale(16, 4)  # 64 x 16 = 1,024 calls in flight at the peak (quick: 32)
    operations = ctx.scale(10, 5)
    upstream_ms = ctx.scale(200, 100)
    if ctx.target.local:
        await _capacity(ctx, result)
    else:
        result.notes.append("remote target: capacity steps need a local daemon (its CPU is read from /proc)")
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
    concurrent: list[Sample] = []
    monitor = ResourceMonitor(daemon.url, ctx.epoch, ctx.admin_headers())
    async with httpx2.AsyncClient(headers=ctx.admin_headers()) as http:
        before = await scrape(http, daemon.url)
        monitor.start()

        def on_sample(sample: Sample) -> None:
            result.samples.append(sample)
            concurrent.append(sample)
            errors = sum(not s.ok for s in concurrent)
            ctx.progress(len(concurrent), expected, f"{sessions * slots} in flight: {errors} errors")

        try:
            await run_workers(processes, plan, ctx.epoch, on_sample, ceiling=ctx.seconds(900, 600))
        finally:
            await monitor.stop()
        after = await scrape(http, daemon.url)
    result.resources = monitor.readings
    stats = await ctx.sim.stats()
    overhead = histogram_quantile(after.bucket_delta(before, "exai_gateway_overhead_seconds"), 0.95)
    overhead_ms = round(overhead * 1000, 2) if overhead is not None else None
    errors = sum(not s.ok for s in concurrent)
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
        "gateway_overhead_p95_ms_at_full_concurrency": overhead_ms,
        "gateway_overhead_p95_ms_by_tool": {k: round(v * 1000, 2) for k, v in per_tool.items() if v is not None},
        "daemon_peak_rss_mb": max((r[1] for r in monitor.readings), default=None),
    }
    kinds: dict[str, int] = {}
    for s in concurrent:
        if not s.ok:
            kinds[s.category] = kinds.get(s.category, 0) + 1
    in_flight = f"{sessions * slots:,} in flight"
    result.check(f"{in_flight}: calls completed", f"{expected:,}", f"{len(concurrent):,}", len(concurrent) >= expected)
    result.check(f"{in_flight}: errors", "0", f"{errors:,} {kinds or ''}".strip(), errors == 0)
    result.notes.append(
        f"gateway overhead p95 with {in_flight}: {overhead_ms} ms (reported, not judged: it includes the wait for "
        "the event loop; the capacity knee above is the overhead bound's test)"
    )
    ctx.target.stop_daemon(daemon)


def _kinds(operations: int) -> list[str]:
    from exai.stress.workload import MIX

    return [MIX[n % len(MIX)] for n in range(operations)]
