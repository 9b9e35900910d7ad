"""The stdio-to-daemon bridge as a real process, between the SDK's stdio client and a real daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import Proc, SimControl, free_port
from tests.helpers import tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def _bridge(url: str, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "exai", "stdio", "--connect", f"{url}/mcp"], env={**os.environ, **env}
    )


async def test_twenty_concurrent_calls_survive_a_daemon_restart(daemon: Daemon, sim: SimControl) -> None:
    port = free_port()
    proc = daemon(port=port)
    sim.latency(800)
    async with Client(_bridge(proc.url)) as client:
        tools = (await client.list_tools()).tools
        assert "chat" in {t.name for t in tools}

        async def call(i: int) -> str:
            result = await client.call_tool("chat", {"prompt": f"bridged {i}", "model": "sim-fast"})
            assert not result.is_error, result.content[0].text
            return result.structured_content["answer"].rsplit("echo: ", 1)[1]

        async def restart() -> None:
            await asyncio.sleep(0.3)
            proc.process.send_signal(signal.SIGKILL)
            proc.process.wait(10)
            daemon(port=port)

        started = time.monotonic()
        answers, _ = await asyncio.gather(asyncio.gather(*(call(i) for i in range(20))), restart())
        elapsed = time.monotonic() - started
        assert answers == [f"bridged {i}" for i in range(20)], "each call got its own answer"
        assert elapsed < 30
        after = await client.call_tool("version", {})
        assert not after.is_error


async def test_unreachable_daemon_is_a_clear_error_not_a_hang(sim: SimControl) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with Client(_bridge(url, EXAI_BRIDGE_CONNECT_TIMEOUT_SECONDS="1")) as client:
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            await client.list_tools()
        assert "Cannot reach the EX-AI daemon" in str(caught.value)
        result = await client.call_tool("chat", {"prompt": "anyone there?"})
        assert result.is_error and tool_error(result)["code"] == "daemon_unreachable"
        assert time.monotonic() - started < 10


async def test_progress_and_protocol_errors_pass_through(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with Client(_bridge(proc.url)) as client:
        await client.list_tools()
        result = await client.call_tool(
            "chat", {"prompt": "stream through the bridge", "model": "sim-fast"}, progress_callback=on_progress
        )
        bad = await client.call_tool("chat", {"prompt": ""})
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("nope", {})
    assert not result.is_error and len(progress) > 3
    assert bad.is_error and tool_error(bad)["category"] == "validation"


async def test_cancelling_through_the_bridge_cancels_upstream(daemon: Daemon, sim: SimControl) -> None:
    import anyio

    proc = daemon()
    sim.fault("hang", model="sim-fast")
    async with Client(_bridge(proc.url)) as client:
        await client.list_tools()
        with anyio.move_on_after(1.5):
            await client.call_tool("chat", {"prompt": "cancel me", "model": "sim-fast"})
        for _ in range(60):
            if sim.count("disconnects") >= 1:
                break
            await asyncio.sleep(0.1)
        sim.clear_faults()
        after = await client.call_tool("chat", {"prompt": "next", "model": "sim-fast"})
    assert sim.count("disconnects") >= 1, "the daemon's upstream request was cancelled too"
    assert not after.is_error
