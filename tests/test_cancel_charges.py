"""A cancelled call pays for what the upstream started: the prompt of a request that reached the model (and what had
streamed back) counts against the tenant's daily tokens and is audited; a call cancelled before its request was sent
costs nothing. Through the real daemon, counted on the simulator's side.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client

from exai.conversations.tokens import count_tokens
from tests.conftest import Proc, SimControl
from tests.helpers import cancel_once_upstream, text_of, tool_error, wait_until
from tests.test_accounting import audit_rows
from tests.test_long_calls import pending_of

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]
Daemon = Callable[..., Proc]
PROMPT = "word " * 2000  # about 2,000 tokens: two such prompts fit a budget of 5,000, three do not


async def test_a_call_cut_upstream_is_charged_its_prompt_and_one_cut_before_costs_nothing(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    proc = daemon(
        EXAI_RATE_LIMIT_TOKENS_PER_DAY="5000",
        EXAI_PROVIDER_CONCURRENCY="1",  # a second call waits for the provider: cancelled before it is sent
        EXAI_PROVIDER_CONCURRENCY_PER_TENANT="1",
        EXAI_CLIENT_WAIT_SECONDS="5",
    )
    sim.fault("think", model="sim-smart", think_seconds=300)
    args = {"prompt": PROMPT, "model": "sim-smart"}
    async with Client(f"{proc.url}/mcp") as client:
        upstream = pending_of(await client.call_tool("chat", args))
        await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the first call's request reached the upstream")
        waiting = pending_of(await client.call_tool("chat", args))  # holds no provider slot: never sent
        cut_before = await client.call_tool("collect", {"task_id": waiting["task_id"], "cancel": True})
        assert sim.count("requests") == 1, "the second call was cancelled before its request was sent"
        cut_upstream = await client.call_tool("collect", {"task_id": upstream["task_id"], "cancel": True})
        await wait_until(lambda: sim.count("disconnects") >= 1, "the simulator saw the first request cut")
        await cancel_once_upstream(lambda: client.call_tool("chat", args), sim)  # notifications/cancelled
        await wait_until(lambda: sim.count("disconnects") >= 2, "the simulator saw the third request cut")
        over = await client.call_tool("chat", args)
    assert tool_error(cut_before)["code"] == "cancelled"
    assert tool_error(cut_upstream)["code"] == "cancelled"
    assert tool_error(over)["code"] == "rate_limited_tokens", "two cut prompts spent the day's budget"
    assert sim.count("requests") == 2 and sim.count("completed") == 0, "only the two cut requests reached it"

    rows = [r for r in audit_rows({"EXAI_DATA_DIR": str(tmp_path / "data")}, expected=4) if r["tool"] == "chat"]
    cancelled = sorted((r for r in rows if r["outcome"] == "cancelled"), key=lambda r: r["input_tokens"])
    assert len(cancelled) == 3, rows
    assert cancelled[0]["input_tokens"] == cancelled[0]["output_tokens"] == 0, "cut before it was sent: free"
    prompt_tokens = count_tokens(PROMPT)
    for row in cancelled[1:]:
        assert row["model"] == "sim-smart" and row["input_tokens"] >= prompt_tokens, row
    calls = [r["outcome"] for r in rows if not r["outcome"].startswith(("cancelled", "task_"))]
    assert calls == ["rate_limited"], rows


async def test_attempts_cut_by_their_time_limit_are_charged_their_prompt(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    """An attempt that outlives EXAI_ATTEMPT_TIMEOUT_SECONDS was sent and started: the vendor bills its prompt, so the
    tenant's budget pays for it too, retries included. Otherwise a prompt that never finishes in time would spend
    the provider's money for free, (retries + 1) times a call."""
    proc = daemon(EXAI_RATE_LIMIT_TOKENS_PER_DAY="5000", EXAI_ATTEMPT_TIMEOUT_SECONDS="2", EXAI_MAX_RETRIES="1")
    sim.fault("think", model="sim-smart", think_seconds=300)  # never answers within an attempt's 2 s
    async with Client(f"{proc.url}/mcp") as client:
        timed_out = await client.call_tool("chat", {"prompt": PROMPT, "model": "sim-smart"})
        await wait_until(lambda: sim.count("disconnects") >= 2, "the simulator saw both attempts cut")
        over = await client.call_tool("chat", {"prompt": PROMPT, "model": "sim-fast"})
    assert tool_error(timed_out)["category"] == "timeout", text_of(timed_out)
    assert sim.count("requests") == 2, "two attempts reached the upstream, and nothing after them"
    assert tool_error(over)["code"] == "rate_limited_tokens", "two timed-out prompts spent the day's budget"

    rows = [r for r in audit_rows({"EXAI_DATA_DIR": str(tmp_path / "data")}, expected=2) if r["tool"] == "chat"]
    failed = [r for r in rows if r["outcome"] != "rate_limited"]
    assert len(failed) == 1 and failed[0]["model"] == "sim-smart", rows
    assert failed[0]["input_tokens"] >= 2 * count_tokens(PROMPT), failed[0]


async def test_a_custom_models_streamed_reasoning_counts_when_its_call_is_cut(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    """A Custom endpoint's model streams its reasoning in `reasoning_content`, which its entry does not name: the
    chunks went unread, so a call cut after seconds of streamed thinking was charged its prompt and 0 output (an
    attack round: let it think, cancel, pay for the prompt). The field OpenAI-compatible servers use is read now."""
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="0")
    sim.fault("think", model="sim-smart", think_seconds=300)  # a reasoning delta each second, then the answer

    heard: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")  # a client listening for progress: its call is streamed

    async with Client(f"{proc.url}/mcp") as client:
        await cancel_once_upstream(
            lambda: client.call_tool(
                "chat", {"prompt": "think, then be cut", "model": "sim-smart"}, progress_callback=on_progress
            ),
            sim,
            until=lambda: any("of reasoning" in message for message in heard),  # the daemon read some thinking
        )
    await wait_until(lambda: sim.count("disconnects") >= 1, "the simulator saw the request cut")
    rows = [r for r in audit_rows({"EXAI_DATA_DIR": str(tmp_path / "data")}, expected=1) if r["tool"] == "chat"]
    assert len(rows) == 1 and rows[0]["outcome"] == "cancelled", rows
    assert rows[0]["output_tokens"] > 0, "the reasoning streamed before the cut was not counted"
