"""The load scenario's capacity steps against real processes (the simulator, `exai serve`, nginx), at small scale:
the knee is the last step within the bound; past it the steps go on, for the throughput, until one has errors; and
the three-replica path goes through a real nginx to every replica and stops all of it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

from exai.observability.metrics import Metrics
from exai.stress import capacity
from exai.stress.balancer import nginx_binary
from exai.stress.capacity import Deployment, find_knee, overhead_split
from exai.stress.context import Context
from exai.stress.metrics import parse
from exai.stress.results import Sample
from exai.stress.sim import SimControl
from exai.stress.target import LOCAL_POSTGRES, LOCAL_REDIS_HOST, Isolation, Target, local_target
from tests.test_stress import _alive, _descendants

# real daemons (and nginx) started by the stress target: slow, and a generous bound for a busy machine
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(900), pytest.mark.stress, pytest.mark.slow]
LOOSE_BOUND_MS = 60_000.0  # these tests judge the search, not this machine's latency: errors decide, or bound 0


@pytest.fixture
async def ctx() -> AsyncIterator[Context]:
    target = await asyncio.to_thread(local_target, "sqlite", Isolation.chosen(None, None))
    sim = SimControl(target.sim_url)
    context = Context(target, sim, quick=True, soak_seconds=20)
    try:
        yield context
    finally:
        await sim.close()
        await asyncio.to_thread(target.close)


def test_the_overhead_is_split_from_the_histograms_sums() -> None:
    """The mean and its parts come from real /metrics text: only the waits inside a call count (a call's record is
    finished after its answer, its slot released while its turns are written, a session's count is no call's)."""
    before, metrics = Metrics(), Metrics()
    for seconds in (0.003, 0.005):
        metrics.gateway_overhead.labels("chat").observe(seconds)
    metrics.storage_latency.labels("create_call").observe(0.0004)
    metrics.storage_latency.labels("append_turns").observe(0.0006)
    metrics.storage_latency.labels("finish_call").observe(0.5)
    metrics.limiter_latency.labels("acquire").observe(0.0003)
    metrics.limiter_latency.labels("release").observe(0.0002)
    metrics.limiter_latency.labels("count").observe(0.3)
    split = overhead_split([parse(metrics.render().decode())], [parse(before.render().decode())])
    assert split == {"mean": 4.0, "store": 0.5, "limiter": 0.15, "rest": 3.35}
    assert overhead_split([parse(before.render().decode())], [parse(before.render().decode())]) == {}


def _sim_pid(target: Target) -> int:
    assert target.sim_pid is not None
    return target.sim_pid


async def test_the_knee_is_the_last_step_without_errors(ctx: Context) -> None:
    """At most 6 calls at once for the tenant: 1 call/s on a 500 ms upstream fits, 40 calls/s cannot (refusals)."""
    daemon = await asyncio.to_thread(ctx.target.daemon, "knee", EXAI_RATE_LIMIT_CONCURRENCY="6")
    await ctx.sim.latency(500)
    samples: list[Sample] = []
    found = await find_knee(
        ctx, Deployment.single(daemon), _sim_pid(ctx.target), [1.0, 40.0, 80.0], 4.0, samples, LOOSE_BOUND_MS
    )
    steps = found.steps
    assert len(steps) == 2, "the search stops at the first step with errors"
    assert found.knee is steps[0] and steps[0].errors == 0 and steps[0].calls >= 4, steps[0]
    assert found.throughput is steps[0], "a step with errors is no throughput"
    assert steps[1].errors > 0 and {s.category for s in samples if not s.ok} == {"rate_limit"}, steps[1]
    assert steps[0].daemon_cpu_ms_per_call > 0 and steps[0].calls_by_replica == [steps[0].calls], steps[0]


async def test_past_the_overhead_bound_the_steps_go_on_for_the_throughput(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a bound of 0 ms no step is a knee, but both steps run without errors: the last is the throughput. (How
    far behind the offered rate a step may fall is a wall-clock measure, judged in tests/test_capacity_search.py;
    here any step without errors keeps up, so a slow machine cannot decide the test.)"""
    monkeypatch.setattr(capacity, "KEPT_UP", 0.0)
    daemon = await asyncio.to_thread(ctx.target.daemon, "bound")
    await ctx.sim.latency(50)
    found = await find_knee(ctx, Deployment.single(daemon), _sim_pid(ctx.target), [0.5, 1.0], 8.0, [], 0.0)
    assert found.knee is None and len(found.steps) == 2, found.steps
    assert found.throughput is found.steps[1], found
    first = found.steps[0]
    assert first.errors == 0 and first.overhead_p95_ms is not None and first.overhead_p95_ms > 0


async def test_three_replicas_behind_nginx_take_the_load_and_are_all_stopped(ctx: Context) -> None:
    if nginx_binary() is None:
        _unavailable("nginx is not installed (apt-get install nginx-light)")
    if not (_reachable(LOCAL_POSTGRES) and _reachable(LOCAL_REDIS_HOST)):
        _unavailable("the replicas share PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379, which are not up")
    replicas = await asyncio.to_thread(ctx.target.replicas, "cap", 3)
    balancer = replicas.balancer.process
    assert balancer is not None, "the balancer was started"
    started = {balancer.pid} | _descendants(balancer.pid)  # master and worker
    conf = await asyncio.to_thread(Path(replicas.balancer.args[replicas.balancer.args.index("-c") + 1]).read_text)
    assert "limit_req zone=" not in conf.split("server {")[1].split("#")[0], "no per-address limit for the run"
    await ctx.sim.latency(50)
    samples: list[Sample] = []
    deployment = Deployment.behind_nginx(replicas)
    found = await find_knee(ctx, deployment, _sim_pid(ctx.target), [6.0], 4.0, samples, LOOSE_BOUND_MS)
    steps, knee = found.steps, found.knee
    assert knee is steps[0] and knee.errors == 0, (knee, [s for s in samples if not s.ok][:5])
    assert len(knee.calls_by_replica) == 3 and all(n > 0 for n in knee.calls_by_replica), knee.calls_by_replica
    assert sum(knee.calls_by_replica) >= knee.calls and knee.storage_p95_ms is not None
    assert knee.loop_lag_p95_ms is not None, "the daemons' event-loop lag is read beside the store's"
    assert knee.balancer_cpu_ms_per_call is not None
    split = knee.overhead_split_ms  # the waits are timed inside the overhead they are part of
    assert split["store"] > 0 and split["limiter"] > 0 and split["store"] + split["limiter"] <= split["mean"], split
    await asyncio.to_thread(ctx.target.stop_replicas, replicas)
    assert len(started) >= 2 and not [pid for pid in started if _alive(pid)], "nginx's master and worker are gone"
    assert not any(d.managed is not None and d.managed.running for d in replicas.daemons)


def _unavailable(reason: str) -> NoReturn:
    """In CI the services are there: a skip would hide a broken path."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    with contextlib.suppress(OSError), socket.create_connection((parts.hostname, parts.port), timeout=2):
        return True
    return False
