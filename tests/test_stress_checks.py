"""The stress run's own checks can fail, and its fence holds: each test makes one check fail against real processes
(the simulator and `exai serve` started by the stress code itself), or proves what a scenario started is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.html import render_html
from exai.stress.results import Sample, ScenarioResult
from exai.stress.runner import _remember_interrupts, run_scenario
from exai.stress.scenarios import faults, recovery, soak
from exai.stress.sim import SimControl
from exai.stress.target import Isolation, Target, local_target
from exai.stress.workload import operation, workflow_step
from tests.helpers import wait_until

# each test starts the simulator and a daemon: slow on a busy machine
pytestmark = [pytest.mark.timeout(600), pytest.mark.stress, pytest.mark.slow]


@pytest.fixture
async def target(redis_url: str) -> AsyncIterator[Target]:
    built = await asyncio.to_thread(local_target, "sqlite", Isolation.chosen(None, None))
    try:
        yield built
    finally:
        await asyncio.to_thread(built.close)


@pytest.fixture
async def ctx(target: Target) -> AsyncIterator[Context]:
    sim = SimControl(target.sim_url)
    context = Context(target, sim, quick=True, soak_seconds=20)
    context.progress = lambda done, total, note: setattr(context, "where", note)
    try:
        yield context
    finally:
        await sim.close()


def _scenario(run: Any) -> Any:
    return SimpleNamespace(NAME="probe", SUMMARY="a probe scenario", CRITERION="none", run=run)


@pytest.mark.anyio
async def test_a_scenario_out_of_time_fails_with_its_reason_and_leaves_nothing_running(ctx: Context) -> None:
    held: dict[str, Any] = {}

    async def run(ctx: Context, result: ScenarioResult) -> None:
        held["stray"] = subprocess.Popen(["sleep", "600"])  # noqa: ASYNC220 (outside the process group: found anyway)
        held["daemon"] = ctx.target.daemon("fenced")  # blocking: the 1 s ceiling passes meanwhile
        ctx.progress(1, 2, "holding a daemon")
        await asyncio.sleep(3600)

    result, leftovers = await run_scenario(ctx, _scenario(run), ceiling=1.0)
    timed_out = next(c for c in result.checks if c.name == "finished in time")
    assert not timed_out.passed and "ran out of time during 'holding a daemon'" in timed_out.measured
    assert leftovers == [] and not held["daemon"].managed.running
    assert held["stray"].poll() is not None, "a child the scenario started outside the group was stopped too"
    assert next(c for c in result.checks if c.name == "stopped what it started").passed


@pytest.mark.anyio
async def test_an_interrupted_scenario_stops_its_daemon(ctx: Context) -> None:
    held: dict[str, Any] = {}

    async def run(ctx: Context, result: ScenarioResult) -> None:
        held["daemon"] = ctx.target.daemon("interrupted")
        await asyncio.sleep(3600)

    task = asyncio.create_task(run_scenario(ctx, _scenario(run), ceiling=3600))
    await wait_until(lambda: "daemon" in held, "the daemon is up", ceiling=180)
    task.cancel()  # what Ctrl-C (and SIGTERM, turned into SIGINT) does to the run
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not held["daemon"].managed.running


@pytest.mark.anyio
async def test_paid_then_failed_counts_a_call_the_simulator_answered_but_the_client_lost(ctx: Context) -> None:
    """A consensus whose second model fails: sim-fast answered (paid), the call failed for its client."""

    async def run(ctx: Context, result: ScenarioResult) -> None:
        daemon = ctx.target.daemon("paid")
        await ctx.sim.reset()
        await ctx.sim.fault("503", model="sim-smart")
        async with session(daemon.mcp_url, ctx.target.token) as client:
            outcomes, _ = await operation(client, "consensus", "paid", None, ctx.epoch, 120)
        result.samples += [o.sample for o in outcomes]

    result, _ = await run_scenario(ctx, _scenario(run), ceiling=300)
    paid = next(c for c in result.checks if c.name == "paid, then failed")
    assert not paid.passed and paid.measured.startswith("1 of 1 failed calls"), paid


@pytest.mark.anyio
async def test_redis_checks_fail_when_the_limiter_is_not_degraded_and_nothing_is_limited(ctx: Context) -> None:
    """Redis up: the degraded-state checks must say so; a tenant without a limit: the limit check must fail."""
    daemon = await asyncio.to_thread(
        ctx.target.daemon, "redis-up", "sqlite", EXAI_REDIS_URL=ctx.target.isolation.redis_url
    )
    degraded = await faults.limiter_degraded(ctx, daemon)
    admitted, limited = await faults.limit_burst(ctx, daemon, f"{ctx.target.isolation.tenant}-unlimited")
    result = ScenarioResult("faults", "", "")
    faults.judge_redis_down(result, degraded, admitted, limited, faults.REPLICA_LIMIT + 3)
    assert degraded == (False, False)
    assert [c.passed for c in result.checks] == [False, False, False], result.checks


@pytest.mark.anyio
async def test_the_soak_fails_on_errors_of_any_category(ctx: Context) -> None:
    """Errors from a failing upstream are neither internal nor transport errors: the soak still fails on them."""
    result = ScenarioResult(soak.NAME, soak.SUMMARY, soak.CRITERION)
    task = asyncio.create_task(soak.run(ctx, result))
    await wait_until(lambda: len(result.samples) > 0, "the soak's first calls", ceiling=180)
    await ctx.sim.fault("503")  # every model, from now on
    await task
    errors = next(c for c in result.checks if c.name == "errors (every category)")
    assert not errors.passed and not any(s.category.startswith(("internal", "hang", "client:")) for s in result.samples)


@pytest.mark.anyio
async def test_recovery_read_back_finds_a_missing_step_and_an_unknown_thread(ctx: Context) -> None:
    daemon = await asyncio.to_thread(ctx.target.daemon, "read-back")
    async with session(daemon.mcp_url, ctx.target.token) as client:
        first = await call(client, "debug", workflow_step(1, 2, None, "short"), ctx.epoch)
        thread = first.data["continuation_id"]
        await call(client, "debug", workflow_step(2, 2, thread, "short"), ctx.epoch)
    stored = await recovery.steps_in_store(ctx, daemon, [thread, "no-such-thread"])
    assert stored[thread][0] == {1, 2}
    result = ScenarioResult("recovery", "", "")
    recovery.judge_read_back(result, stored, 2)  # recovery's workflows have 3 steps: step 3 is missing here,
    measured = result.checks[0].measured  # and all three of the thread that does not exist
    assert not result.checks[0].passed and measured.startswith("4 steps missing, 1 workflows not complete"), measured


def test_the_report_shows_full_counts_why_it_failed_and_no_raw_json() -> None:
    result = ScenarioResult("soak", "summary", "criterion")
    result.check("errors (every category)", "0", "5,404: storage 5,404", False)
    result.figures["errors_by_category"] = {"storage": 5404}
    result.samples = []
    scenario = result.to_json()
    scenario["series"]["errors_by_category"] = {"storage": 5404}
    machine = {"cpus": 2, "python": "3.11", "load_average_before": 1.5, "load_average_after": 2.0}
    report = {
        "command": "exai stress --quick soak",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "target": "local",
        "storage": "sqlite",
        "quick": True,
        "machine": machine,
        "duration_s": 12.0,
        "passed": False,
        "scenarios": [scenario],
    }
    page = render_html(report)
    assert "Why it failed" in page and "errors (every category): measured 5,404: storage 5,404" in page
    assert ">5,404</text>" in page, "the bar's count is written in full"
    assert page.index("Quick mode") < page.index("Why it failed"), "quick-mode notes at the top"
    assert '{"' not in page and "<pre>" not in page, "figures are tables, not a JSON dump"
    assert "CPU cores" in page and "load average (1 min) before the run" in page


def test_the_soak_trend_shows_growth_per_window() -> None:
    """The trend cuts the run into windows: calls, errors and latency per window, and the resources read in it."""
    samples = [Sample(t=t, ms=100.0 + t, ok=t != 650) for t in range(0, 1800, 10)]
    readings = [(float(t), 200.0 + t / 60, 70.0 + t // 600) for t in range(0, 1800, 30)]
    loads = [(float(t), 1.0 + t // 600) for t in range(0, 1800, 30)]
    rows = soak.trend(samples, readings, loads, 600)
    assert [r["calls"] for r in rows] == [60, 60, 60]
    assert [r["errors"] for r in rows] == [0, 1, 0]
    assert [r["open_fds"] for r in rows] == [70.0, 71.0, 72.0]
    assert [r["load_average"] for r in rows] == [1.0, 2.0, 3.0]
    rss = cast(list[float], [r["rss_mb"] for r in rows])  # every window read the RSS (sorted() fails on None)
    assert rss == sorted(rss) and rss[0] != rss[-1], rss  # a slope, window by window


def test_an_interrupt_is_remembered_when_a_scenario_swallows_the_cancellation() -> None:
    """Ctrl-C cancels the run; code on the way that swallows the CancelledError must not turn the interrupted run
    into a finished one (the full suite once saw `exai stress` exit 0 with PASS after its SIGINT)."""

    async def run() -> int:
        heard = _remember_interrupts()
        try:
            with contextlib.suppress(asyncio.CancelledError):  # a scenario that swallows the cancellation
                signal.raise_signal(signal.SIGINT)
                await asyncio.sleep(30)
            return heard.count
        finally:
            signal.signal(signal.SIGINT, heard.previous)

    # asyncio.run turns SIGINT into a cancellation only where it finds Python's default handler; a process started
    # as a background job of a non-interactive shell (as CI starts the suite) inherits SIGINT ignored instead, and
    # the sleep then ran its full 30 s.
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert asyncio.run(run()) == 1
    finally:
        signal.signal(signal.SIGINT, earlier)


def _soak_result(calls: int, seconds: float) -> ScenarioResult:
    result = ScenarioResult(soak.NAME, soak.SUMMARY, soak.CRITERION)
    result.samples = [Sample(t=seconds * (n + 1) / calls, ms=100.0, ok=True) for n in range(calls)]
    return result


def test_the_soak_judges_memory_once_caches_have_filled_not_after_its_first_seconds() -> None:
    """The 2.5-hour soak's shape: RSS rose 238 -> 254 MB (+6.7%) over the first 37% of its calls, then stayed flat
    for 90 minutes. That is warm-up, not a leak: judged after the first 2,000 calls it failed (+5.8%)."""
    result = _soak_result(200_000, 9000.0)
    readings = [(float(t), 238.0 + 16.0 * min(t, 3330) / 3330, 72.0) for t in range(0, 9000, 5)]
    soak.judge_memory(result, readings, judged=True)
    growth = next(c for c in result.checks if c.name == "RSS growth")
    assert growth.passed, growth.measured
    assert result.figures["warm_up_calls"] == 66_666


def test_the_soak_fails_a_leak_that_grows_with_every_call() -> None:
    result = _soak_result(200_000, 9000.0)
    readings = [(float(t), 240.0 + t / 300, 72.0 + t // 600) for t in range(0, 9000, 5)]
    soak.judge_memory(result, readings, judged=True)
    failed = {c.name for c in result.checks if not c.passed}
    assert failed == {"RSS growth", "open files flat"}, [(c.name, c.measured) for c in result.checks]


def test_the_soak_does_not_judge_memory_without_a_reading_after_warm_up() -> None:
    result = _soak_result(1_500, 30.0)
    soak.judge_memory(result, [(float(t), 240.0, 72.0) for t in range(30)], judged=True)
    assert [(c.name, c.passed) for c in result.checks] == [("RSS growth and open files", False)]
