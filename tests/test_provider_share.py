"""One tenant's many-model calls cannot take a provider's every upstream slot from the other tenants.

Found by attacking the daemon (issue 17): eight consensus calls of eight members each filled all 64 slots of a
provider, and another tenant's chat on an instant model waited 18.8 s instead of 0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from mcp import Client

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import mcp_client, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
SLOW = ("sim-slow-a", "sim-slow-b", "sim-slow-c")
MEMBERS = [{"model": SLOW[i % 3], "stance": ("for", "against", "neutral")[i // 3 % 3]} for i in range(8)]


@asynccontextmanager
async def _client(proc: Proc, tenant: str) -> AsyncIterator[Client]:
    token = issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 900)
    async with mcp_client(proc.url, token, timeout=180) as client:
        yield client


async def _chat(client: Client) -> None:
    result = await client.call_tool("chat", {"prompt": "quick one", "model": "sim-fast"})
    assert not result.is_error, result


@pytest.mark.timeout(240)
async def test_eight_consensus_calls_do_not_delay_another_tenants_chat(daemon: Daemon, sim: SimControl) -> None:
    """The attacker's members hang for two minutes upstream: the other tenant's chats come back while its share of
    them is still held there and not one has ended, so they waited for no slot of the attacker's (no wall clock:
    the machine may be busy)."""
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, CUSTOM_MODELS=",".join(("sim-fast", *SLOW)))
    for model in SLOW:
        sim.latency(120_000, model=model)
    consulting = 0

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        nonlocal consulting
        consulting += message == "consulting models"

    def answered_upstream() -> int:
        return sum(sim.count(f"completed:{model}") for model in SLOW)

    async with _client(proc, "alice") as alice:
        await _chat(alice)
        async with _client(proc, "mallory") as mallory, anyio.create_task_group() as attack:
            for _ in range(8):
                attack.start_soon(
                    lambda: mallory.call_tool(
                        "consensus", {"prompt": "hold every slot", "models": MEMBERS}, progress_callback=on_progress
                    )
                )
            await wait_until(lambda: consulting == 8, "every consensus call started its eight members")
            await wait_until(lambda: sim.stats()["in_flight"] >= 16, "the attacker's requests reached the upstream")
            for _ in range(3):
                await _chat(alice)
            held, answered = sim.stats()["in_flight"], answered_upstream()
            attack.cancel_scope.cancel()
    assert answered == 0 and held >= 16, (
        f"when the chats came back the attacker held {held} requests upstream and {answered} had been answered: "
        "the chats waited for slots the attacker's requests gave up"
    )
    assert held <= 16 + 1, f"one tenant held {held} upstream requests at once (its share is 16)"


async def test_one_consensus_call_asks_a_model_at_most_three_times(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    members = [{"model": "sim-fast", "stance": "neutral", "stance_prompt": f"voice {i}"} for i in range(4)]
    async with _client(proc, "mallory") as mallory:
        result = await mallory.call_tool("consensus", {"prompt": "one model, four voices", "models": members})
    assert result.is_error
    error = (result.meta or {})["exai/error"]
    assert error["code"] == "model_repeated" and "sim-fast" in error["message"] and "3 times" in error["message"]
    assert sim.count("requests") == 0, "nothing was sent upstream"


async def test_a_call_that_waits_past_its_deadline_for_the_tenants_share_says_so(
    daemon: Daemon, sim: SimControl
) -> None:
    """One chat holds the tenant's one slot for 20 s; a consensus started once it is upstream waits for the slot
    past its members' 2 s deadline. (Two members of one call racing for the slot would release and expire at the
    same instant: which came first would decide the test, not the daemon.)"""
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_PROVIDER_CONCURRENCY_PER_TENANT="1")
    sim.latency(20_000, model="sim-smart")
    members = [{"model": "sim-smart", "stance": stance} for stance in ("for", "against")]
    args = {"prompt": "two at once", "models": members, "per_model_timeout_seconds": 2}
    async with _client(proc, "mallory") as holding, _client(proc, "mallory") as mallory:
        holder = asyncio.create_task(holding.call_tool("chat", {"prompt": "holds the slot", "model": "sim-smart"}))
        try:
            await wait_until(lambda: sim.count("requests") >= 1, "the first call holds the slot, upstream")
            result = await mallory.call_tool("consensus", args)
        finally:
            holder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await holder
    errors = [o["error"] for o in (result.structured_content or {})["opinions"]]
    queued = [e for e in errors if e["code"] == "local_queue_timeout"]
    assert len(queued) == 2, f"both members queued for the slot the first call held: {errors}"
    assert "held by your other calls" in queued[0]["message"], queued
    assert "EXAI_PROVIDER_CONCURRENCY_PER_TENANT" in queued[0]["remedy"], queued
    assert sim.count("requests") == 1, "only the holder reached the upstream"


async def test_a_daemon_without_auth_serves_one_tenant_whose_calls_may_use_every_slot(
    daemon: Daemon, sim: SimControl
) -> None:
    """With nobody else to be fair to, the share would only hold the one user's calls back: 50 chats would go 16 at
    a time. Without auth both calls reach the upstream at once although the share is 1."""
    proc = daemon(EXAI_PROVIDER_CONCURRENCY_PER_TENANT="1")
    sim.latency(30_000, model="sim-smart")
    async with mcp_client(proc.url, None, timeout=120) as client, anyio.create_task_group() as calls:
        for i in range(2):
            calls.start_soon(client.call_tool, "chat", {"prompt": f"call {i}", "model": "sim-smart"})
        await wait_until(lambda: sim.stats()["in_flight"] >= 2, "both calls reached the upstream at once")
        calls.cancel_scope.cancel()
