"""long: calls that outlive their client, half from task-aware clients and half from clients that know no tasks.

Two daemons share one store; the simulator's `sim-smart` thinks for 90 s (10 s in quick mode) before it answers.
Task-aware clients use the 2026-07-28 Tasks extension and poll `tasks/get` on the *other* daemon; task-unaware
clients give up on a call after 60 s, as most MCP clients do, and follow the pending answer's `next_call`
(`collect`). Midway, one daemon is SIGKILLed: its calls must be reported lost with their reason, never stay
`working`, and every answer a daemon finished must reach its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from typing import Any

import httpx2

from exai.stress.context import Context
from exai.stress.driver import call, describe, mark, session
from exai.stress.results import Sample, ScenarioResult
from exai.stress.target import Daemon

NAME = "long"
SUMMARY = (
    "Calls on a model that thinks for 90 s (quick: 10 s), half from task-aware clients (2026-07-28 Tasks extension, "
    "polled on the other replica) and half from task-unaware clients with a 60 s timeout (answer later, then "
    "`collect`); two daemons share the store and one is SIGKILLed midway."
)
CRITERION = (
    "Every answer is collected, or reported lost with its reason (`call_lost`, its daemon was killed); no answer "
    "is lost whose daemon finished it; nothing stays working; 0 paid-then-failed."
)
EXTENSION = "io.modelcontextprotocol/tasks"
CLIENT_TIMEOUT = 60.0


def _meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "exai-stress-long", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}},
    }


async def _rpc(http: httpx2.AsyncClient, daemon: Daemon, method: str, params: dict[str, Any]) -> dict[str, Any]:
    headers = {
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
        "Accept": "application/json, text/event-stream",
    }
    if name := params.get("name") or params.get("taskId"):
        headers["Mcp-Name"] = str(name)
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": _meta()}}
    response = await http.post(daemon.mcp_url, json=body, headers=headers, timeout=CLIENT_TIMEOUT)
    payload: dict[str, Any] = response.json()
    return payload


async def _task_aware(
    ctx: Context, origin: Daemon, other: Daemon, index: int, think: float, answers: FirstAnswers
) -> tuple[Sample, str]:
    """Start on `origin`, poll on `other` (then `origin`) until the task ends; the outcome as a sample."""
    args, marker = mark({"prompt": f"long task {index}", "model": "sim-smart"})
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {ctx.target.token}"} if ctx.target.token else {}
    status, category = "error", "client"
    async with httpx2.AsyncClient(headers=headers) as http:
        try:
            try:
                created = await _rpc(http, origin, "tools/call", {"name": "chat", "arguments": args})
            finally:
                answers.back()
            result = created.get("result", {})
            if result.get("resultType") != "task":
                status = "completed" if result and not result.get("isError") else "error"
                category = "" if status == "completed" else "tool_error"
            else:
                task_id = result["taskId"]
                deadline = time.monotonic() + think * 3 + 180
                while time.monotonic() < deadline:
                    await asyncio.sleep(max(1.0, result.get("pollIntervalMs", 2000) / 1000))
                    for daemon in (other, origin):  # any replica answers; the killed one does not
                        try:
                            got = (await _rpc(http, daemon, "tasks/get", {"taskId": task_id})).get("result", {})
                            break
                        except httpx2.TransportError:
                            continue
                    else:
                        continue
                    status = got.get("status", "error")
                    if status in ("completed", "failed", "cancelled"):
                        category = {"completed": "", "failed": "lost", "cancelled": "cancelled"}[status]
                        if status == "completed" and got.get("result", {}).get("isError"):
                            category = "tool_error"
                        if status == "failed":  # its replica died: reported lost, with the reason in `error`
                            lost = (got.get("error", {}).get("data") or {}).get("code") == "call_lost"
                            status = "lost" if lost else "error"
                        break
                else:
                    status, category = "working", "hang"
        except (httpx2.TransportError, ValueError) as exc:
            category = f"client:{describe(exc)[0]}"
    sample = Sample(
        round(ctx.elapsed(), 3),
        round((time.perf_counter() - started) * 1000, 2),
        category == "",
        category,
        "chat",
        marker,
    )
    return sample, status


class FirstAnswers:
    """Counts the calls whose first answer (pending, a task, or an error) is back, so that the SIGKILL comes once
    every call has one, however slow the machine, and knows whether a session broke because of it."""

    def __init__(self, expected: int) -> None:
        self.left = expected
        self.all_back = asyncio.Event()
        self.killed = False

    def back(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.all_back.set()


async def _task_unaware(
    ctx: Context, daemon: Daemon, survivor: Daemon, index: int, think: float, answers: FirstAnswers
) -> tuple[Sample, str]:
    """A client that gives up after 60 s: the pending answer's `next_call`, until the answer or a reason."""
    started = time.perf_counter()
    try:
        async with session(daemon.mcp_url, ctx.target.token, timeout=CLIENT_TIMEOUT) as client:
            first = await call(
                client, "chat", {"prompt": f"long call {index}", "model": "sim-smart"}, ctx.epoch, CLIENT_TIMEOUT
            )
    except Exception as exc:  # the session broke before any answer: its daemon was killed, or worse
        answers.back()
        status = "lost" if answers.killed else "error"
        category = "lost" if answers.killed else f"client:{describe(exc)[0]}"
        elapsed = round((time.perf_counter() - started) * 1000, 2)
        return Sample(round(ctx.elapsed(), 3), elapsed, False, category, "chat"), status
    answers.back()
    marker = first.sample.marker
    pending = first.data.get("pending")
    outcome, status = first, "completed" if first.sample.ok and not pending else "error"
    deadline = time.monotonic() + think * 3 + 180
    while pending and time.monotonic() < deadline:
        for target in (daemon, survivor):  # the daemon it started on may be gone: any replica collects
            try:
                async with session(target.mcp_url, ctx.target.token, timeout=CLIENT_TIMEOUT) as client:
                    outcome = await call(
                        client,
                        pending["next_call"]["name"],
                        pending["next_call"]["arguments"],
                        ctx.epoch,
                        CLIENT_TIMEOUT,
                        marked=False,
                    )
                break
            except Exception:
                continue
        if outcome.sample.ok and "pending" in outcome.data:
            continue
        pending = None
        status = "completed" if outcome.sample.ok else "lost" if outcome.data.get("code") == "call_lost" else "error"
    category = "" if status == "completed" else ("lost" if status == "lost" else outcome.sample.category or "error")
    sample = Sample(
        round(ctx.elapsed(), 3),
        round((time.perf_counter() - started) * 1000, 2),
        status == "completed",
        category,
        "chat",
        marker,
    )
    return sample, status


