"""Capacity: step an open-loop offered rate until the daemon's own overhead passes its bound or errors appear.

The knee is the highest offered rate at which the daemon still met its bound with no error; where the time goes is
told by CPU time per call of the daemon, the simulator and the clients (from /proc and getrusage) at each step.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx2

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.metrics import histogram_quantile, scrape
from exai.stress.results import Sample
from exai.stress.target import Daemon
from exai.stress.worker import run_workers
from exai.stress.workload import LoadPlan

TICKS = os.sysconf("SC_CLK_TCK")
CALL_CEILING_SECONDS = 150.0  # past the daemon's 120 s call deadline: an overloaded daemon answers before we give up


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a living process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _clients_cpu() -> float:
    """This process plus its finished (reaped) children: the stress run's client side."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Step:
    offered_per_s: float
    completed_per_s: float
    calls: int
    errors: int
    overhead_p50_ms: float | None
    overhead_p95_ms: float | None
    client_p95_ms: float | None
    daemon_cpu_ms_per_call: float
    simulator_cpu_ms_per_call: float
    clients_cpu_ms_per_call: float  # includes starting the client processes (imports): an upper bound
    daemon_cpu_busy: float  # share of one core the daemon used while the step's calls ran

    @property
    def within_bound(self) -> bool:
        return self.errors == 0 and self.overhead_p95_ms is not None and self.overhead_p95_ms <= OVERHEAD_P95_MS


OVERHEAD_P95_MS = 5.0
WARM_UP_CALLS = 100


async def step(
    ctx: Context, daemon: Daemon, sim_pid: int, rate: float, seconds: float, processes: int, samples: list[Sample]
) -> Step:
    """Offer `rate` new chats per second for `seconds`; what the daemon and the machine did with them."""
    assert daemon.managed is not None and daemon.managed.process is not None
    daemon_pid = daemon.managed.process.pid
    plan = LoadPlan(
        url=daemon.mcp_url,
        sessions=4 * processes,
        slots_per_session=1,
        operations_per_slot=0,
        duration=seconds,
        token=ctx.target.token,
        prefix=f"cap-{rate:.0f}-{int(time.time())}",
        ceiling=CALL_CEILING_SECONDS,
        rate=rate,
    )
    own: list[Sample] = []
    async with httpx2.AsyncClient(headers=ctx.admin_headers()) as http:
        before = await scrape(http, daemon.url)
        cpu = (cpu_seconds(daemon_pid), cpu_seconds(sim_pid), _clients_cpu(), time.monotonic())
        ceiling = seconds + CALL_CEILING_SECONDS + 120
        try:
            await run_workers(processes, plan, ctx.epoch, own.append, ceiling=ceiling)
            unfinished = 0
        except TimeoutError:  # the step's calls did not all finish: the daemon is far past its knee
            unfinished = max(0, round(rate * seconds) - len(own))
        after = await scrape(http, daemon.url)
    # the calls' own span (first sent to last finished): the client processes' start-up is not the daemon's time
    span = max(s.t for s in own) - min(s.t - s.ms / 1000 for s in own) if own else time.monotonic() - cpu[3]
    daemon_cpu = cpu_seconds(daemon_pid) - cpu[0]
    sim_cpu = cpu_seconds(sim_pid) - cpu[1]
    clients_cpu = _clients_cpu() - cpu[2]
    samples += own
    buckets = after.bucket_delta(before, "exai_gateway_overhead_seconds")
    ok = sorted(s.ms for s in own if s.ok)
    calls = max(1, len(own))

    def ms(value: float | None) -> float | None:
        return round(value * 1000, 2) if value is not None else None

    return Step(
        offered_per_s=round(rate, 1),
        completed_per_s=round(len(own) / max(span, seconds), 1),
        calls=len(own),
        errors=sum(not s.ok for s in own) + unfinished,  # calls still unanswered at the step's ceiling count
        overhead_p50_ms=ms(histogram_quantile(buckets, 0.5)),
        overhead_p95_ms=ms(histogram_quantile(buckets, 0.95)),
        client_p95_ms=round(ok[min(len(ok) - 1, int(0.95 * len(ok)))], 1) if ok else None,
        daemon_cpu_ms_per_call=round(daemon_cpu * 1000 / calls, 2),
        simulator_cpu_ms_per_call=round(sim_cpu * 1000 / calls, 2),
        clients_cpu_ms_per_call=round(clients_cpu * 1000 / calls, 2),
        daemon_cpu_busy=round(daemon_cpu / span, 2) if span > 0 else 0.0,
    )


async def warm_up(ctx: Context, daemon: Daemon, calls: int) -> None:
    """First-call costs (imports, pools, caches) paid before any step is measured: counted in calls, not seconds."""
    sessions = 4
    queue = iter(range(calls))

    async def worker() -> None:
        async with session(daemon.mcp_url, ctx.target.token) as client:
            for n in queue:
                await call(client, "chat", {"prompt": f"warm-up {n}", "model": "sim-fast"}, ctx.epoch, 120)

    await asyncio.gather(*(worker() for _ in range(sessions)))


async def find_knee(
    ctx: Context, daemon: Daemon, sim_pid: int, rates: list[float], seconds: float, samples: list[Sample]
) -> tuple[list[Step], Step | None]:
    """Step through `rates` until a step misses the bound (overhead p95 > 5 ms, or any error); the knee is the last
    step that met it (None when even the first did not)."""
    steps: list[Step] = []
    knee: Step | None = None
    ctx.progress(0, len(rates), "capacity: warm-up")
    await warm_up(ctx, daemon, ctx.scale(WARM_UP_CALLS, 20))
    for number, rate in enumerate(rates):
        ctx.progress(number, len(rates), f"capacity: offering {rate:.0f} calls/s")
        done = await step(ctx, daemon, sim_pid, rate, seconds, processes=2, samples=samples)
        steps.append(done)
        if not done.within_bound:
            break
        knee = done
    return steps, knee


def steps_json(steps: list[Step]) -> list[dict[str, object]]:
    return [asdict(s) for s in steps]
