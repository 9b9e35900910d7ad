"""A call the limiter refuses writes nothing to the store: it is admitted before its durable record is written.

Writing the record while the limiter admits the call was measured (a quarter of a millisecond at one client,
nothing at 10 calls/s) and not kept: every call of a burst past a limit then wrote a record and its end, and a
slow store held refusals back (see the README's Performance section). These tests keep it that way: a burst past
the limit leaves only the admitted calls' rows, and a task refused by its limit is the request's answer, never a
task."""

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

from exai.security.auth import issue_token
from exai.server.tasks import EXTENSION
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import call_tool, mcp_client, tool_error, wait_until_sync

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def call_rows(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "exai.db") as db:
        return [(row[0], row[1]) for row in db.execute("SELECT status, tenant FROM calls")]


def ended_rows(data_dir: Path) -> list[tuple[str, str]]:
    """The calls table once no call in it is working (an end is written just after its answer goes out)."""
    wait_until_sync(lambda: all(status != "working" for status, _ in call_rows(data_dir)), "every call ended")
    return call_rows(data_dir)


def limited_daemon(daemon: Daemon, redis_url: str, data_dir: Path, rpm: int) -> Proc:
    return daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_REDIS_URL=redis_url,
        EXAI_RATE_LIMIT_RPM=str(rpm),
        EXAI_DATA_DIR=str(data_dir),
    )


async def test_a_burst_past_the_limit_writes_a_record_for_the_admitted_calls_only(
    daemon: Daemon, sim: SimControl, redis_url: str, tmp_path: Path
) -> None:
    tenant = f"burst-{uuid.uuid4().hex[:8]}"
    proc = limited_daemon(daemon, redis_url, tmp_path, rpm=3)
    async with mcp_client(proc.url, issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 600)) as client:
        results = await asyncio.gather(
            *(client.call_tool("chat", {"prompt": f"burst {i}", "model": "sim-fast"}) for i in range(20))
        )
    refused = [tool_error(r)["code"] for r in results if r.is_error]
    assert len(refused) == 17 and set(refused) == {"rate_limited_rpm"}, refused
    assert sim.count("requests") == 3, "a refused call asked no model"
    assert ended_rows(tmp_path) == [("completed", tenant)] * 3, "the refused calls wrote no record"


async def test_a_task_refused_by_its_limit_is_the_requests_answer_and_records_nothing(
    daemon: Daemon, sim: SimControl, redis_url: str, tmp_path: Path
) -> None:
    """A task's record is its creation: counted, announced, listed, and in the 2025 form returned at once. Both
    forms are admitted before it is written."""
    proc = limited_daemon(daemon, redis_url, tmp_path, rpm=1)
    for form in ("2025", "2026"):
        tenant = f"task-refused-{form}-{uuid.uuid4().hex[:8]}"
        token = issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 600)
        first = await call_tool(proc.url, "chat", {"prompt": f"the one of {form}", "model": "sim-fast"}, token)
        assert not first.is_error
        rows_before = ended_rows(tmp_path)
        params = {"name": "chat", "arguments": {"prompt": f"a {form} task past it", "model": "sim-fast"}}
        if form == "2025":
            answer = task_call(proc.url, token, params)
            assert "result" not in answer, answer
            assert answer["error"]["data"]["code"] == "rate_limited_rpm", answer
        else:
            answer = extension_call(proc.url, token, params)
            assert answer["result"].get("resultType") != "task", answer
            assert answer["result"]["_meta"]["exai/error"]["code"] == "rate_limited_rpm", answer
        assert ended_rows(tmp_path) == rows_before, f"a refused {form} task wrote no record"
    assert sim.count("requests") == 2


def extension_call(url: str, token: str, params: dict[str, Any]) -> dict[str, Any]:
    """`tools/call` from a client of the 2026-07-28 Tasks extension (no session; it may be answered with a task)."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-2026-client", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXTENSION: {}}},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": params["name"],
        "Authorization": f"Bearer {token}",
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {**params, "_meta": meta}}
    payload: dict[str, Any] = httpx2.post(f"{url}/mcp", headers=headers, json=body, timeout=120).json()
    return payload


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


async def test_a_call_record_keeps_only_a_continuation_id_that_could_name_a_thread(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    """The record of a call was written with its `continuation_id` as sent, before the tool refused it: 20 calls with
    a 100,000-character id kept 2 MB in the store for a day, counted nowhere (an attack round's finding; `uuid.UUID`
    takes any number of hyphens, so the length is checked too)."""
    proc = daemon(EXAI_DATA_DIR=str(tmp_path))
    bogus = ["x" * 100_000, "-" * 99_968 + uuid.uuid4().hex]
    async with mcp_client(proc.url, None) as client:
        refused = [
            await client.call_tool("chat", {"prompt": "p", "model": "sim-fast", "continuation_id": cid})
            for cid in bogus
        ]
    assert [tool_error(r)["code"] for r in refused] == ["invalid_continuation_id"] * 2
    ended_rows(tmp_path)
    with sqlite3.connect(tmp_path / "exai.db") as db:
        kept = [row[0] for row in db.execute("SELECT continuation_id FROM calls")]
    assert kept == [None, None], [len(k or "") for k in kept]
