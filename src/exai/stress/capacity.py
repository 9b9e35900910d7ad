"""Capacity: step an open-loop offered rate until the daemons' own overhead passes its bound or errors appear.

The load goes to one daemon or to replicas behind nginx. The knee is the highest offered rate at which the daemons
still met the bound with no error; where the time goes is told by CPU time per call of the daemons, nginx, the
simulator and the clients (from /proc and getrusage) at each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx2

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.metrics import Scrape, histogram_quantile, scrape
from exai.stress.results import Sample
from exai.stress.target import Daemon, Replicas
from exai.stress.worker import run_workers
from exai.stress.workload import LoadPlan

TICKS = os.sysconf("SC_CLK_TCK")
OVERHEAD_P95_MS = 5.0
WARM_UP_CALLS = 100
KEPT_UP = 0.75  # a step whose calls complete slower than this share of the offered rate is saturated
CALL_CEILING_SECONDS = 150.0  # past the daemon's client wait (45 s, then a pending answer): it answers first


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a living process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def family_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its living children (nginx: the master and its worker, which does the work)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children)


def _clients_cpu() -> float:
    """This process plus its finished (reaped) children: the stress run's client side."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Deployment:
    """What the offered load goes to: one daemon, or replicas behind a balancer (whose CPU is counted apart)."""

    label: str
    mcp_url: str
    daemons: list[Daemon]
    balancer_pid: int | None = None

    @classmethod
    def single(cls, daemon: Daemon) -> Deployment:
        return cls("1 replica", daemon.mcp_url, [daemon])

    @classmethod
    def behind_nginx(cls, replicas: Replicas) -> Deployment:
        pid = replicas.balancer.process.pid if replicas.balancer.process is not None else None
        return cls(f"{len(replicas.daemons)} replicas behind nginx", replicas.mcp_url, replicas.daemons, pid)

    @property
    def pids(self) -> list[int]:
        return [d.managed.process.pid for d in self.daemons if d.managed is not None and d.managed.process is not None]


@dataclass
class Step:
    offered_per_s: float
    completed_per_s: float
    calls: int
    errors: int
    overhead_p50_ms: float | None
    overhead_p95_ms: float | None
    client_p95_ms: float | None
    storage_p95_ms: float | None  # the store's operations (part of the overhead): PostgreSQL on a busy machine
    loop_lag_p95_ms: float | None  # the daemons' event-loop lag: part of every wait above, the store's included
    daemon_cpu_ms_per_call: float  # all replicas together
    simulator_cpu_ms_per_call: float
    clients_cpu_ms_per_call: float  # includes starting the client processes (imports): an upper bound
    daemon_cpu_busy: float  # cores the daemons (all replicas) used while the step's calls ran
    balancer_cpu_ms_per_call: float | None = None  # nginx, when there is one
    calls_by_replica: list[int] = field(default_factory=list)  # tool calls each replica counted in its /metrics
    overhead_split_ms: dict[str, float] = field(default_factory=dict)  # the mean overhead per call and where it went

    def within(self, bound_ms: float = OVERHEAD_P95_MS) -> bool:
        return self.errors == 0 and self.overhead_p95_ms is not None and self.overhead_p95_ms <= bound_ms

    def kept_up(self) -> bool:
        """No error, and the calls completed at no less than KEPT_UP of the rate offered: a queue may build at such a
        step (the clients' p95 says how long), but the deployment still carries the rate."""
        return self.errors == 0 and self.completed_per_s >= KEPT_UP * self.offered_per_s


async def _scrape_all(http: httpx2.AsyncClient, deployment: Deployment) -> list[Scrape]:
    return list(await asyncio.gather(*(scrape(http, d.url) for d in deployment.daemons)))


def _summed(after: list[Scrape], before: list[Scrape], histogram: str) -> dict[float, float]:
    total: dict[float, float] = {}
    for now, then in zip(after, before, strict=True):
        for bound, count in now.bucket_delta(then, histogram).items():
            total[bound] = total.get(bound, 0.0) + count
    return total


