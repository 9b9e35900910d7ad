"""MCP Tasks through the real daemon, driven by the official TypeScript client 2.x with @modelcontextprotocol/ext-tasks
(2025-11-25 tasks), by raw 2026-07-28 requests (the Tasks extension), and by the MCP conformance suite.

A task belongs to its tenant, not to a connection or a replica: these tests start a task on one connection and
settle or cancel it from another, on the same daemon and across two daemons sharing PostgreSQL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import wait_until, wait_until_sync
from tests.node_toolchain import NodeToolchain

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]
Daemon = Callable[..., Proc]
EXTENSION = "io.modelcontextprotocol/tasks"


def token(tenant: str) -> str:
    return issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 600)


def ts_tasks(toolchain: NodeToolchain, proc: Proc, tenant: str, scenario: str, argument: Any = None) -> dict[str, Any]:
    """One run of tests/js/tasks.mjs: what the official client and the Tasks package handed the caller."""
    args: list[str | Path] = [toolchain.script("tasks.mjs"), f"{proc.url}/mcp", token(tenant), scenario]
    if argument is not None:
        args.append(json.dumps(argument))
    done = toolchain.run(args, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def modern(proc: Proc, method: str, params: dict[str, Any], *, declare: bool = True) -> dict[str, Any]:
    """A 2026-07-28 request (no session: the protocol version and capabilities travel in `_meta`)."""
    capabilities: dict[str, Any] = {"extensions": {EXTENSION: {}}} if declare else {}
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw-2026-client", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": method,
        "Authorization": f"Bearer {token('alice')}",
    }
    name = params.get("name") or params.get("taskId")
    if name:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": meta}}
    response = httpx2.post(f"{proc.url}/mcp", headers=headers, json=body, timeout=120)
    payload: dict[str, Any] = response.json()
    return payload


def secured(daemon: Daemon, **extra: str) -> Proc:
    return daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, **extra)


async def test_a_task_started_by_the_typescript_client_is_settled_from_a_new_connection_and_only_by_its_tenant(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl
) -> None:
    proc = secured(daemon)
    sim.fault("think", model="sim-smart", think_seconds=3)
    started = ts_tasks(node_toolchain, proc, "alice", "start", ["chat", {"prompt": "as a task", "model": "sim-smart"}])
    assert started.get("kind") == "task", started  # task preference `require`, on 2025-11-25
    assert started["protocol"] == "legacy"
    reference = started["reference"]
    stolen = ts_tasks(node_toolchain, proc, "mallory", "settle", reference)
    assert stolen.get("status") != "completed" and "thrown" in stolen, stolen
    settled = ts_tasks(node_toolchain, proc, "alice", "settle", reference)  # a new connection, the same tenant
    assert settled["status"] == "completed", settled
    assert not settled["isError"]
    assert settled["structuredContent"]["model"] == "sim-smart"
    assert "echo: as a task" in settled["text"]
    assert sim.count("requests:sim-smart") == 1
    listed = ts_tasks(node_toolchain, proc, "alice", "list")
    assert reference["taskId"] in listed["taskIds"]
    assert reference["taskId"] not in ts_tasks(node_toolchain, proc, "mallory", "list")["taskIds"]


async def test_a_cancelled_task_ends_cancelled_and_the_upstream_sees_its_request_cut(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl
) -> None:
    proc = secured(daemon)
    sim.fault("think", model="sim-smart", think_seconds=120)
    started = ts_tasks(node_toolchain, proc, "alice", "start", ["chat", {"prompt": "cut me", "model": "sim-smart"}])
    await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the model is working on the task")
    cancelled = ts_tasks(node_toolchain, proc, "alice", "cancel", started["reference"])
    assert "thrown" not in cancelled, cancelled
    await wait_until(lambda: sim.count("disconnects") >= 1, "the simulator saw the request cut")
    settled = ts_tasks(node_toolchain, proc, "alice", "settle", started["reference"])
    assert settled["status"] == "cancelled", settled
    assert sim.count("completed:sim-smart") == 0


async def test_a_task_refused_before_it_starts_is_the_requests_error_not_a_tool_result(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl
) -> None:
    proc = secured(daemon, EXAI_MAX_TASKS_PER_TENANT="1")
    sim.fault("think", model="sim-smart", think_seconds=120)
    first = ts_tasks(node_toolchain, proc, "alice", "start", ["chat", {"prompt": "the one", "model": "sim-smart"}])
    assert first.get("kind") == "task", first
    await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the model is working on the first task")
    refused = ts_tasks(node_toolchain, proc, "alice", "start", ["chat", {"prompt": "one more", "model": "sim-smart"}])
    assert "tasks working already" in refused.get("thrown", ""), refused  # the client hands its caller the reason
    assert "Collect or cancel a task first" in refused["thrown"], refused
    assert sim.count("requests:sim-smart") == 1  # nothing was spent on the refused one
    assert "thrown" not in ts_tasks(node_toolchain, proc, "alice", "cancel", first["reference"])


async def test_the_2026_tasks_extension_turns_a_long_call_into_a_task_with_the_result_inline(
    daemon: Daemon, sim: SimControl
) -> None:
    proc = secured(daemon, EXAI_TASK_AFTER_SECONDS="1")
    sim.fault("think", model="sim-smart", think_seconds=3)
    created = modern(proc, "tools/call", {"name": "chat", "arguments": {"prompt": "2026", "model": "sim-smart"}})
    task = created["result"]
    assert task["resultType"] == "task" and task["status"] == "working", created
    assert isinstance(task["ttlMs"], int) and isinstance(task["pollIntervalMs"], int)
    assert "ttl" not in task and "pollInterval" not in task
    assert modern(proc, "tasks/get", {"taskId": task["taskId"]})["result"]["taskId"] == task["taskId"]  # durable

    def current() -> dict[str, Any]:
        result: dict[str, Any] = modern(proc, "tasks/get", {"taskId": task["taskId"]})["result"]
        return result

    await wait_until(lambda: current()["status"] == "completed", "the task completed")
    done = current()
    assert done["resultType"] == "complete"
    assert done["result"]["structuredContent"]["model"] == "sim-smart"
    assert "io.modelcontextprotocol/related-task" not in (done["result"].get("_meta") or {})
    # A client that did not declare the extension: -32021 for tasks/*, an ordinary answer for tools/call.
    refused = modern(proc, "tasks/get", {"taskId": task["taskId"]}, declare=False)
    assert refused["error"]["code"] == -32021
    assert refused["error"]["data"] == {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}
    plain = modern(
        proc, "tools/call", {"name": "chat", "arguments": {"prompt": "x", "model": "sim-smart"}}, declare=False
    )
    assert plain["result"]["resultType"] == "complete" and "structuredContent" in plain["result"], plain
    unknown = modern(proc, "tasks/get", {"taskId": "no-such-task"})
    assert unknown["error"]["code"] == -32602
    acknowledged = modern(proc, "tasks/cancel", {"taskId": task["taskId"]})  # already ended: an idempotent ack
    assert (
        acknowledged["result"] == {"resultType": "complete"} or acknowledged["result"].get("resultType") == "complete"
    )


async def test_two_daemons_on_one_postgresql_collect_and_cancel_each_others_tasks(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str
) -> None:
    shared = {"EXAI_DATABASE_URL": postgres_url, "EXAI_DATABASE_SCHEMA": pg_schema}
    first, second = secured(daemon, **shared), secured(daemon, **shared)
    sim.fault("think", model="sim-smart", think_seconds=2)
    started = ts_tasks(
        node_toolchain, first, "alice", "start", ["chat", {"prompt": "replica one", "model": "sim-smart"}]
    )
    settled = ts_tasks(node_toolchain, second, "alice", "settle", started["reference"])
    assert settled["status"] == "completed" and "echo: replica one" in settled["text"], settled
    sim.clear_faults()
    sim.fault("think", model="sim-smart", think_seconds=120)
    long = ts_tasks(node_toolchain, first, "alice", "start", ["chat", {"prompt": "cut remotely", "model": "sim-smart"}])
    await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the first daemon's model is working")
    asked = time.monotonic()
    cancelled = ts_tasks(node_toolchain, second, "alice", "cancel", long["reference"])
    assert "thrown" not in cancelled, cancelled
    assert cancelled["snapshot"]["status"] == "cancelled", cancelled  # as the answer to tasks/cancel said
    await wait_until(lambda: sim.count("disconnects") >= 1, "the first daemon cut its upstream request")
    cut_after = time.monotonic() - asked
    assert cut_after < 30, cut_after  # the owner looks for remote cancellations every second
    final = ts_tasks(node_toolchain, second, "alice", "settle", long["reference"])
    assert final["status"] == "cancelled", final


CONFORMANCE_SCENARIOS = {
    # The checks of each scenario that need none of the suite's fixture tools (greet, slow_compute, failing_job,
    # protocol_error_job, confirm_delete, multi_input, test_tool_with_task): a server of real tools has none.
    "tasks-capability-negotiation": {"tasks-extension-advertised", "sep-2663-tasks-methods-non-declaring"},
    "tasks-dispatch-and-envelope": {
        "sep-2663-tasks-result-removed-method-not-found",
        "tasks-removed-tasks-list",
        "sep-2663-tasks-get-invalid-task-id-32602",
    },
    "tasks-request-headers": {"tasks-headers-reject-mismatched-method"},
}


def test_the_conformance_suites_task_checks_that_need_no_fixture_tool_pass(
    node_toolchain: NodeToolchain, daemon: Daemon, tmp_path: Path
) -> None:
    proc = daemon()
    suite = node_toolchain.root / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
    for scenario, expected in CONFORMANCE_SCENARIOS.items():
        out = tmp_path / scenario
        node_toolchain.run(
            [suite, "server", "--url", f"{proc.url}/mcp", "--scenario", scenario, "-o", out], timeout=300
        )
        checks = {c["id"]: c for f in out.rglob("checks.json") for c in json.loads(f.read_text())}
        for check in expected | {"wire-schema-valid"}:
            assert checks.get(check, {}).get("status") == "SUCCESS", (scenario, check, checks.get(check))


def test_a_2025_client_with_an_open_stream_hears_when_its_task_ends(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    sim.fault("think", model="sim-smart", think_seconds=2)
    url = f"{proc.url}/mcp"
    headers = {"Accept": "application/json, text/event-stream"}
    with httpx2.Client(timeout=120) as http:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
        opened = http.post(
            url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
        )
        headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        heard: list[dict[str, Any]] = []
        listening = threading.Event()

        def listen() -> None:
            with httpx2.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}, timeout=120) as stream:
                listening.set()
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        heard.append(json.loads(line.removeprefix("data:")))
                        return

        threading.Thread(target=listen, daemon=True).start()
        assert listening.wait(60)
        params = {"name": "chat", "arguments": {"prompt": "tell me", "model": "sim-smart"}, "task": {}}
        created = http.post(
            url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
        )
        task_id = json.loads(created.text.split("data: ", 1)[1])["result"]["task"]["taskId"]
        wait_until_sync(lambda: bool(heard), "a notifications/tasks/status arrived on the open stream")
    note = heard[0]
    assert note["method"] == "notifications/tasks/status"
    assert note["params"]["taskId"] == task_id and note["params"]["status"] == "completed"
    assert note["params"]["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}


async def test_a_task_id_no_call_could_have_is_unknown_not_a_store_outage(
    daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str
) -> None:
    """An id with a NUL byte made PostgreSQL refuse the query, answered as "the store is unavailable, retry" (and
    counted nowhere); a 3 MB id went to the database. Neither can name a call: both are unknown tasks at once."""
    proc = secured(daemon, EXAI_DATABASE_URL=postgres_url, EXAI_DATABASE_SCHEMA=pg_schema)
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {token('alice')}"}
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    with httpx2.Client(base_url=proc.url, headers=headers, timeout=60) as http:
        opened = http.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
        http.headers.update({"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"})
        http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            for task_id in ("x\u0000", "\u001b[31mred", "y" * 3_000_000):
                answer = http.post(
                    "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": {"taskId": task_id}}
                )
                error = next(json.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:"))
                assert error["error"]["code"] == -32602, (method, error)
                message = error["error"]["message"]
                assert "not found" in message.lower() or "No call or task" in message, (method, message)
                assert "\u001b" not in message and "storage" not in message, (method, message)
    assert '"storage_failed"' not in proc.logs()
