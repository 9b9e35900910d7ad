"""`exai serve` as a real process, driven by the MCP SDK client over Streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import httpx2
import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import cancel_once_upstream, mcp_client, text_of, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


async def test_all_four_tools_over_http(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    async with Client(f"{proc.url}/mcp") as client:
        assert {"chat", "listmodels", "version", "status"} <= {t.name for t in (await client.list_tools()).tools}
        chat = await client.call_tool("chat", {"prompt": "over http", "model": "kimi-k2"})
        models = await client.call_tool("listmodels", {})
        version = await client.call_tool("version", {})
        status = await client.call_tool("status", {})
    assert not any(r.is_error for r in (chat, models, version, status))
    assert chat.structured_content["provider"] == "kimi" and "echo: over http" in text_of(chat)
    assert version.structured_content["transports"] == ["stdio", "streamable-http"]
    assert status.structured_content["calls"]["chat"] == {"ok": 1}


async def test_health_readiness_and_dns_rebinding(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    async with httpx2.AsyncClient() as http:
        assert (await http.get(f"{proc.url}/healthz")).json()["status"] == "ok"
        ready = (await http.get(f"{proc.url}/readyz")).json()
        assert ready["ready"] and ready["providers"] == ["anthropic", "custom", "kimi"]
        assert ready["storage"] == "sqlite"
        hostile = await http.post(f"{proc.url}/mcp", headers={"Host": "evil.example:80"}, json={})
        assert hostile.status_code == 421
        origin = await http.post(
            f"{proc.url}/mcp",
            headers={"Origin": "http://evil.example"},
            json={},
        )
        assert origin.status_code == 403
    bare = daemon(KIMI_API_KEY="", ANTHROPIC_API_KEY="", CUSTOM_API_URL="")
    response = httpx2.get(f"{bare.url}/readyz")
    assert response.status_code == 503 and "no model provider" in response.json()["reason"]


async def test_fifty_concurrent_chats_do_not_block_each_other(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    sim.latency(200)
    async with Client(f"{proc.url}/mcp") as client:
        await client.list_tools()
        results = await asyncio.gather(
            *(client.call_tool("chat", {"prompt": f"call {i}", "model": "sim-fast"}) for i in range(50))
        )
    assert all(not r.is_error for r in results)
    assert [r.structured_content["answer"].rsplit("echo: ", 1)[1] for r in results] == [f"call {i}" for i in range(50)]
    # Concurrency is proven on the upstream's side (how many requests it held at once), not by a wall clock.
    assert sim.stats()["max_in_flight"] >= 10, "calls reached the upstream concurrently"


async def test_correlation_id_reaches_the_upstream(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    async with mcp_client(proc.url, headers={"X-Request-ID": "trace-me-42"}, timeout=120) as client:
        await client.list_tools()
        result = await client.call_tool("chat", {"prompt": "find me", "model": "sim-fast"})
    assert result.structured_content["correlation_id"] == "trace-me-42"
    assert sim.requests(1)[0]["headers"]["x-request-id"] == "trace-me-42"
    lines = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    assert not any("sk-test" in json.dumps(line) for line in lines), "no secret in any log line"


async def test_cancelling_a_call_cancels_the_upstream_request(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    sim.fault("hang", model="sim-fast")
    async with Client(f"{proc.url}/mcp") as client:
        await client.list_tools()
        await cancel_once_upstream(
            lambda: client.call_tool("chat", {"prompt": "never answered", "model": "sim-fast"}), sim
        )
        await wait_until(lambda: sim.count("disconnects") >= 1, "the upstream request is cancelled too")
        sim.clear_faults()
        status = await client.call_tool("status", {})
    assert status.structured_content["in_flight"] == 1  # only the status call itself
    assert status.structured_content["calls"]["chat"] == {"cancelled": 1}


async def test_graceful_shutdown_lets_calls_in_flight_finish(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_SHUTDOWN_GRACE_SECONDS="300")
    sim.latency(8000)  # long enough for all five to be upstream at once, even on a busy machine
    async with Client(f"{proc.url}/mcp") as client:
        await client.list_tools()
        calls = [
            asyncio.create_task(client.call_tool("chat", {"prompt": f"in flight {i}", "model": "sim-fast"}))
            for i in range(5)
        ]
        await wait_until(lambda: sim.stats()["in_flight"] == 5, "all five calls reached the upstream")
        proc.process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*calls)
        assert all(not r.is_error for r in results)
        assert sim.count("completed") == 5
    # The grace period is 300 s: exiting within 60 s means the daemon did not wait it out once calls were done.
    exit_code = await asyncio.to_thread(proc.process.wait, 60)
    assert exit_code == 0
    with pytest.raises(httpx2.TransportError):
        httpx2.get(f"{proc.url}/healthz", timeout=1)


async def test_a_hung_upstream_costs_one_attempt_not_the_whole_deadline(daemon: Daemon, sim: SimControl) -> None:
    # The healthy retry must also fit in one attempt's time: 10 s is far more than it takes even on a busy machine.
    proc = daemon(EXAI_ATTEMPT_TIMEOUT_SECONDS="10", EXAI_CALL_DEADLINE_SECONDS="600")
    sim.fault("hang", model="sim-fast", count=1)
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("chat", {"prompt": "answer after one hang", "model": "sim-fast"})
    assert not result.is_error, text_of(result)
    assert result.structured_content["retries"] == 1, "the hung attempt was given up and retried"
    assert sim.count("requests:sim-fast") == 2
