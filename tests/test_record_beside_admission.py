"""A call's durable record is written while the limiter admits the call: two round trips waited for as one.

A refusal meanwhile ends the record with the refusal, or as cancelled if it had not landed yet (nothing was asked,
nothing spent, no row left working); a tenant
refused a moment ago is admitted before its record is written, so calls sent past a limit cost the store nothing.
A task (the 2025 `tasks` form, whose client waits for `CreateTaskResult`) is still admitted first: a refusal is
the request's error, not a task that fails."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from exai.security.auth import issue_token
from exai.security.limits import Lease
from exai.server.mcp import build_server
from tests.conftest import TEST_JWT_SECRET, MakeServices, Proc, SimControl
from tests.helpers import call_tool, tool_error, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def call_rows(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "exai.db") as db:
        return [(row[0], row[1]) for row in db.execute("SELECT status, tenant FROM calls")]


async def test_the_record_is_written_while_the_admission_is_on_its_way(
    make_services: MakeServices, sim: SimControl, redis_url: str, tmp_path: Path
) -> None:
    services = await make_services(EXAI_REDIS_URL=redis_url, EXAI_RATE_LIMIT_RPM="1000", EXAI_DATA_DIR=str(tmp_path))
    limiter, store = services.limiter, services.store
    assert limiter is not None
    recorded = asyncio.Event()
    create_call, acquire = store.create_call, limiter.acquire

    async def noted_create(call: Any) -> None:
        await create_call(call)
        recorded.set()

    async def acquire_once_recorded(tenant: str, prepay: int = 0) -> Lease:
        """Redis answers the admission only once the record is in the store: with the two one after the other,
        the call would wait here for ever (30 s, then fail)."""
        await asyncio.wait_for(recorded.wait(), 30)
        return await acquire(tenant, prepay)

    store.create_call = noted_create  # type: ignore[method-assign]
    limiter.acquire = acquire_once_recorded  # type: ignore[method-assign]
    async with Client(build_server(services)) as client:
        result = await client.call_tool("chat", {"prompt": "beside", "model": "sim-fast"})
    assert not result.is_error, result.content
    assert sim.count("requests") == 1
    assert call_rows(tmp_path) == [("completed", "local")]


async def test_a_refused_call_leaves_no_working_record_and_later_refusals_none_at_all(
    daemon: Daemon, sim: SimControl, redis_url: str, tmp_path: Path
) -> None:
    tenant = f"refused-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_REDIS_URL=redis_url,
        EXAI_RATE_LIMIT_RPM="2",
        EXAI_DATA_DIR=str(tmp_path),
    )
    token = issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 600)
    results = [
        await call_tool(proc.url, "chat", {"prompt": f"limit {i}", "model": "sim-fast"}, token) for i in range(8)
    ]
    assert [r.is_error for r in results] == [False, False, *[True] * 6]
    assert all(tool_error(r)["code"] == "rate_limited_rpm" for r in results[2:])
    assert sim.count("requests") == 2, "a refused call asked no model"
    await wait_until(lambda: all(status != "working" for status, _ in call_rows(tmp_path)), "every call ended")
    rows = call_rows(tmp_path)
    assert rows.count(("completed", tenant)) == 2
    # The first refusal's record was on its way beside its admission: it ended with the refusal (completed, its
    # result the error) or cancelled; the tenant's later calls were admitted first and wrote nothing.
    assert len(rows) == 3 and all(status in ("completed", "cancelled") for status, _ in rows), rows


async def test_a_task_refused_by_its_limit_is_the_requests_error_and_records_nothing(
    daemon: Daemon, sim: SimControl, redis_url: str, tmp_path: Path
) -> None:
    """The 2025 task form: the client waits for `CreateTaskResult`, so its admission is known before any record."""
    tenant = f"task-refused-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_REDIS_URL=redis_url,
        EXAI_RATE_LIMIT_RPM="1",
        EXAI_DATA_DIR=str(tmp_path),
    )
    token = issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 600)
    first = await call_tool(proc.url, "chat", {"prompt": "only one", "model": "sim-fast"}, token)
    assert not first.is_error
    refused = await call_tool(proc.url, "chat", {"prompt": "past it", "model": "sim-fast"}, token)
    assert tool_error(refused)["code"] == "rate_limited_rpm"
    rows_before = call_rows(tmp_path)
    answer = task_call(
        proc.url, token, {"name": "chat", "arguments": {"prompt": "a task past it", "model": "sim-fast"}}
    )
    assert "result" not in answer, answer
    assert answer["error"]["data"]["code"] == "rate_limited_rpm", answer
    assert call_rows(tmp_path) == rows_before, "a refused task wrote no record"
    assert sim.count("requests") == 1


def task_call(url: str, token: str, params: dict[str, Any]) -> dict[str, Any]:
    """`tools/call` as a task, in the 2025-11-25 form: the answer to the request itself (a task, or an error)."""
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {token}"}
    with httpx2.Client(timeout=120) as http:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
        opened = http.post(f"{url}/mcp", headers=headers, json=body)
        headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        http.post(f"{url}/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {**params, "task": {}}}
        answered = http.post(f"{url}/mcp", headers=headers, json=body)
    text = answered.text
    payload: dict[str, Any] = json.loads(text.split("data: ", 1)[1] if "data: " in text else text)
    return payload
