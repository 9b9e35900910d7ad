"""recovery: workflows hit by an expert 5xx, an expert hanging past the deadline, and a daemon restart."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from mcp import Client

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.results import ScenarioResult
from exai.stress.target import Daemon
from exai.stress.workload import workflow_step

NAME = "recovery"
SUMMARY = (
    "Three-step debug workflows; in one group the expert call gets 503s, in another it hangs past the call's "
    "deadline, in a third the daemon is restarted between steps. Each workflow is resumed with its continuation_id."
)
CRITERION = (
    "100% of workflows complete; every thread is read back from the store afterwards and holds every step "
    "(1..3) and a complete workflow (0 lost)."
)
STEPS = 3
RESUME_ATTEMPTS = 5
STEP_TEXT = re.compile(r"^\[debug step (\d+)/")


async def steps_in_store(ctx: Context, daemon: Daemon, threads: list[str]) -> dict[str, tuple[set[int], str]]:
    """Each thread as the store has it (`threads show`): the step numbers of its recorded turns and the workflow's
    status; a thread that cannot be read has no steps."""
    found: dict[str, tuple[set[int], str]] = {}
    async with session(daemon.mcp_url, ctx.target.token) as client:
        for thread in threads:
            shown = await call(client, "threads", {"action": "show", "thread_id": thread, "limit": 100}, ctx.epoch)
            turns = shown.data.get("turns", []) if shown.sample.ok else []
            steps = {
                int(m.group(1))
                for t in turns
                if t.get("role") == "user" and (m := STEP_TEXT.match(str(t.get("content", ""))))
            }
            found[thread] = (steps, str(shown.data.get("workflows", {}).get("debug", "missing")))
    return found


def judge_read_back(result: ScenarioResult, stored: dict[str, tuple[set[int], str]], expected: int) -> None:
    """Every acknowledged workflow must be in the store with all its steps and complete."""
    wanted = set(range(1, STEPS + 1))
    lost = sum(len(wanted - steps) for steps, _ in stored.values()) + STEPS * (expected - len(stored))
    incomplete = sum(status != "complete" for _, status in stored.values())
    result.figures["threads read back"] = len(stored)
    result.check(
        "acknowledged steps lost (read back from the store)",
        "0",
        f"{lost} steps missing, {incomplete} workflows not complete, {len(stored)}/{expected} threads read",
        lost == 0 and incomplete == 0 and len(stored) == expected,
    )


async def _steps(
    daemon: Daemon, ctx: Context, result: ScenarioResult, threads: list[str | None], first: int, last: int
) -> None:
    """Send steps first..last (no expert call before the final step) of every workflow, concurrently."""

    async def one(index: int) -> None:
        async with session(daemon.mcp_url, ctx.target.token) as client:
            for number in range(first, last + 1):
                args = workflow_step(number, STEPS, threads[index], f"recovery {index}")
                done = await call(client, "debug", args, ctx.epoch, ceiling=120)
                result.samples.append(done.sample)
                if done.sample.ok:
                    threads[index] = done.data["continuation_id"]

    await asyncio.gather(*(one(i) for i in range(len(threads))))


async def _final(
    daemon: Daemon, ctx: Context, result: ScenarioResult, threads: list[str | None], expect_failure: bool
) -> list[dict[str, Any]]:
    """The last step (the expert call) of every workflow. With a fault on, each must fail with a resumable error;
    without, each is resumed the way a client does: again after the `retry_in_seconds` an open breaker names."""

    async def one(client: Client, index: int) -> dict[str, Any]:
        args = workflow_step(STEPS, STEPS, threads[index], f"recovery {index}")
        for _ in range(RESUME_ATTEMPTS):
            outcome = await call(client, "debug", args, ctx.epoch, ceiling=120)
            if expect_failure:
                return {"resumable": not outcome.sample.ok and "continuation_id" in outcome.data.get("details", {})}
            result.samples.append(outcome.sample)
            wait = outcome.data.get("details", {}).get("retry_in_seconds")
            if outcome.sample.ok or wait is None:
                return outcome.data
            await asyncio.sleep(min(float(wait), 30.0) + 0.2)
        return outcome.data

    async with session(daemon.mcp_url, ctx.target.token) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(len(threads)))))


async def run(ctx: Context, result: ScenarioResult) -> None:
    per_group = ctx.scale(20, 4)
    deadline = ctx.seconds(10, 4)
    local = ctx.target.local
    daemon = ctx.target.daemon("recovery", EXAI_CALL_DEADLINE_SECONDS=str(deadline), EXAI_BREAKER_COOLDOWN_SECONDS="2")
    await ctx.sim.reset()
    groups = ["expert 503", "expert hang past the deadline", "daemon restart"] if local else ["expert 503"]
    if not local:
        result.notes.append("remote target: the hang and restart groups need a local daemon and were not run")
    completed = total = resumable = failed_as_asked = 0
    acknowledged: list[str] = []
    for number, group in enumerate(groups):
        ctx.progress(number, len(groups), group)
        threads: list[str | None] = [None] * per_group
        if group == "daemon restart":
            await _steps(daemon, ctx, result, threads, 1, 1)
            result.figures["restart_to_ready_s"] = round(daemon.restart(), 2)
            await _steps(daemon, ctx, result, threads, 2, STEPS - 1)
        else:
            await _steps(daemon, ctx, result, threads, 1, STEPS - 1)
            await ctx.sim.fault("503" if group == "expert 503" else "hang", model="sim-smart")
            started = time.monotonic()
            failures = await _final(daemon, ctx, result, threads, expect_failure=True)
            result.figures[f"{group}: longest failing call s"] = round(time.monotonic() - started, 1)
            await ctx.sim.clear_faults()
            failed_as_asked += len(failures)
            resumable += sum(f["resumable"] for f in failures)
        finals = await _final(daemon, ctx, result, threads, expect_failure=False)
        for answer in finals:
            total += 1
            done = answer.get("status") == "complete"
            completed += done
            if done:
                acknowledged.append(str(answer["continuation_id"]))
    result.figures |= {"workflows": total, "completed": completed, "deadline_s": deadline}
    result.check("workflows completed", "100%", f"{completed}/{total}", total > 0 and completed == total)
    ctx.progress(len(groups), len(groups), "reading every thread back")
    judge_read_back(result, await steps_in_store(ctx, daemon, acknowledged), len(acknowledged))
    result.check(
        "failures were resumable",
        "every failed step names its continuation_id",
        f"{resumable}/{failed_as_asked}",
        resumable == failed_as_asked,
    )
    ctx.target.stop_daemon(daemon)
