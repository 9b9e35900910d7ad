"""Draining on SIGTERM: /readyz says `draining` before the port closes; calls cut at the end of the grace period
get a typed `unavailable` error with a retry hint; the log has no tracebacks or errors."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import httpx2
import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import tool_error, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def readiness(proc: Proc) -> int | None:
    try:
        return httpx2.get(f"{proc.url}/readyz", timeout=5).status_code
    except httpx2.TransportError:
        return None


async def test_sigterm_drains_then_cuts_calls_with_a_typed_error(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_SHUTDOWN_GRACE_SECONDS="2", EXAI_DRAIN_NOTICE_SECONDS="10")
    sim.fault("hang", model="sim-smart")  # never answers: the call is still running when the grace period ends
    assert readiness(proc) == 200
    async with Client(f"{proc.url}/mcp") as client:
        call = asyncio.create_task(client.call_tool("chat", {"prompt": "cut me", "model": "sim-smart"}))
        await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the call reached the upstream")
        proc.process.send_signal(signal.SIGTERM)
        await wait_until(lambda: readiness(proc) == 503, "/readyz answers 503 while the port is still open")
        draining = httpx2.get(f"{proc.url}/readyz", timeout=5)
        assert draining.json()["reason"] == "draining", draining.text
        result = await asyncio.wait_for(call, 120)
    error = tool_error(result)
    assert error["category"] == "unavailable" and error["retryable"], error
    assert error["details"]["retry_in_seconds"] > 0
    assert await asyncio.to_thread(proc.process.wait, 60) == 0
    await wait_until(lambda: sim.count("disconnects") >= 1, "the upstream request was cut")
    logs = proc.logs()
    assert "Traceback" not in logs, logs[-3000:]
    levels = [json.loads(line).get("level") for line in logs.splitlines() if line.startswith("{")]
    assert "error" not in levels and "critical" not in levels, logs[-3000:]
