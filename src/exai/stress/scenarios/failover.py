"""failover: one provider fails completely (503, hang, 429 with Retry-After, reset) while another is healthy."""

from __future__ import annotations

import asyncio
import time

import httpx2

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.metrics import scrape
from exai.stress.results import Sample, ScenarioResult, percentile
from exai.stress.target import Daemon

NAME = "failover"
SUMMARY = (
    "Chats go to kimi-k2 (Kimi provider) with the simulator's sim-fast (Custom provider) as fallback; Kimi fails "
    "completely with 503, then hangs, then 429 with Retry-After, then connection resets, each in turn, then heals."
)
CRITERION = (
    ">= 99.9% of calls succeed; once the breaker is open, added latency from the dead provider <= 100 ms p95; "
    "the breaker half-opens and closes again after the provider heals."
)
DEAD_MODEL = "kimi-k2-0905-preview"
KINDS = ({"kind": "503"}, {"kind": "hang"}, {"kind": "429", "retry_after": 1}, {"kind": "reset"})
CONCURRENCY = 4
ADDED_P95_MS = 100.0


async def _breaker_state(http: httpx2.AsyncClient, daemon: Daemon) -> float:
    """0 when every breaker is closed; above 0 while one is half-open (1) or open (2)."""
    return (await scrape(http, daemon.url)).values.get("exai_breaker_state", 0.0)


async def _calls(ctx: Context, daemon: Daemon, count: int, tag: str) -> list[Sample]:
    samples: list[Sample] = []
    queue = iter(range(count))
    async with session(daemon.mcp_url, ctx.target.token) as client:

        async def worker() -> None:
            for n in queue:
                done = await call(client, "chat", {"prompt": f"failover {tag} {n}"}, ctx.epoch, ceiling=120)
                samples.append(done.sample)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return samples


async def run(ctx: Context, result: ScenarioResult) -> None:
    if not ctx.target.local:
        result.skipped = "needs a local daemon configured with a fallback provider (kimi-k2 -> sim-fast)"
        return
    per_phase = ctx.scale(1000, 40)
    cooldown = ctx.seconds(5, 2)
    daemon = ctx.target.daemon(
        "failover",
        EXAI_DEFAULT_MODEL="kimi-k2",
        EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true",
        EXAI_FALLBACK_CHAIN="sim-fast",
        EXAI_BREAKER_FAILURE_THRESHOLD="3",
        EXAI_BREAKER_COOLDOWN_SECONDS=str(cooldown),
        EXAI_ATTEMPT_TIMEOUT_SECONDS="2",
        EXAI_CALL_DEADLINE_SECONDS="30",
    )
    await ctx.sim.reset()
    await ctx.sim.latency(20)
    await _calls(ctx, daemon, 4 * CONCURRENCY, "warm-up")  # connections and first-call costs, not measured
    baseline = await _calls(ctx, daemon, per_phase // 2, "healthy")
    result.samples += baseline
    base_p95 = percentile(sorted(s.ms for s in baseline if s.ok), 0.95)
    total = ok = 0
    async with httpx2.AsyncClient(headers=ctx.admin_headers()) as http:
        for number, fault in enumerate(KINDS):
            kind = str(fault["kind"])
            ctx.progress(number, len(KINDS), kind)
            await ctx.sim.fault(kind, model=DEAD_MODEL, **{k: v for k, v in fault.items() if k != "kind"})
            samples = await _calls(ctx, daemon, per_phase // 4, f"{kind} opening")
            opened = await _breaker_state(http, daemon) >= 1
            after_open = await _calls(ctx, daemon, per_phase, f"{kind} open")
            samples += after_open
            result.samples += samples
            await ctx.sim.clear_faults()
            before = (await ctx.sim.stats())["counters"].get(f"requests:{DEAD_MODEL}", 0)
            closed_in = await _wait_closed(ctx, daemon, http, result, kind, ceiling=cooldown * 4 + 30)
            probed = (await ctx.sim.stats())["counters"].get(f"requests:{DEAD_MODEL}", 0) > before
            total += len(samples)
            ok += sum(s.ok for s in samples)
            added = percentile(sorted(s.ms for s in after_open if s.ok), 0.95) - base_p95
            result.figures[f"{kind}: added p95 ms with breaker open"] = round(added, 1)
            result.figures[f"{kind}: breaker closed again after s"] = closed_in
            result.check(f"{kind}: breaker opened", "open after the failures", str(opened), opened)
            result.check(f"{kind}: added latency p95", f"<= {ADDED_P95_MS:.0f} ms", f"{added:.1f} ms", added <= 100)
            healed = closed_in is not None and probed
            result.check(f"{kind}: half-open probe, closed", "closed after healing", f"{closed_in} s", healed)
    rate = ok / total if total else 0.0
    result.figures |= {"baseline_p95_ms": round(base_p95, 1), "calls_during_faults": total, "succeeded": ok}
    result.check("calls succeeded", ">= 99.9%", f"{rate:.2%} ({ok}/{total})", rate >= 0.999)
    ctx.target.stop_daemon(daemon)


async def _wait_closed(
    ctx: Context, daemon: Daemon, http: httpx2.AsyncClient, result: ScenarioResult, kind: str, ceiling: float
) -> float | None:
    """Keep calling until every breaker reads closed; the seconds that took, or None past `ceiling`."""
    started = time.monotonic()
    while time.monotonic() - started < ceiling:
        result.samples += await _calls(ctx, daemon, CONCURRENCY, f"{kind} healed")
        if await _breaker_state(http, daemon) == 0:
            return round(time.monotonic() - started, 1)
        await asyncio.sleep(0.5)
    return None
