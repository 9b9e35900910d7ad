"""faults: SIGKILL of the daemon under load; Redis killed and restarted; PostgreSQL stopped and started."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.metrics import scrape
from exai.stress.processes import Managed
from exai.stress.results import Sample, ScenarioResult
from exai.stress.target import Daemon, run_token

NAME = "faults"
SUMMARY = (
    "Kills the daemon with SIGKILL under load and restarts it; kills a throwaway redis-server and starts it again; "
    "stops a throwaway PostgreSQL cluster and starts it again, with calls running throughout."
)
CRITERION = (
    "0 acknowledged turns lost after SIGKILL (start-to-ready time reported); while Redis or PostgreSQL is down, calls "
    "fail with clear storage / rate_limit errors or run degraded, never hang past the deadline, never crash the "
    "daemon; with Redis down the limiter reads degraded (exai_limiter_degraded and the status page) and the "
    "per-replica limits still refuse past a tenant's limit; after they return the daemon recovers without a restart."
)
DEADLINE_S = 10.0
CLEAR_DOWN = {"storage", "rate_limit"}  # the categories a call may fail with while a backing service is down
CLIENT_CEILING_S = 150.0  # past the daemon's client wait (45 s, then a pending answer): the daemon decides a call's end
REPLICA_LIMIT = 5  # requests per minute of the `-limited` tenant: the fallback limiter must still enforce it


async def _chats(ctx: Context, daemon: Daemon, count: int, tag: str, token: str | None = None) -> list[Sample]:
    async with session(daemon.mcp_url, token or ctx.target.token, timeout=DEADLINE_S * 3) as client:
        outcomes = [
            await call(client, "chat", {"prompt": f"{tag} {n}", "model": "sim-fast"}, ctx.epoch, DEADLINE_S * 3)
            for n in range(count)
        ]
    return [o.sample for o in outcomes]


async def _sigkill(ctx: Context, result: ScenarioResult) -> None:
    daemon = ctx.target.daemon("faults-kill")
    acknowledged: dict[str, int] = {}
    killed, enough_acknowledged = asyncio.Event(), asyncio.Event()
    enough = ctx.scale(200, 20)

    async def worker(index: int) -> None:
        thread: str | None = None
        try:
            async with session(daemon.mcp_url, ctx.target.token) as client:
                while not killed.is_set():
                    args = {"prompt": f"kill {index}", "model": "sim-fast"} | (
                        {"continuation_id": thread} if thread else {}
                    )
                    done = await call(client, "chat", args, ctx.epoch, ceiling=CLIENT_CEILING_S)
                    if not done.sample.ok:
                        done.sample.excused = killed.is_set()  # cut off by the kill itself: not "paid, then failed"
                        result.samples.append(done.sample)
                        return
                    result.samples.append(done.sample)
                    thread = done.data["continuation_id"]
                    acknowledged[thread] = acknowledged.get(thread, 0) + 1
                    if sum(acknowledged.values()) >= enough:
                        enough_acknowledged.set()
        except Exception:
            if not killed.is_set():
                raise

    async def killer() -> None:
        await enough_acknowledged.wait()
        killed.set()
        assert daemon.managed is not None
        daemon.managed.stop(signal.SIGKILL)

    await ctx.sim.latency(20)
    workers = [asyncio.create_task(worker(i)) for i in range(8)]
    # Its own name: the workers still compare their count with `enough` while this waits.
    acknowledging = asyncio.create_task(enough_acknowledged.wait())
    first_of: list[asyncio.Future[Any]] = [acknowledging, asyncio.gather(*workers)]
    await asyncio.wait(first_of, return_when=asyncio.FIRST_COMPLETED)
    acknowledging.cancel()  # every worker may have stopped on a failed call first: then kill now, do not wait forever
    enough_acknowledged.set()
    await asyncio.gather(killer(), *workers)
    ready_s = daemon.restart()
    lost = 0
    async with session(daemon.mcp_url, ctx.target.token) as client:
        for thread, acks in acknowledged.items():
            shown = await call(client, "threads", {"action": "show", "thread_id": thread, "limit": 1}, ctx.epoch)
            lost += max(0, 2 * acks - (shown.data.get("thread", {}).get("turns", 0) if shown.sample.ok else 0))
    result.figures |= {"sigkill: acknowledged calls": sum(acknowledged.values()), "sigkill: start to ready s": ready_s}
    result.check("SIGKILL: acknowledged turns lost", "0", str(lost), lost == 0 and bool(acknowledged))
    ctx.target.stop_daemon(daemon)


async def limiter_degraded(ctx: Context, daemon: Daemon) -> tuple[bool, bool]:
    """Whether the daemon says its limiter is degraded: on /metrics (exai_limiter_degraded) and on the status page."""
    async with httpx2.AsyncClient(headers=ctx.admin_headers(), timeout=10) as http:
        metric = (await scrape(http, daemon.url)).values.get("exai_limiter_degraded", 0.0) >= 1
        status = await http.get(f"{daemon.url}/dashboard/data")
        status.raise_for_status()
        return metric, bool(status.json().get("limiter", {}).get("degraded"))


async def limit_burst(ctx: Context, daemon: Daemon, tenant: str) -> tuple[int, int]:
    """REPLICA_LIMIT + 3 calls as `tenant`: (admitted, refused with rate_limit)."""
    samples = await _chats(ctx, daemon, REPLICA_LIMIT + 3, "limited", token=run_token(tenant, admin=False))
    return sum(s.ok for s in samples), sum(s.category == "rate_limit" for s in samples)


def judge_redis_down(
    result: ScenarioResult, degraded: tuple[bool, bool], admitted: int, limited: int, calls: int
) -> None:
    metric, status = degraded
    result.check("redis down: exai_limiter_degraded", "1", str(int(metric)), metric)
    result.check("redis down: status page limiter", "degraded", "degraded" if status else "not degraded", status)
    exact = admitted == REPLICA_LIMIT and limited == calls - REPLICA_LIMIT
    result.check(
        "redis down: per-replica limit enforced",
        f"{REPLICA_LIMIT} admitted, {calls - REPLICA_LIMIT} refused",
        f"{admitted} admitted, {limited} refused",
        exact,
    )


async def _outage(
    ctx: Context,
    result: ScenarioResult,
    what: str,
    daemon: Daemon,
    down: Callable[[], object],
    up: Callable[[], object],
    calls: int,
) -> None:
    """Calls before, during and after an outage of a backing service; `down`/`up` are blocking callables."""
    before = await _chats(ctx, daemon, calls, f"{what} before")
    await asyncio.to_thread(down)
    during = await _chats(ctx, daemon, calls, f"{what} down")
    alive = await _healthy(daemon)
    if what == "redis":
        degraded = await limiter_degraded(ctx, daemon)
        admitted, limited = await limit_burst(ctx, daemon, f"{ctx.target.isolation.tenant}-limited")
        judge_redis_down(result, degraded, admitted, limited, REPLICA_LIMIT + 3)
    await asyncio.to_thread(up)
    started = time.monotonic()
    after: list[Sample] = []
    while time.monotonic() - started < 60 and not (after and after[-1].ok):
        after += await _chats(ctx, daemon, 1, f"{what} back")
        if not after[-1].ok:
            await asyncio.sleep(0.5)
    recovered = bool(after) and after[-1].ok and all(s.ok for s in await _chats(ctx, daemon, calls, f"{what} after"))
    if what == "redis":  # the limiter retries Redis after a pause, then reads healthy again
        healed = await _wait(lambda: _not_degraded(ctx, daemon), 60)
        result.check("redis back: limiter no longer degraded", "exai_limiter_degraded 0", str(healed), healed)
    result.samples += before + during + after
    unclear = [s.category for s in during if not s.ok and s.category not in CLEAR_DOWN]
    slowest = max(s.ms for s in during) / 1000
    result.figures |= {
        f"{what}: calls ok while down": f"{sum(s.ok for s in during)}/{len(during)}",
        f"{what}: errors while down": sorted({s.category for s in during if not s.ok}),
        f"{what}: slowest call while down s": round(slowest, 2),
        f"{what}: recovered after s": round(time.monotonic() - started, 1),
    }
    result.check(
        f"{what} down: clear errors or degraded", "storage / rate_limit or ok", str(unclear or "yes"), not unclear
    )
    result.check(f"{what} down: no hang", f"<= {DEADLINE_S:.0f} s deadline", f"{slowest:.1f} s", slowest <= DEADLINE_S)
    result.check(f"{what} down: daemon alive", "/healthz 200", str(alive), alive)
    result.check(f"{what} back: recovered without restart", "calls succeed again", str(recovered), recovered)
    result.check(
        f"{what}: calls before the outage", "all ok", f"{sum(s.ok for s in before)}/{calls}", all(s.ok for s in before)
    )


async def _not_degraded(ctx: Context, daemon: Daemon) -> bool:
    await _chats(ctx, daemon, 1, "redis probe")  # the limiter notices Redis is back on its next call
    return not any(await limiter_degraded(ctx, daemon))


async def _wait(condition: Callable[[], Awaitable[bool]], seconds: float) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await condition():
            return True
        await asyncio.sleep(1)
    return False


async def _healthy(daemon: Daemon) -> bool:
    async with httpx2.AsyncClient() as http:
        try:
            return (await http.get(f"{daemon.url}/healthz", timeout=10)).status_code == 200
        except httpx2.HTTPError:
            return False


def _restart(managed: Managed) -> None:
    managed.start(None)


async def run(ctx: Context, result: ScenarioResult) -> None:
    if not ctx.target.local:
        result.skipped = "kills and restarts processes: needs --target local"
        return
    await ctx.sim.reset()
    calls = ctx.scale(20, 2)
    ctx.progress(0, 3, "SIGKILL under load")
    await _sigkill(ctx, result)
    assert ctx.target.group is not None
    await ctx.sim.latency(0)
    ctx.progress(1, 3, "Redis down and back")
    redis = ctx.target.group.redis()
    redis.start(None)
    limits = {f"{ctx.target.isolation.tenant}-limited": {"requests_per_minute": REPLICA_LIMIT}}
    env = {
        "EXAI_CALL_DEADLINE_SECONDS": str(DEADLINE_S),
        "EXAI_REDIS_URL": f"redis://127.0.0.1:{redis.port}/{ctx.target.isolation.redis_db}",
        "EXAI_TENANT_LIMITS": json.dumps(limits),
    }
    daemon = ctx.target.daemon("faults-redis", "sqlite", **env)
    await _outage(ctx, result, "redis", daemon, lambda: redis.stop(signal.SIGKILL), lambda: _restart(redis), calls)
    ctx.target.stop_daemon(daemon)
    ctx.progress(2, 3, "PostgreSQL down and back")
    cluster = await asyncio.to_thread(ctx.target.group.postgres)
    env = {"EXAI_CALL_DEADLINE_SECONDS": str(DEADLINE_S), "EXAI_DATABASE_URL": cluster.url}
    daemon = ctx.target.daemon("faults-postgres", "sqlite", **env)
    await _outage(ctx, result, "postgres", daemon, cluster.stop, cluster.start, calls)
    ctx.target.stop_daemon(daemon)