STORE_WAITS = ("read_thread", "append_turns", "create_call")
"""The store operations a call's answer waits for (a call's record is finished after its answer went out)."""
LIMITER_WAITS = ("acquire", "reserve_tokens")
"""The limiter's round trips a call's answer waits for: its admission, and a token reservation its prepayment did
not cover (the release and settlement go out while the call's turns are written; a new session's count is not
part of any call)."""


def overhead_split(after: list[Scrape], before: list[Scrape]) -> dict[str, float]:
    """The daemons' mean overhead per call (exact, from the histograms' sums) and its parts: waiting for the store,
    for the limiter's Redis, and the rest (the daemon's own work on the call's path, and its wait for the CPU)."""

    def total(name: str) -> float:
        return sum(now.delta(then, name) for now, then in zip(after, before, strict=True))

    calls = total("exai_gateway_overhead_seconds_count")
    if not calls:
        return {}
    mean = total("exai_gateway_overhead_seconds_sum") / calls
    store = sum(total(f"exai_storage_latency_seconds_sum:{operation}") for operation in STORE_WAITS) / calls
    limiter = sum(total(f"exai_limiter_latency_seconds_sum:{operation}") for operation in LIMITER_WAITS) / calls
    parts = {"mean": mean, "store": store, "limiter": limiter, "rest": mean - store - limiter}
    return {part: round(seconds * 1000, 2) for part, seconds in parts.items()}


async def step(
    ctx: Context,
    deployment: Deployment,
    sim_pid: int,
    rate: float,
    seconds: float,
    processes: int,
    samples: list[Sample],
) -> Step:
    """Offer `rate` new chats per second for `seconds`; what the daemons and the machine did with them."""
    pids = deployment.pids
    plan = LoadPlan(
        url=deployment.mcp_url,
        sessions=4 * processes,
        slots_per_session=1,
        operations_per_slot=0,
        duration=seconds,
        token=ctx.target.token,
        prefix=f"cap-{rate:.0f}-{int(time.time())}",
        ceiling=CALL_CEILING_SECONDS,
        rate=rate,
    )
    balancer = deployment.balancer_pid
    own: list[Sample] = []
    async with httpx2.AsyncClient(headers=ctx.admin_headers()) as http:
        before = await _scrape_all(http, deployment)
        cpu = (
            sum(cpu_seconds(p) for p in pids),
            cpu_seconds(sim_pid),
            _clients_cpu(),
            time.monotonic(),
            family_cpu_seconds(balancer) if balancer else 0.0,
        )
        ceiling = seconds + CALL_CEILING_SECONDS + 120
        try:
            await run_workers(processes, plan, ctx.epoch, own.append, ceiling=ceiling)
            unfinished = 0
        except TimeoutError:  # the step's calls did not all finish: the daemon is far past its knee
            unfinished = max(0, round(rate * seconds) - len(own))
        after = await _scrape_all(http, deployment)
    # the calls' own span (first sent to last finished): the client processes' start-up is not the daemon's time
    span = max(s.t for s in own) - min(s.t - s.ms / 1000 for s in own) if own else time.monotonic() - cpu[3]
    daemon_cpu = sum(cpu_seconds(p) for p in pids) - cpu[0]
    sim_cpu = cpu_seconds(sim_pid) - cpu[1]
    clients_cpu = _clients_cpu() - cpu[2]
    balancer_cpu = family_cpu_seconds(balancer) - cpu[4] if balancer else None
    samples += own
    buckets = _summed(after, before, "exai_gateway_overhead_seconds")
    ok = sorted(s.ms for s in own if s.ok)
    calls = max(1, len(own))

    def ms(value: float | None) -> float | None:
        return round(value * 1000, 2) if value is not None else None

    def per_call(cpu_s: float) -> float:
        return round(cpu_s * 1000 / calls, 2)

    counted = "exai_tool_calls_total"
    return Step(
        offered_per_s=round(rate, 1),
        completed_per_s=round(len(own) / max(span, seconds), 1),
        calls=len(own),
        errors=sum(not s.ok for s in own) + unfinished,  # calls still unanswered at the step's ceiling count
        overhead_p50_ms=ms(histogram_quantile(buckets, 0.5)),
        overhead_p95_ms=ms(histogram_quantile(buckets, 0.95)),
        client_p95_ms=round(ok[min(len(ok) - 1, int(0.95 * len(ok)))], 1) if ok else None,
        storage_p95_ms=ms(histogram_quantile(_summed(after, before, "exai_storage_latency_seconds"), 0.95)),
        loop_lag_p95_ms=ms(histogram_quantile(_summed(after, before, "exai_event_loop_lag_seconds"), 0.95)),
        overhead_split_ms=overhead_split(after, before),
        daemon_cpu_ms_per_call=per_call(daemon_cpu),
        simulator_cpu_ms_per_call=per_call(sim_cpu),
        clients_cpu_ms_per_call=per_call(clients_cpu),
        daemon_cpu_busy=round(daemon_cpu / span, 2) if span > 0 else 0.0,
        balancer_cpu_ms_per_call=per_call(balancer_cpu) if balancer_cpu is not None else None,
        calls_by_replica=[
            round(a.values.get(counted, 0) - b.values.get(counted, 0)) for a, b in zip(after, before, strict=True)
        ],
    )


