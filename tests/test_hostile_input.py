"""Hostile and malformed input against the real daemon: clear errors, no crash, nothing lost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def test_malformed_http_requests_are_refused_cleanly(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    url = f"{proc.url}/mcp"
    async with httpx2.AsyncClient(timeout=10) as http:
        garbage = [
            b"{not json",
            b"[]",
            b'{"jsonrpc": "2.0"}',
            b'{"jsonrpc": "1.0", "id": 1, "method": "tools/list"}',
            b'{"jsonrpc": "2.0", "id": 1, "method": "\\ud800"}',
            b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            b"\xff\xfe\x00garbage",
            b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"x": "' + b"a" * 6_000_000 + b'"}}',
        ]
        for body in garbage:
            response = await http.post(url, content=body, headers=MCP_HEADERS)
            assert 400 <= response.status_code < 500, (body[:40], response.status_code, response.text[:200])
        assert (await http.get(f"{proc.url}/healthz")).status_code == 200


async def test_hostile_tool_arguments_get_validation_errors(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    hostile: list[dict[str, Any]] = [
        {"prompt": {"$gt": ""}},
        {"prompt": ["a"] * 10_000},
        {"prompt": "x", "images": ["javascript:alert(1)"]},
        {"prompt": "x", "files": ["../../../../etc/passwd"]},
        {"prompt": "x", "continuation_id": "' OR 1=1 --"},
        {"prompt": "x", "temperature": -1},
        {"prompt": "x", "model": "a" * 10_000},
        {"prompt": "\u0000 NUL \x00", "model": "sim-fast", "files": []},
        {"prompt": "\u202e\ufeff zero-width and bidi", "model": "sim-fast"},
    ]
    async with Client(f"{proc.url}/mcp") as client:
        await client.list_tools()
        for args in hostile:
            result = await client.call_tool("chat", args)
            if args.get("model") == "sim-fast" and "files" not in args:
                assert not result.is_error, "odd but valid text is simply passed on"
                assert "zero-width and bidi" in text_of(result)
                continue
            assert result.is_error, args
            error = tool_error(result)
            assert error["category"] in ("validation", "not_found", "permission"), error
            assert len(text_of(result)) < 2000, "errors do not echo huge inputs back"
        ok = await client.call_tool("chat", {"prompt": "still fine?", "model": "sim-fast"})
    assert not ok.is_error
    status = httpx2.get(f"{proc.url}/readyz").json()
    assert status["ready"]


async def test_a_workflow_cannot_be_made_to_store_megabytes_per_call(daemon: Daemon, sim: SimControl) -> None:
    """Intermediate workflow steps ask no model and cost no tokens, so their size is what bounds a thread's growth:
    38 issues of 99,000 characters were one call's 3.7 MB (stored three times over), and a run grew a SQLite file
    past a gigabyte in 20 calls. A step's text is limited in all, top-level fields included, and a run's kept text
    too, checked on the thread as committed: steps sent at once on four sessions cannot pass it together."""
    proc = daemon()
    issues = [{"severity": "low", "description": "d" * 99_000} for _ in range(38)]
    step: dict[str, Any] = {"step_number": 1, "total_steps": 9, "next_step_required": True, "model": "sim-fast"}
    async with Client(f"{proc.url}/mcp") as client:
        for bulky in (
            {"step": "look", "issues_found": issues},
            {"step": "s" * 100_000, "findings": "f" * 100_000, "hypothesis": "h" * 100_000, "issues_found": issues[:2]},
        ):
            refused = await client.call_tool("analyze", {**step, **bulky})
            error = tool_error(refused)
            assert error["category"] == "validation" and "in all" in error["message"], error
            assert len(text_of(refused)) < 2000, "the error does not echo the input back"
        # other tools' nested text is not a step's: two 60,000-character stance prompts are fine
        members = [{"model": "sim-fast", "stance": s, "stance_prompt": "p" * 60_000} for s in ("for", "against")]
        assert not (await client.call_tool("consensus", {"prompt": "decide", "models": members})).is_error

        first = await client.call_tool("debug", {**step, "step": "start"})
        assert first.structured_content
        thread = first.structured_content["continuation_id"]
    wide = {"step": "s" * 100_000, "findings": "f" * 100_000, "hypothesis": "h" * 100_000}  # 300,000 a step

    async def send(number: int) -> Any:
        async with Client(f"{proc.url}/mcp") as session:
            args = {**step, **wide, "step_number": number, "continuation_id": thread}
            return await session.call_tool("debug", args)

    results: list[Any] = [None] * 8
    async with anyio.create_task_group() as group:
        for n in range(8):

            async def one(n: int = n) -> None:
                results[n] = await send(n + 2)

            group.start_soon(one)
    accepted = [n + 2 for n, r in enumerate(results) if not r.is_error]
    codes = {tool_error(r)["code"] for r in results if r.is_error}
    assert len(accepted) == 6 and codes == {"workflow_too_large"}, (accepted, codes)  # 6 x 300,000 + the first step
    last = max(accepted)  # the run is full, and can still be finished as its remedy says
    final = {**step, "step_number": last, "step": "done", "next_step_required": False, "use_assistant_model": False}
    async with Client(f"{proc.url}/mcp") as client:
        another = await client.call_tool("analyze", {**step, **wide, "continuation_id": thread})
        finished = await client.call_tool("debug", {**final, "continuation_id": thread})
    assert not finished.is_error, text_of(finished)
    assert tool_error(another)["code"] == "workflow_too_large", "a thread's runs of every tool count together"
    assert finished.structured_content and finished.structured_content["status"] == "complete_without_expert"
