"""soak: mixed traffic for a long time, with sessions opened and closed all the time; memory and files stay flat."""

from __future__ import annotations

import statistics
import time

from exai.stress.context import Context
from exai.stress.metrics import ResourceMonitor
from exai.stress.results import Sample, ScenarioResult, percentile
from exai.stress.worker import run_workers
from exai.stress.workload import LoadPlan

NAME = "soak"
SUMMARY = (
    "Mixed traffic (chats, continued threads, workflows, consensus) from 2 client processes for --duration "
    "(default 10 minutes); every session is closed after 10 operations per slot and a new one opened."
)
CRITERION = (
    "0 errors of any category; daemon RSS at the end <= 5% above its value after warm-up (the first third "
    "of the run's calls, 2,000 at least); open file descriptors flat (+5 at most). A quick run judges errors only."
)
RSS_GROWTH = 0.05
FD_SLACK = 5
TREND_WINDOW_S = 600  # the trend of a run of an hour or more is read per 10 minutes
WARM_UP_CALLS = 2000  # counted in calls, not seconds: a slow machine warms up later, not less
WARM_UP_SHARE = 1 / 3  # a long run warms up longer: allocator arenas and caches fill as the store grows, a leak
# grows without end; the 2.5-hour soak of 2026-12-02 rose 16 MB over its first 37% of calls, then not at all


def judge_errors(result: ScenarioResult) -> None:
    """Every failed call counts, whatever its category (storage and rate_limit included)."""
    errors = result.errors_by_category()
    said = {category: f" ({texts[0][:120]})" for category, texts in result.error_examples(1).items()}
    shown = ", ".join(f"{k} {v:,}{said.get(k, '')}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1]))
    total = sum(errors.values())
    result.figures["errors_by_category"] = errors
    result.check("errors (every category)", "0", f"{total:,}" + (f": {shown}" if shown else ""), total == 0)


def trend(
    samples: list[Sample],
    readings: list[tuple[float, float, float]],
    loads: list[tuple[float, float]],
    window_s: float,
) -> list[dict[str, float | int | None]]:
    """The run cut into windows of `window_s`: calls, errors and latency of the calls that ended in each, and the
    median RSS, open files and load average read during it, so growth shows as a slope, not two end points."""
    end = max((s.t for s in samples), default=0.0)
    rows: list[dict[str, float | int | None]] = []
    start = 0.0
    while start < end:
        stop = start + window_s
        done = [s for s in samples if start <= s.t < stop]
        ok = sorted(s.ms for s in done if s.ok)
        inside = [r for r in readings if start <= r[0] < stop]
        load = [v for t, v in loads if start <= t < stop]
        rows.append(
            {
                "from_min": round(start / 60, 1),
                "to_min": round(min(stop, end) / 60, 1),
                "calls": len(done),
                "errors": sum(not s.ok for s in done),
                "p50_ms": round(percentile(ok, 0.50), 1) if ok else None,
                "p95_ms": round(percentile(ok, 0.95), 1) if ok else None,
                "rss_mb": _median(inside, 1) if inside else None,
                "open_fds": _median(inside, 2) if inside else None,
                "load_average": round(statistics.median(load), 1) if load else None,
            }
        )
        start = stop
    return rows


def warm_up_calls(calls: int) -> int:
    """How many of a run's first calls are warm-up: a third of them, and never fewer than WARM_UP_CALLS."""
    return max(WARM_UP_CALLS, int(calls * WARM_UP_SHARE))


def _median(readings: list[tuple[float, float, float]], column: int) -> float:
    return statistics.median(r[column] for r in readings) if readings else 0.0


def judge_memory(result: ScenarioResult, readings: list[tuple[float, float, float]], judged: bool) -> None:
    """RSS and open files at the end against their values once warm-up is over (medians of several readings: one
    garbage collection is not growth). `readings` are (seconds, RSS MB, open files) from the resource monitor."""
    finished = sorted(s.t for s in result.samples)
    warming = warm_up_calls(len(finished))
    warm_end = finished[warming - 1] if len(finished) >= warming else float("inf")
    window = max(3, len(readings) // 10)
    after_warm = [r for r in readings if r[0] >= warm_end][:window]
    if not after_warm:
        why = f"no reading after the {warming:,} calls of warm-up ({len(finished):,} calls in all)"
        result.check("RSS growth and open files", "measured after warm-up", why, False, judged=judged)
        return
    at_end = readings[-window:]
    rss_warm, rss_end = _median(after_warm, 1), _median(at_end, 1)
    fds_warm, fds_end = _median(after_warm, 2), _median(at_end, 2)
    growth = (rss_end - rss_warm) / rss_warm if rss_warm else float("inf")
    result.figures |= {
        "warm_up_calls": warming,
        "warm_up_ended_s": warm_end,
        "rss_after_warm_up_mb": rss_warm,
        "rss_at_end_mb": rss_end,
        "open_fds_after_warm_up": fds_warm,
        "open_fds_at_end": fds_end,
    }
    measured = f"{growth:+.1%} ({rss_warm:.0f} -> {rss_end:.0f} MB, warm-up {warming:,} calls)"
    result.check("RSS growth", f"<= {RSS_GROWTH:.0%}", measured, growth <= RSS_GROWTH, judged=judged)
    flat = fds_end <= fds_warm + FD_SLACK
    result.check("open files flat", f"<= +{FD_SLACK}", f"{fds_warm:.0f} -> {fds_end:.0f}", flat, judged=judged)


async def run(ctx: Context, result: ScenarioResult) -> None:
    duration = min(ctx.soak_seconds, 30.0) if ctx.quick else ctx.soak_seconds
    daemon = ctx.target.daemon("soak")
    await ctx.sim.reset()
    await ctx.sim.latency(50, jitter_ms=20)
    plan = LoadPlan(
        url=daemon.mcp_url,
        sessions=ctx.scale(16, 4),
        slots_per_session=2,
        operations_per_slot=10,
        reopen=1_000_000,  # bounded by `duration`
        duration=duration,
        token=ctx.target.token,
        prefix=f"soak-{int(time.time())}",
    )
    monitor = ResourceMonitor(daemon.url, ctx.epoch, ctx.admin_headers(), interval=ctx.seconds(5, 1))
    monitor.start()

    def on_sample(sample: Sample) -> None:
        result.samples.append(sample)
        ctx.progress(min(ctx.elapsed(), duration), duration, f"{len(result.samples)} calls")

    try:
        await run_workers(2, plan, ctx.epoch, on_sample, ceiling=duration + 300)
    finally:
        await monitor.stop()
    readings = result.resources = monitor.readings
    result.figures |= {
        "duration_s": duration,
        "errors": sum(not s.ok for s in result.samples),
        "trend": trend(result.samples, readings, monitor.loads, TREND_WINDOW_S if duration >= 3600 else duration / 6),
    }
    result.notes.append("database connections: the daemon's pool holds them as open descriptors, counted in fds")
    judge_memory(result, readings, judged=not ctx.quick)  # a quick soak is too short for memory to settle
    judge_errors(result)
    result.check("calls made", "> 0", f"{len(result.samples):,}", bool(result.samples))
    ctx.target.stop_daemon(daemon)