async def warm_up(ctx: Context, mcp_url: str, calls: int) -> None:
    """First-call costs (imports, pools, caches) paid before any step is measured: counted in calls, not seconds."""
    sessions = 4
    queue = iter(range(calls))

    async def worker() -> None:
        async with session(mcp_url, ctx.target.token) as client:
            for n in queue:
                await call(client, "chat", {"prompt": f"warm-up {n}", "model": "sim-fast"}, ctx.epoch, 120)

    await asyncio.gather(*(worker() for _ in range(sessions)))


@dataclass
class Capacity:
    """The steps run, the knee (the last of the first steps within the overhead bound, with no error) and the
    throughput (the last step with no error that was within the bound or kept up with the offered rate): None when
    no step was."""

    steps: list[Step]
    knee: Step | None
    throughput: Step | None


async def find_knee(
    ctx: Context,
    deployment: Deployment,
    sim_pid: int,
    rates: list[float],
    seconds: float,
    samples: list[Sample],
    bound_ms: float = OVERHEAD_P95_MS,
) -> Capacity:
    """Step through `rates`: the knee is the last step before the first that misses the bound (overhead p95 over
    `bound_ms`, or an error). Past the knee the steps go on while the deployment keeps up without error, so the run
    also says how many calls/s it carries when its overhead no longer meets the bound (a store whose commits alone
    take longer, say). The first step with an error, or over the bound and
    behind the offered rate, ends the search."""
    steps: list[Step] = []
    knee: Step | None = None
    throughput: Step | None = None
    within = True
    what = f"capacity, {deployment.label}"
    ctx.progress(0, len(rates), f"{what}: warm-up")
    await warm_up(ctx, deployment.mcp_url, ctx.scale(WARM_UP_CALLS, 20))
    for number, rate in enumerate(rates):
        ctx.progress(number, len(rates), f"{what}: offering {rate:.0f} calls/s")
        done = await step(ctx, deployment, sim_pid, rate, seconds, processes=2, samples=samples)
        steps.append(done)
        inside = done.within(bound_ms)
        if not (inside or done.kept_up()):  # an error, or past the bound and falling behind: saturated
            break
        within = within and inside
        if within:
            knee = done
        throughput = done
    return Capacity(steps, knee, throughput)


def steps_json(steps: list[Step]) -> list[dict[str, object]]:
    return [asdict(s) for s in steps]
