"""Reading or cancelling a call needs a scope that allows the tool that made it, and /mcp needs a tool scope at all;
`tasks/*` requests, which read the store, count against a per-tenant window of their own.

Raw JSON-RPC against a real daemon, as a tenant holding several tokens of different reach would send it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import wait_until_sync

Daemon = Callable[..., Proc]
HELLO = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}


def bearer(tenant: str, scopes: list[str]) -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(TEST_JWT_SECRET, tenant, scopes, 600)}"}


class Session:
    """A 2025-11-25 session opened with one token; `rpc` sends a request and returns its JSON-RPC answer."""

    def __init__(self, proc: Proc, auth: dict[str, str]) -> None:
        self.url = f"{proc.url}/mcp"
        self.headers = {"accept": "application/json, text/event-stream", **auth}
        self.opened = httpx2.post(
            self.url, headers=self.headers, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": HELLO}
        )
        if self.opened.status_code == 200:
            self.headers |= {
                "mcp-session-id": self.opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            httpx2.post(self.url, headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        answer = httpx2.post(self.url, headers=self.headers, json=body, timeout=120)
        for line in answer.text.splitlines():
            if line.startswith("data: ") and '"id"' in line:
                parsed: dict[str, Any] = json.loads(line[6:])
                return parsed
        raise AssertionError(f"no JSON-RPC answer in {answer.status_code} {answer.text[:300]!r}")


def test_a_token_that_may_call_no_tool_is_refused_on_mcp_saying_which_scope_it_needs(
    daemon: Daemon, sim: SimControl
) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    for scopes in (["exai:metrics"], ["exai:tool:version,exai:admin"], ["exai:tool:nosuchtool"], []):
        refused = Session(proc, bearer("alice", scopes)).opened
        assert refused.status_code == 403, (scopes, refused.status_code, refused.text)
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        assert "exai:tools" in refused.json()["error"]["message"], refused.text
    for scopes in (["exai:tool:version"], ["exai:admin"], ["exai:metrics", "exai:tools"]):
        assert Session(proc, bearer("alice", scopes)).opened.status_code == 200, scopes


def test_a_token_without_the_calls_tool_can_neither_read_nor_cancel_it(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    sim.fault("think", model="sim-smart", think_seconds=3)
    owner = Session(proc, bearer("alice", ["exai:tools"]))
    params = {"name": "chat", "arguments": {"prompt": "mine", "model": "sim-smart"}, "task": {}}
    task_id = owner.rpc("tools/call", params)["result"]["task"]["taskId"]

    narrow = Session(proc, bearer("alice", ["exai:tool:version"]))  # the same tenant, a token for `version` only
    for method in ("tasks/get", "tasks/result", "tasks/cancel"):
        answer = narrow.rpc(method, {"taskId": task_id})
        assert answer["error"]["code"] == -32602 and "Task not found" in answer["error"]["message"], (method, answer)
    listed = narrow.rpc("tasks/list", {})["result"]["tasks"]
    assert task_id not in [task["taskId"] for task in listed]
    for arguments in ({"task_id": task_id}, {"task_id": task_id, "cancel": True}):
        collected = narrow.rpc("tools/call", {"name": "collect", "arguments": arguments})["result"]
        assert collected["isError"] and collected["_meta"]["exai/error"]["code"] == "unknown_task", collected

    assert task_id in [task["taskId"] for task in owner.rpc("tasks/list", {})["result"]["tasks"]]
    wait_until_sync(
        lambda: owner.rpc("tasks/get", {"taskId": task_id})["result"]["status"] != "working", "the task to end"
    )
    assert owner.rpc("tasks/get", {"taskId": task_id})["result"]["status"] == "completed", "never cancelled"
    answer = owner.rpc("tasks/result", {"taskId": task_id})["result"]
    assert not answer.get("isError") and "mine" in json.dumps(answer), answer
    assert sim.count("disconnects") == 0


def test_task_requests_count_against_a_window_of_their_own(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_RATE_LIMIT_RPM="3", EXAI_RATE_LIMIT_TASK_RPM="6")
    mallory = Session(proc, bearer("mallory", ["exai:tools"]))
    called = [mallory.rpc("tools/call", {"name": "version", "arguments": {}})["result"] for _ in range(4)]
    assert [c.get("isError", False) for c in called] == [False, False, False, True]
    assert called[-1]["_meta"]["exai/error"]["code"] == "rate_limited_rpm", "the tool budget is spent"

    requests = [("tasks/list", {}), ("tasks/get", {"taskId": "no-such-task"})] * 3
    answers = [mallory.rpc(method, params) for method, params in requests]
    assert "result" in answers[0] and answers[1]["error"]["message"].startswith("Failed to retrieve task")
    assert all("rate_limited" not in json.dumps(answer) for answer in answers), "six fit the tasks window"
    for method, params in [("tasks/list", {}), ("tasks/get", {"taskId": "x"}), ("tasks/cancel", {"taskId": "x"})]:
        refused = mallory.rpc(method, params)["error"]
        assert refused["code"] == -32602, refused
        assert refused["data"]["category"] == "rate_limit" and refused["data"]["code"] == "rate_limited_tasks"
        assert refused["data"]["retryable"] and refused["data"]["details"]["retry_after_seconds"] > 0, refused
        assert "6 task requests" in refused["message"], refused
    assert "result" in Session(proc, bearer("alice", ["exai:tools"])).rpc("tasks/list", {}), "another tenant"


def test_collect_counts_against_the_task_window_like_the_polls_it_stands_for(daemon: Daemon, sim: SimControl) -> None:
    """`collect` holds no slot of its own (the call it waits for holds one), so it used to count against no limit:
    150 calls a second, each reading the store and writing an audit row."""
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_RATE_LIMIT_TASK_RPM="3")
    mallory = Session(proc, bearer("mallory", ["exai:tools"]))
    params = {"name": "collect", "arguments": {"task_id": "0" * 32}}
    answers = [mallory.rpc("tools/call", params)["result"] for _ in range(4)]
    codes = [a["_meta"]["exai/error"]["code"] for a in answers]
    assert codes == ["unknown_task"] * 3 + ["rate_limited_tasks"], codes
    assert "collect" in answers[-1]["content"][0]["text"], answers[-1]
    alice = Session(proc, bearer("alice", ["exai:tools"]))
    assert alice.rpc("tools/call", params)["result"]["_meta"]["exai/error"]["code"] == "unknown_task", "her own window"


def test_an_unknown_task_id_is_echoed_with_its_control_characters_escaped(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    mallory = Session(proc, bearer("mallory", ["exai:tools"]))
    message = mallory.rpc("tasks/get", {"taskId": "\x1b[31mRED\n\rfake log line"})["error"]["message"]
    assert "Task not found" in message and not any(ord(c) < 32 for c in message), repr(message)


def test_a_negative_task_ttl_is_refused_as_invalid_before_anything_is_spent(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    alice = Session(proc, bearer("alice", ["exai:tools"]))
    params = {"name": "chat", "arguments": {"prompt": "keep it", "model": "sim-fast"}, "task": {"ttl": -5}}
    refused = alice.rpc("tools/call", params)["error"]
    assert refused["code"] == -32602 and refused["data"]["code"] == "invalid_task_ttl", refused
    assert refused["data"]["category"] == "validation" and "cannot be negative" in refused["message"], refused
    assert alice.rpc("tasks/list", {})["result"]["tasks"] == [], "no task was recorded"
    assert sim.count("requests:sim-fast") == 0, "nothing was sent upstream"
    params["task"] = {"ttl": 0}
    assert alice.rpc("tools/call", params)["result"]["task"]["taskId"], "a ttl of 0 takes the server's default"
