"""Threads survive restarts and SIGKILL, and daemons sharing PostgreSQL (and Redis) share threads."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import text_of, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


async def _chat(url: str, prompt: str, thread: str | None = None, tool: str = "chat") -> dict[str, Any]:
    async with Client(f"{url}/mcp") as client:
        await client.list_tools()
        args = {"prompt": prompt, "model": "sim-fast"}
        if thread:
            args["continuation_id"] = thread
        result = await client.call_tool(tool, args)
    assert not result.is_error, text_of(result)
    answer: dict[str, Any] = result.structured_content
    return answer


async def _turns(url: str, thread: str) -> int:
    async with Client(f"{url}/mcp") as client:
        await client.list_tools()
        shown = await client.call_tool("threads", {"action": "show", "thread_id": thread, "limit": 200})
    assert not shown.is_error, text_of(shown)
    turns: int = shown.structured_content["thread"]["turns"]
    return turns


async def test_a_thread_continues_after_a_restart(daemon: Daemon, sim: SimControl) -> None:
    first = daemon()
    started = await _chat(first.url, "remember the number 7")
    assert first.stop() == 0
    second = daemon()
    continued = await _chat(second.url, "which number?", started["continuation_id"])
    assert continued["earlier_turns_included"] == 2
    assert "remember the number 7" in str(sim.requests(1)[0]["body"]["messages"])


async def test_sigkill_under_load_loses_no_acknowledged_turn(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_MAX_TURNS_PER_THREAD="100000")
    sim.latency(20)
    acknowledged: dict[str, int] = {}
    killed = asyncio.Event()

    async def worker(index: int) -> None:
        try:
            async with Client(f"{proc.url}/mcp") as client:
                await client.list_tools()
                thread = None
                while not killed.is_set():
                    args = {"prompt": f"worker {index}", "model": "sim-fast"}
                    if thread:
                        args["continuation_id"] = thread
                    result = await client.call_tool("chat", args)
                    assert not result.is_error, text_of(result)
                    thread = result.structured_content["continuation_id"]
                    acknowledged[thread] = acknowledged.get(thread, 0) + 1
        except Exception:
            if not killed.is_set():  # only the kill may end a worker
                raise

    async def killer() -> None:
        # kill under load, once enough calls were acknowledged
        await wait_until(lambda: sum(acknowledged.values()) >= 20, "20 calls were acknowledged", every=0.05)
        killed.set()
        proc.process.send_signal(signal.SIGKILL)

    async with asyncio.timeout(300):  # a ceiling against a hang, far above any healthy run
        await asyncio.gather(killer(), *(worker(i) for i in range(8)))
    restarted = daemon(EXAI_MAX_TURNS_PER_THREAD="100000")
    for thread, acks in acknowledged.items():
        turns = await _turns(restarted.url, thread)
        assert 2 * acks <= turns <= 2 * (acks + 1), f"thread {thread}: {acks} acknowledged calls, {turns} turns"


@pytest.mark.parametrize("with_redis", [False, True])
async def test_two_daemons_share_threads_through_postgresql(
    daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str, redis_url: str, with_redis: bool
) -> None:
    env = {"EXAI_DATABASE_URL": postgres_url, "EXAI_DATABASE_SCHEMA": pg_schema}
    if with_redis:
        env["EXAI_REDIS_URL"] = redis_url
    a, b = daemon(**env), daemon(**env)
    thread = (await _chat(a.url, "started on A"))["continuation_id"]
    on_b = await _chat(b.url, "continued on B", thread)
    on_a = await _chat(a.url, "back on A", thread)
    assert on_b["earlier_turns_included"] == 2 and on_a["earlier_turns_included"] == 4
    results = await asyncio.gather(*(_chat((a, b)[i % 2].url, f"parallel {i}", thread) for i in range(6)))
    assert all(r["continuation_id"] == thread for r in results)
    assert await _turns(b.url, thread) == 6 + 12
