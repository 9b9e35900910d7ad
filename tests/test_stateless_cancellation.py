"""A handshake-era client cancels a call on a stateless daemon with `notifications/cancelled` (a separate POST).

Two replicas share PostgreSQL and Redis; the cancellation may land on either. Counted on the simulator's side:
the upstream request is cut (a disconnect) only by the tenant's own cancellation.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from exai.security.auth import new_api_key
from tests.conftest import Proc, SimControl
from tests.helpers import wait_until
from tests.replica_cluster import CallFailed, LegacyClient
from tests.test_accounting import audit_rows
from tests.test_replicas import own_redis_db

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(400)]
Daemon = Callable[..., Proc]


async def cancel(client: LegacyClient, request_id: int) -> int:
    message = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
    return (await client.post(message)).status_code


async def test_a_legacy_cancel_cuts_the_call_on_any_replica_and_only_for_its_tenant(
    daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str, redis_url: str
) -> None:
    suffix = os.urandom(4).hex()
    alice_key, alice = new_api_key(f"alice-{suffix}", ["exai:tools"])
    mallory_key, mallory = new_api_key(f"mallory-{suffix}", ["exai:tools"])
    env = {
        "EXAI_STATELESS_HTTP": "true",
        "EXAI_DATABASE_URL": postgres_url,
        "EXAI_DATABASE_SCHEMA": pg_schema,
        "EXAI_REDIS_URL": own_redis_db(redis_url),
        "EXAI_API_KEYS": f"{alice},{mallory}",
    }
    first, second = daemon(**env), daemon(**env)
    sim.fault("hang", model="sim-smart")  # held until the daemon hangs up
    client, elsewhere = LegacyClient(first.url, alice_key), LegacyClient(second.url, alice_key)
    others = [LegacyClient(replica.url, mallory_key) for replica in (first, second)]
    try:
        for each in (client, elsewhere, *others):
            await each.open()
        request_id = 7
        client.ids = iter([request_id, request_id + 1])
        args: dict[str, Any] = {"name": "chat", "arguments": {"prompt": "cancel me", "model": "sim-smart"}}
        running = asyncio.create_task(client.request("tools/call", args))
        await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the call's request reached the upstream")

        for other in others:  # another tenant, same request id, on both replicas: no effect
            assert await cancel(other, request_id) == 202
        assert sim.stats()["in_flight"] == 1 and sim.count("disconnects") == 0, "another tenant cancelled the call"
        assert not running.done()

        assert await cancel(elsewhere, request_id) == 202  # through the other replica (Redis)
        await wait_until(lambda: sim.count("disconnects") >= 1, "the upstream request was cut")
        with pytest.raises(CallFailed):
            await asyncio.wait_for(running, 60)

        running = asyncio.create_task(client.request("tools/call", args))  # and on the replica running it
        await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the second call's request reached the upstream")
        assert await cancel(client, request_id + 1) == 202
        await wait_until(lambda: sim.count("disconnects") >= 2, "the second upstream request was cut")
        with pytest.raises(CallFailed):
            await asyncio.wait_for(running, 60)
    finally:
        for each in (client, elsewhere, *others):
            await each.close()

    store = {"EXAI_DATABASE_URL": postgres_url, "EXAI_DATABASE_SCHEMA": pg_schema}
    rows = [r for r in audit_rows(store, expected=2) if r["tenant"] == f"alice-{suffix}"]
    assert [r["outcome"] for r in rows] == ["cancelled", "cancelled"], rows
