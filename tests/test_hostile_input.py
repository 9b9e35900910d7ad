"""Hostile and malformed input against the real daemon: clear errors, no crash, nothing lost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    past a gigabyte in 20 calls. Text inside lists and objects is limited in all, and a run's kept text too."""
    proc = daemon()
    issues = [{"severity": "low", "description": "d" * 99_000} for _ in range(38)]
    step: dict[str, Any] = {"step_number": 1, "total_steps": 9, "next_step_required": True, "model": "sim-fast"}
    async with Client(f"{proc.url}/mcp") as client:
        bulky = await client.call_tool("analyze", {**step, "step": "look", "issues_found": issues})
        error = tool_error(bulky)
        assert error["category"] == "validation" and "in all" in error["message"], error
        assert len(text_of(bulky)) < 2000, "the error does not echo the input back"

        wide = {"step": "s" * 90_000, "findings": "f" * 90_000, "hypothesis": "h" * 90_000}
        first = await client.call_tool("analyze", {**step, **wide})
        assert not first.is_error, text_of(first)
        thread = first.structured_content["continuation_id"] if first.structured_content else None
        assert thread
        kept = [await client.call_tool("analyze", {**step, **wide, "step_number": 2, "continuation_id": thread})]
        assert tool_error(kept[0])["code"] == "workflow_too_large", text_of(kept[0])
        again = await client.call_tool("analyze", {**step, **wide, "continuation_id": thread})  # step 1 sent again
        assert not again.is_error, "a step sent again replaces its earlier version: " + text_of(again)
