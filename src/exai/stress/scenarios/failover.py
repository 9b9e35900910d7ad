"""failover: one provider fails completely (503, hang, 429 with Retry-After, reset) while another is healthy."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx2

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.metrics import scrape
from exai.stress.results import Sample, ScenarioResult, percentile
from exai.stress.target import Daemon

NAME = "failover"
SUMMARY = (
    "On the shipped defaults (45 s attempt timeout, breaker after 5 failures, 30 s cooldown), chats go to kimi-k2 "
    "(Kimi provider) with the simulator's sim-fast (Custom provider) as fallback; Kimi fails completely with 503, "
    "then hangs, then 429 with Retry-After, then connection resets, each in turn, then heals. Baseline calls straight "
    "to sim-fast are interleaved with the failover calls, so added latency compares like with like."
)
CRITERION = (
    ">= 99.9% of calls succeed; once the breaker is open, added latency p95 (failover calls minus the interleaved "
    "baseline) <= 100 ms (full mode); the breaker half-opens and closes again after the provider heals."
)
DEAD_MODEL = "kimi-k2-0905-preview"
KINDS: tuple[dict[str, Any], ...] = (
    {"kind": "503"},
    {"kind": "hang"},
    {"kind": "429", "retry_after": 1},
    {"kind": "reset"},
)
QUICK_KINDS = KINDS[:2]  # the fast failure and the slow one; a quick run cannot afford four 30 s cooldowns
CONCURRENCY = 4
OPENING_CONCURRENCY = 8  # more than the breaker's threshold (5): a hang opens it within one attempt timeout
ADDED_P95_MS = 100.0


async def _breaker_state(http: httpx2.AsyncClient, daemon: Daemon) -> float:
    """0 when every breaker is closed; above 0 while one is half-open (1) or open (2)."""
    return (await scrape(http, daemon.url)).values.get("exai_breaker_state", 0.0)


async def _calls(
    ctx: Context, daemon: Daemon, count: int, tag: str, concurrency: int = CONCURRENCY, model: str | None = None
) -> list[Sample]:
    """`count` chats; `model` None means the daemon's default (kimi-k2, falling back to sim-fast)."""
    samples: list[Sample] = []
    queue = iter(range(count))
    async with session(daemon.mcp_url, ctx.target.token) as client:

        async def worker() -> None:
            for n in queue:
                args = {"prompt": f"failover {tag} {n}"} | ({"model": model} if model else {})
                done = await call(client, "chat", args, ctx.epoch, ceiling=300)
                samples.append(done.sample)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def interleaved(ctx: Context, daemon: Daemon, count: int, tag: str) -> tuple[list[Sample], list[Sample]]:
    """Failover calls and baseline calls (straight to sim-fast) alternating on the same session, same moments:
    (failover samples, baseline samples)."""
    failover: list[Sample] = []
    baseline: list[Sample] = []
    queue = iter(range(count))
    async with session(daemon.mcp_url, ctx.target.token) as client:

        async def worker() -> None:
            for n in queue:
                done = await call(client, "chat", {"prompt": f"failover {tag} {n}"}, ctx.epoch, ceiling=300)
                failover.append(done.sample)
                base = {"prompt": f"baseline {tag} {n}", "model": "sim-fast"}
                baseline.append((await call(client, "chat", base, ctx.epoch, ceiling=300)).sample)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return failover, baseline


def added_p95(failover: list[Sample], baseline: list[Sample]) -> float:
    p95 = percentile(sorted(s.ms for s in failover if s.ok), 0.95)
    return p95 - percentile(sorted(s.ms for s in baseline if s.ok), 0.95)


async def run(ctx: Context, result: ScenarioResult) -> None:
    if not ctx.target.local:
        result.skipped = "needs a local daemon configured with a fallback provider (kimi-k2 -> sim-fast)"
        return
    per_phase = ctx.scale(1000, 40)
    daemon = ctx.target.daemon(
        "failover",
        EXAI_DEFAULT_MODEL="kimi-k2",
        EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true",
        EXAI_FALLBACK_CHAIN="sim-fast",
    )  # attempt timeout, breaker threshold and cooldown, call deadline: the shipped defaults
    result.figures["settings"] = "shipped defaults (attempt timeout 45 s, breaker 5 failures, cooldown 30 s)"
    await ctx.sim.reset()
    await ctx.sim.latency(20)
    await _calls(ctx, daemon, 4 * CONCURRENCY, "warm-up")  # connections and first-call costs: counted in calls
    total = ok = 0
    kinds = QUICK_KINDS if ctx.quick else KINDS
    async with httpx2.AsyncClient(headers=ctx.admin_headers()) as http:
        for number, fault in enumerate(kinds):
            kind = str(fault["kind"])
            ctx.progress(number, len(kinds), kind)
            await ctx.sim.fault(kind, model=DEAD_MODEL, **{k: v for k, v in fault.items() if k != "kind"})
            samples = await _calls(ctx, daemon, OPENING_CONCURRENCY, f"{kind} opening", OPENING_CONCURRENCY)
            opened = await _breaker_state(http, daemon) >= 1
            after_open, baseline = await interleaved(ctx, daemon, per_phase // 2, f"{kind} open")
            samples += after_open
            result.samples += samples + baseline
            await ctx.sim.clear_faults()
            before = (await ctx.sim.stats())["counters"].get(f"requests:{DEAD_MODEL}", 0)
            ctx.progress(number, len(kinds), f"{kind}: healed, waiting for the breaker")
            closed_in = await _wait_closed(ctx, daemon, http, result, kind, ceiling=30 * 3 + 30)
            probed = (await ctx.sim.stats())["counters"].get(f"requests:{DEAD_MODEL}", 0) > before
            total += len(samples)
            ok += sum(s.ok for s in samples)
            added = added_p95(after_open, baseline)
            result.figures[f"{kind}: added p95 ms with breaker open (vs interleaved baseline)"] = round(added, 1)
            result.figures[f"{kind}: breaker closed again after s"] = closed_in
            result.check(f"{kind}: breaker opened", "open after the failures", str(opened), opened)
            result.check(
                f"{kind}: added latency p95",
                f"<= {ADDED_P95_MS:.0f} ms",
                f"{added:.1f} ms",
                added <= ADDED_P95_MS,
                judged=not ctx.quick,
            )
            healed = closed_in is not None and probed
            result.check(f"{kind}: half-open probe, closed", "closed after healing", f"{closed_in} s", healed)
    rate = ok / total if total else 0.0
    result.figures |= {"calls_during_faults": total, "succeeded": ok}
    result.check("calls succeeded", ">= 99.9%", f"{rate:.2%} ({ok:,}/{total:,})", rate >= 0.999)
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
