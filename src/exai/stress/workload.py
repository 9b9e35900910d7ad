"""The traffic mix: new chats, continued threads, two-step workflows and consensus, each a bounded loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcp import Client

from exai.stress.driver import Outcome, call, describe, session
from exai.stress.results import Sample

MIX = ("chat", "continue", "workflow", "chat", "continue", "consensus", "chat", "workflow", "continue", "chat")
"""Ten operations a slot cycles through: 4 new chats, 3 continued threads, 2 workflows, 1 consensus."""


@dataclass
class LoadPlan:
    url: str  # …/mcp
    sessions: int
    slots_per_session: int  # concurrent operations in flight per session
    operations_per_slot: int  # per session opening
    reopen: int = 1  # how many times each session is opened, used and closed
    ramp_seconds: float = 0.0  # sessions start spread over this long
    until: float | None = None  # wall-clock (time.time()) end; stops early when reached
    token: str | None = None
    prefix: str = "load"
    ceiling: float = 300.0  # a single call's hang ceiling
    rate: float = 0.0  # open loop: new chats per second (spread over the sessions) for `duration`; 0 = closed loop
    duration: float = 0.0  # seconds of traffic counted from this client's start (open loop: once its sessions are
    # open), not from launch: a client process that starts slowly on a busy machine still runs it all


def workflow_step(number: int, total: int, thread: str | None, text: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "step": f"step {number}: {text}",
        "step_number": number,
        "total_steps": total,
        "next_step_required": number < total,
        "findings": f"finding {number} of {text}",
        "model": "sim-smart",
    }
    if thread:
        args["continuation_id"] = thread
    return args


async def operation(
    client: Client,
    kind: str,
    tag: str,
    thread: str | None,
    epoch: float,
    ceiling: float,
    on_cut: Callable[[Sample], None] | None = None,
) -> tuple[list[Outcome], str | None]:
    """Run one operation of the mix; returns its calls and the thread a later `continue` may use. A call cut off
    by its session's failure goes to `on_cut` (see `driver.call`)."""

    async def one(tool: str, args: dict[str, Any]) -> Outcome:
        return await call(client, tool, args, epoch, ceiling, on_cut=on_cut)

    if kind == "continue" and thread:
        done = await one("chat", {"prompt": f"more {tag}", "continuation_id": thread})
        return [done], done.data.get("continuation_id", thread)
    if kind == "workflow":
        first = await one("debug", workflow_step(1, 2, None, tag))
        if not first.sample.ok:
            return [first], thread
        final = workflow_step(2, 2, first.data["continuation_id"], tag)
        return [first, await one("debug", final)], thread
    if kind == "consensus":
        models = [{"model": "sim-fast", "stance": "for"}, {"model": "sim-smart", "stance": "against"}]
        done = await one("consensus", {"prompt": f"decide {tag}", "models": models})
        if done.sample.ok and done.data.get("failed"):
            done.sample.ok, done.sample.category = False, "consensus_opinion_failed"
        return [done], thread
    done = await one("chat", {"prompt": f"hello {tag}", "model": "sim-fast"})
    return [done], done.data.get("continuation_id") if done.sample.ok else thread


async def run_open(plan: LoadPlan, emit: Callable[[Sample], None], epoch: float) -> None:
    """Open loop: a new chat every 1/rate seconds for `duration`, whether or not earlier ones have finished (a slow
    daemon gets more calls in flight, as from real clients); then wait for the calls still running. The duration
    starts when the sessions are open: a client process that starts slowly on a busy machine still offers it all."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(session(plan.url, plan.token, plan.ceiling)) for _ in range(plan.sessions)
        ]
        running: set[asyncio.Task[None]] = set()

        async def one(client: Client, n: int) -> None:
            args = {"prompt": f"hello {plan.prefix}-{n}", "model": "sim-fast"}
            emit((await call(client, "chat", args, epoch, plan.ceiling)).sample)

        start, n = time.monotonic(), 0
        while time.monotonic() < start + plan.duration:
            task = asyncio.create_task(one(clients[n % len(clients)], n))
            running.add(task)
            task.add_done_callback(running.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n / plan.rate - time.monotonic()))
        await asyncio.gather(*running)


async def run_plan(plan: LoadPlan, emit: Callable[[Sample], None], epoch: float) -> None:
    """Every session of `plan`, concurrently; each finished call is handed to `emit`."""
    if plan.rate > 0:
        await run_open(plan, emit, epoch)
        return

    until = plan.until if plan.until is not None else time.time() + plan.duration if plan.duration else None

    def over() -> bool:
        return until is not None and time.time() >= until

    async def slot(client: Client, name: str, cut: list[Sample]) -> None:
        thread: str | None = None
        for n in range(plan.operations_per_slot):
            if over():
                return
            kind, tag = MIX[n % len(MIX)], f"{name}-{n}"
            outcomes, thread = await operation(client, kind, tag, thread, epoch, plan.ceiling, cut.append)
            for outcome in outcomes:
                emit(outcome.sample)

    async def one_session(index: int) -> None:
        await asyncio.sleep(plan.ramp_seconds * index / max(1, plan.sessions))
        for opening in range(plan.reopen):
            if over():
                return
            started = time.perf_counter()
            cut: list[Sample] = []  # calls of this opening cut off by its failure, each with its marker
            try:
                async with session(plan.url, plan.token, plan.ceiling) as client:
                    names = [f"{plan.prefix}-{index}-{opening}-{k}" for k in range(plan.slots_per_session)]
                    await asyncio.gather(*(slot(client, name, cut) for name in names))
            except Exception as exc:  # a session that cannot open (or breaks) is counted, not a crash
                kind, message = describe(exc)
                t, ms = round(time.monotonic() - epoch, 3), (time.perf_counter() - started) * 1000
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # the scenario stopped this load on purpose: the
                    for sample in cut:  # teardown's errors are ours, and so are the calls it cut off
                        emit(dataclasses.replace(sample, category="cut", detail=message, excused=True))
                    raise
                # each call it cut off fails with the session's error (and is checked against the simulator);
                # a session that failed opening or closing, with no call in flight, is one failure of its own
                for sample in cut or [Sample(t, ms, False, "", "session")]:
                    emit(dataclasses.replace(sample, category=f"session:{kind}", detail=message))

    await asyncio.gather(*(one_session(i) for i in range(plan.sessions)))
