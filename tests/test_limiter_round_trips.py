"""The limiter's cost per call: one Redis round trip to admit (slot and tokens), one to release and settle."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from exai.config import Limits
from exai.security.auth import issue_token
from exai.security.call_tokens import CallTokens
from exai.security.limits import DAY, LocalLimiter, RedisLimiter, tenant_keys
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import redis_int, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


@asynccontextmanager
async def limiter_commands(redis_url: str, tenant: str) -> AsyncIterator[Callable[[], asyncio.Future[list[str]]]]:
    """Watch Redis (MONITOR) for the commands that touch `tenant`'s limit keys (new sessions aside).

    The yielded function returns the commands seen since its last call, every earlier command included: it sends a
    marker and waits until the marker comes back, and MONITOR reports commands in the order Redis ran them."""
    watcher = aioredis.from_url(redis_url)
    marker_client = aioredis.from_url(redis_url)
    prefix = tenant_keys(tenant)
    seen: list[str] = []
    markers: dict[str, asyncio.Future[list[str]]] = {}
    sent: set[asyncio.Future[object]] = set()

    async def watch() -> None:
        async with watcher.monitor() as monitor:
            ready.set()
            async for event in monitor.listen():
                command = event["command"]
                for marker, future in list(markers.items()):
                    if marker in command and not future.done():
                        future.set_result(list(seen))
                        seen.clear()
                if event.get("client_type") == "lua":  # what a script ran inside its one round trip
                    continue
                if prefix in command and f"{prefix}:sessions" not in command:
                    seen.append(command)

    def since_last() -> asyncio.Future[list[str]]:
        marker = f"exai-test-marker-{uuid.uuid4().hex}"
        markers[marker] = asyncio.get_running_loop().create_future()
        sent.add(asyncio.ensure_future(marker_client.echo(marker)))
        return markers[marker]

    ready = asyncio.Event()
    task = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.2)  # MONITOR is on once Redis has answered it
    try:
        yield since_last
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await watcher.aclose()
        await marker_client.aclose()


async def test_a_chat_call_costs_two_limiter_round_trips_and_the_count_stays_exact(
    daemon: Daemon, sim: SimControl, redis_url: str
) -> None:
    tenant = f"trips-{uuid.uuid4().hex[:8]}"
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_REDIS_URL=redis_url)
    token = issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 600)
    per_call: list[list[str]] = []
    charged = 0
    async with (
        limiter_commands(redis_url, tenant) as since_last,
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http,
        Client(streamable_http_client(f"{proc.url}/mcp", http_client=http)) as client,
    ):
        await client.list_tools()
        await since_last()
        for i in range(3):
            result = await client.call_tool("chat", {"prompt": f"round trips {i}", "model": "sim-fast"})
            assert not result.is_error, result
            usage = result.structured_content["usage"]
            charged += usage["input_tokens"] + usage["output_tokens"]
            per_call.append(await asyncio.wait_for(since_last(), 30))
    first, *later = per_call  # the first call loads the scripts (NOSCRIPT, then again) and has no size to prepay
    assert sum(c.startswith("EVALSHA") for c in first) >= 3, first
    for commands in later:
        assert len(commands) == 2, f"a call admits in one round trip and settles in one: {commands}"
    # Each round trip a call waits for is timed where an operator sees it, beside the store's writes.
    admin = issue_token(TEST_JWT_SECRET, tenant, ["exai:admin"], 600)

    def counted(histogram: str, operation: str) -> float:
        metrics = httpx2.get(f"{proc.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).text
        found = re.search(rf'^{histogram}_count\{{operation="{operation}"\}} (\S+)$', metrics, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    assert counted("exai_limiter_latency_seconds", "acquire") == 3
    assert counted("exai_limiter_latency_seconds", "release") == 3
    assert counted("exai_storage_latency_seconds", "create_call") == 3, "each call's record, before the model"
    await wait_until(lambda: counted("exai_storage_latency_seconds", "finish_call") == 3, "each call's record finished")
    redis = aioredis.from_url(redis_url)
    key = f"{tenant_keys(tenant)}:tokens:{int(time.time() // DAY)}"
    try:
        assert int(await redis.get(key) or 0) == charged, "the day's count is exactly what the upstream reported"
        assert await redis.zcard(f"{tenant_keys(tenant)}:slots") == 0
    finally:
        await redis.delete(key)
    await redis.aclose()


async def test_the_prepayment_is_taken_only_when_it_fits_and_settled_exactly(redis_url: str) -> None:
    redis = aioredis.from_url(redis_url)
    tenant = f"prepay-{uuid.uuid4().hex[:8]}"
    key = f"{tenant_keys(tenant)}:tokens:{int(time.time() // DAY)}"
    for limiter in (
        RedisLimiter(redis, Limits(tokens_per_day=1000), {}, "open", 60),
        LocalLimiter(Limits(tokens_per_day=1000), {}),
    ):
        limiter.prepay_sizes[(tenant, "chat")] = 400
        limiter.prepay_sizes[("someone else", "chat")] = 100_000  # another tenant's sizes are never this one's
        call = await CallTokens.admit(limiter, tenant, "chat", holds_slot=True, asks_model=True, writes_threads=True)
        assert call.lease is not None and call.lease.prepaid is not None and call.lease.prepaid.tokens == 450
        claim = await call.reserve(300)  # drawn from the prepayment
        claim.used = 320
        failed = await call.reserve(100)  # the rest of it: a model call that fails is charged nothing
        assert failed.reservation is claim.reservation
        call.add_stored_text(70)  # counted in the settlement's round trip
        await call.close()
        await call.close()  # settled once, however often it is closed
        with pytest.raises(RuntimeError, match="after its call's tokens were settled"):
            await call.reserve(10)  # a reservation after the settlement would never be settled: refused
        call.add_stored_text(10)  # after the settlement: it goes with the tenant's next release
        assert limiter.prepay_sizes[(tenant, "chat")] == 400, "what this tenant's call reserved in all"
        limiter.prepay_sizes[(tenant, "chat")] = (
            900  # 1.125 * 900 does not fit what is left of 1000: nothing is prepaid
        )
        big = await CallTokens.admit(limiter, tenant, "chat", holds_slot=True, asks_model=True, writes_threads=True)
        assert big.lease is not None and big.lease.prepaid is None
        (await big.reserve(600)).used = 650  # a reservation of its own, checked against the budget
        await big.close()
    assert await redis_int(redis, key) == 320 + 650, "the shared count is what the calls used"
    text_key = f"{tenant_keys(tenant)}:stored_text:{int(time.time() // DAY)}"
    assert await redis_int(redis, text_key) == 70 + 10, "with the settlement, and after it with the next release"
    await redis.delete(key, text_key)
    assert await redis.zcard(f"{tenant_keys(tenant)}:slots") == 0
    await redis.aclose()


async def test_a_cancelled_admission_gives_back_its_prepayment(redis_url: str) -> None:
    redis = aioredis.from_url(redis_url)
    tenant = f"prepay-{uuid.uuid4().hex[:8]}"
    key = f"{tenant_keys(tenant)}:tokens:{int(time.time() // DAY)}"
    limiter = RedisLimiter(redis, Limits(concurrent=1), {}, "open", 60)
    script_ran = asyncio.Event()
    real_script = limiter._acquire

    async def answer_lost_in_transit(**kwargs: Any) -> None:
        await real_script(**kwargs)
        script_ran.set()
        await asyncio.Event().wait()

    limiter._acquire = answer_lost_in_transit  # type: ignore[assignment]  # a stand-in for the registered script
    attempt = asyncio.create_task(limiter.acquire(tenant, prepay=500))
    await script_ran.wait()
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert await redis.zcard(f"{tenant_keys(tenant)}:slots") == 0, "the slot taken by the script was given back"
    assert int(await redis.get(key) or 0) == 0, "and the tokens it prepaid"
    await redis.delete(key)
    await redis.aclose()
