"""Clients we did not write, against a real daemon over Streamable HTTP: the official TypeScript SDK (what Claude
Code, Cursor, VS Code and the Inspector are built on) and the MCP Inspector CLI.

The TypeScript SDK checks a result's structured content against the tool's output schema even when `isError` is
set, so a tool error must be a result that every client can read: the tests assert that each error kind reaches
the client as an `isError` result whose text carries the real message, not as the SDK's schema complaint.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc, SimControl, free_port, start_exai
from tests.node_toolchain import NodeToolchain

# The first run installs Node and the clients from npm inside the session fixture (tests/node_toolchain.py).
pytestmark = pytest.mark.timeout(600)
Daemon = Callable[..., Proc]
UNKNOWN_THREAD = "0b5e0c1e-0000-4000-8000-000000000000"
# For each error kind: its code and the words of the real message the client must see.
ERROR_KINDS = {
    "unknown_model": ("unknown_model", "Model 'no-such-model' is unknown"),
    "unknown_thread": ("thread_not_found", f"Thread {UNKNOWN_THREAD} does not exist"),
    "invalid_arguments": ("invalid_arguments", "prompt: String should have at least 1 character"),
    "upstream_failure": ("upstream_error", "simulated upstream failure"),
    "no_provider": ("no_provider", "No model provider is configured"),
}


@pytest.fixture
def bare_daemon(tmp_path: Path) -> Iterator[Proc]:
    """A daemon with no provider configured at all: what a first-time user starts."""
    port = free_port()
    proc = start_exai(["serve"], {**os.environ, "EXAI_PORT": str(port)}, tmp_path / "bare-daemon.log", port)
    yield proc
    proc.stop(signal.SIGKILL)


def typescript_client(node: NodeToolchain, proc: Proc, *scenarios: str) -> dict[str, Any]:
    done = node.run([node.script("client.mjs"), f"{proc.url}/mcp", *scenarios])
    assert done.returncode == 0, f"the TypeScript client failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    steps: dict[str, Any] = json.loads(done.stdout)["steps"]
    return steps


def unreadable_errors(steps: dict[str, Any]) -> list[str]:
    """Every error kind that did not arrive as a readable isError result carrying its real message."""
    problems = []
    for kind, outcome in steps.items():
        code, message = ERROR_KINDS[kind]
        if "thrown" in outcome:
            problems.append(f"{kind}: the SDK raised instead of returning the error: {outcome['thrown'][:300]}")
        elif not outcome["isError"]:
            problems.append(f"{kind}: not an isError result: {outcome['text'][:300]}")
        elif code not in outcome["text"] or message not in outcome["text"]:
            problems.append(f"{kind}: the text lacks '{code}' or '{message}': {outcome['text'][:300]}")
        elif not re.search(r"correlation[ _]id", outcome["text"], re.IGNORECASE):
            problems.append(f"{kind}: the text carries no correlation id: {outcome['text'][:300]}")
    return problems


def test_typescript_sdk_client_chats_continues_and_runs_a_workflow(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl
) -> None:
    steps = typescript_client(node_toolchain, daemon(), "tour")
    assert {"chat", "thinkdeep", "consensus", "status"} <= set(steps["list_tools"]["names"])
    for name in ("chat", "chat_continued", "thinkdeep_step_1", "thinkdeep_step_2"):
        assert "thrown" not in steps[name] and not steps[name]["isError"], f"{name}: {steps[name]}"
    first, continued = steps["chat"]["structuredContent"], steps["chat_continued"]["structuredContent"]
    assert "echo: first question" in first["answer"]
    assert continued["continuation_id"] == first["continuation_id"]
    assert "turns: 3" in continued["answer"] and continued["earlier_turns_included"] == 2
    step_1, step_2 = steps["thinkdeep_step_1"]["structuredContent"], steps["thinkdeep_step_2"]["structuredContent"]
    assert step_1["status"] == "in_progress" and step_1["steps_recorded"] == [1]
    assert step_2["status"] == "complete" and step_2["steps_recorded"] == [1, 2]
    assert step_2["continuation_id"] == step_1["continuation_id"] and step_2["expert_analysis"]
    assert sim.count("requests") == 3  # two chats and one expert analysis; the first workflow step asks no model


def test_typescript_sdk_client_reads_every_kind_of_tool_error(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl, bare_daemon: Proc
) -> None:
    proc = daemon()
    steps = typescript_client(node_toolchain, proc, "unknown_model", "unknown_thread", "invalid_arguments")
    sim.fault("500")  # every model, every attempt: the router's retries and fallbacks all fail
    steps |= typescript_client(node_toolchain, proc, "upstream_failure")
    steps |= typescript_client(node_toolchain, bare_daemon, "no_provider")
    assert set(steps) == set(ERROR_KINDS)
    problems = unreadable_errors(steps)
    assert not problems, "tool errors the TypeScript SDK could not read:\n" + "\n".join(problems)


def inspector_call(node: NodeToolchain, proc: Proc, home: Path, *tool_args: str) -> Any:
    """`npx @modelcontextprotocol/inspector --cli URL --transport http --method tools/call --tool-name chat ...`."""
    return node.run(
        [
            node.inspector,
            "--cli",
            f"{proc.url}/mcp",
            "--transport",
            "http",
            "--method",
            "tools/call",
            "--tool-name",
            "chat",
            "--tool-arg",
            *tool_args,
        ],
        HOME=str(home),  # the Inspector keeps a server catalogue in ~/.mcp-inspector: not the user's
    )


def test_inspector_cli_prints_results_and_exits_5_on_a_tool_error(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    proc = daemon()
    ok = inspector_call(node_toolchain, proc, tmp_path, "prompt=hello from the inspector", "model=sim-fast")
    assert ok.returncode == 0, ok.stderr[-2000:]
    result = json.loads(ok.stdout)
    assert result["isError"] is False and "echo: hello from the inspector" in result["structuredContent"]["answer"]

    failed = inspector_call(node_toolchain, proc, tmp_path, "prompt=hello", "model=no-such-model")
    # The Inspector prints the result, then exits with its TOOL_ERROR code (5) for an isError result; a result
    # it cannot read ends with exit 1 and a schema complaint instead.
    assert failed.returncode == 5, (
        f"exit {failed.returncode}\nstdout: {failed.stdout[-1500:]}\nstderr: {failed.stderr[-1500:]}"
    )
    error = json.loads(failed.stdout)
    text = " ".join(block["text"] for block in error["content"] if block["type"] == "text")
    assert error["isError"] is True and "Model 'no-such-model' is unknown" in text and "unknown_model" in text
    assert "returned isError:true" in failed.stderr


def test_a_typescript_client_without_tasks_gets_a_pending_answer_it_accepts_and_collects(
    node_toolchain: NodeToolchain, daemon: Daemon, sim: SimControl
) -> None:
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="1")
    sim.fault("think", model="sim-smart", think_seconds=4)
    steps = typescript_client(node_toolchain, proc, "answer_later")
    slow = steps["slow_chat"]
    assert "thrown" not in slow, slow  # the SDK's output-schema check accepts the pending shape
    assert not slow["isError"] and "still working" in slow["text"]
    collected = steps["collect"]
    assert "thrown" not in collected and not collected["isError"], collected
    assert collected["structuredContent"]["model"] == "sim-smart"
    assert sim.count("requests:sim-smart") == 1
