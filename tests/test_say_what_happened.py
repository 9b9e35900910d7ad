"""Through the real daemon and the simulator: a cut answer is marked, an error inside a 200 answer surfaces the
upstream's message, and a 413 without a context-length body is `request_too_large`, not a context problem."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio


def _stored_answers(data_dir: Path, thread_id: str) -> list[dict[str, int]]:
    with sqlite3.connect(data_dir / "exai.db") as db:
        rows = db.execute("SELECT usage FROM turns WHERE thread_id = ? AND role = 'assistant'", (thread_id,))
        return [json.loads(usage) for (usage,) in rows]


@pytest.mark.parametrize("model", ["kimi-k2.6", "claude-sonnet-4-6"])
async def test_a_cut_answer_is_marked_in_data_text_and_stored_turn(
    daemon: Callable[..., Proc], sim: SimControl, tmp_path: Path, model: str
) -> None:
    proc = daemon()
    sim.fault("length", model=model, count=1)
    async with Client(f"{proc.url}/mcp") as client:
        cut = await client.call_tool("chat", {"prompt": "explain at length", "model": model})
        whole = await client.call_tool("chat", {"prompt": "and now briefly", "model": model})
    assert not cut.is_error, cut.content
    data = cut.structured_content or {}
    assert data["truncated"] is True and data["finish_reason"] in ("length", "max_tokens"), data
    text = text_of(cut)
    assert [line for line in text.splitlines() if line.startswith("[truncated:")], text
    assert "truncated" not in (whole.structured_content or {}) and "[truncated:" not in text_of(whole)
    assert _stored_answers(tmp_path / "data", data["continuation_id"]) == [
        {"input_tokens": data["usage"]["input_tokens"], "output_tokens": data["usage"]["output_tokens"], "truncated": 1}
    ]


async def test_a_cut_answer_in_a_documented_anthropic_shape_is_marked(
    daemon: Callable[..., Proc], sim: SimControl
) -> None:
    proc = daemon()
    sim.fault("replay", model="claude-sonnet-4-6", count=1, fixture="anthropic/message_max_tokens")
    async with Client(f"{proc.url}/mcp") as client:
        cut = await client.call_tool("chat", {"prompt": "steps?", "model": "claude-sonnet-4-6"})
    assert not cut.is_error and (cut.structured_content or {})["truncated"] is True, cut.content


async def test_an_error_inside_a_200_answer_surfaces_the_upstreams_message(
    daemon: Callable[..., Proc], sim: SimControl
) -> None:
    proc = daemon()
    sim.fault("error_in_200", model="kimi-k2.6")
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("chat", {"prompt": "p", "model": "kimi-k2.6"})
    error = tool_error(result)
    assert "simulated provider error inside a 200 answer" in error["message"], error
    assert "no choices" not in error["message"]


@pytest.mark.parametrize("model", ["kimi-k2.6", "claude-opus-4-7"])
async def test_a_413_without_a_context_length_body_is_request_too_large(
    daemon: Callable[..., Proc], sim: SimControl, model: str
) -> None:
    proc = daemon()
    sim.fault("413", model=model)
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("chat", {"prompt": "p", "model": model})
    error = tool_error(result)
    assert error["code"] == "request_too_large" and "context window" not in error["message"], error
    assert sim.count(f"requests:{model}") == 1, "never retried"