async def run(ctx: Context, result: ScenarioResult) -> None:
    calls = ctx.scale(100, 10)
    think = ctx.seconds(90, 10)
    group = ctx.target.group
    if not ctx.target.local or group is None:
        result.skipped = "needs local daemons (one is SIGKILLed midway)"
        return
    shared = {"EXAI_DATA_DIR": str(group.workdir / f"data-long-{secrets.token_hex(3)}")}
    if ctx.target.storage != "sqlite":
        schema = f"exai_stress_{secrets.token_hex(6)}"
        ctx.target.schemas.append(schema)
        shared["EXAI_DATABASE_SCHEMA"] = schema
    settings = {
        **shared,
        "EXAI_CALL_LEASE_SECONDS": "10",
        "EXAI_ATTEMPT_TIMEOUT_SECONDS": str(think + 60),
        "EXAI_CALL_DEADLINE_SECONDS": str(think + 120),
        "EXAI_TASK_AFTER_SECONDS": "2",
        # every call of the run is one tenant's on one model: all of them think at once, none waits for a slot of
        # the tenant's provider share (16 by default), which would push the last ones past their deadline
        "EXAI_PROVIDER_CONCURRENCY": str(max(64, calls)),
        "EXAI_PROVIDER_CONCURRENCY_PER_TENANT": str(calls),
    }
    if ctx.quick:  # the shipped 45 s client wait is longer than the quick model's thinking
        settings["EXAI_CLIENT_WAIT_SECONDS"] = "2"
    first = ctx.target.daemon("long-a", None, **settings)
    second = ctx.target.daemon("long-b", None, **settings)
    await ctx.sim.reset()
    await ctx.sim.fault("think", model="sim-smart", think_seconds=think)
    ctx.progress(0, 3, f"{calls} calls on a model that thinks {think:g} s")
    work = []
    answers = FirstAnswers(calls)
    for index in range(calls):
        origin, other = (first, second) if index % 2 == 0 else (second, first)
        if index % 4 < 2:
            work.append(_task_aware(ctx, origin, other, index, think, answers))
        else:
            work.append(_task_unaware(ctx, origin, other, index, think, answers))
    running = asyncio.gather(*work)
    with contextlib.suppress(TimeoutError):  # once every call has come back pending or become a task
        await asyncio.wait_for(answers.all_back.wait(), think * 3)
    ctx.progress(1, 3, f"SIGKILL of one daemon midway ({calls - max(answers.left, 0)} of {calls} calls answered first)")
    assert first.managed is not None
    answers.killed = True
    first.managed.stop(signal.SIGKILL)
    outcomes = await running
    ctx.progress(2, 3, "judging")
    await ctx.sim.clear_faults()
    for sample, status in outcomes:
        sample.excused = status == "lost"  # cut off by the deliberate SIGKILL: reported lost, with its reason
        result.samples.append(sample)
    statuses = [status for _, status in outcomes]
    collected, lost = statuses.count("completed"), statuses.count("lost")
    neither = len(statuses) - collected - lost
    result.figures |= {
        "calls": calls,
        "think_s": think,
        "collected": collected,
        "reported lost": lost,
        "other": neither,
    }
    result.check(
        "every answer collected, or reported lost with its reason",
        f"{calls} of {calls}",
        f"{collected} collected + {lost} lost with reason = {collected + lost}; {neither} neither",
        neither == 0,
    )
    counts = await ctx.sim.markers([s.marker for s, _ in outcomes if s.marker])
    finished_upstream = {m for m, c in counts.items() if c.get("answered", 0) > 0}
    dropped = [s for s, status in outcomes if s.marker in finished_upstream and status != "completed"]
    result.check(
        "answers a daemon finished that did not reach their client",
        "0",
        f"{len(dropped)} of {len(finished_upstream)} answered upstream",
        not dropped,
    )
    result.check(
        "the survivor's calls all answered",
        "every call the surviving daemon ran",
        f"{lost} lost (all on the killed daemon)",
        lost <= (calls + 1) // 2,
    )
    ctx.target.stop_daemon(second)
