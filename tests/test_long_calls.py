"""Long calls through the real daemon: answers that outlive the client's patience are kept and collected later.

The simulator's `think` fault makes a model reason for seconds before it answers; its counters show how often the
prompt reached the upstream, so "paid once" and "never paid for a lost answer" are counted on the upstream's side.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult

from exai.providers.catalogue import Catalogue, custom_model_info
from exai.providers.quirks import will_think
from exai.providers.types import GenerateRequest, ThinkingMode
from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl, sim_env
from tests.helpers import hold_writes, mcp_client, text_of, tool_error, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def pending_of(result: CallToolResult) -> dict[str, Any]:
    """The pending handle of an answer-later result, checked to be a normal, readable, non-error result."""
    assert not result.is_error, result
    pending: dict[str, Any] = (result.meta or {})["exai/pending"]
    assert result.structured_content == {"pending": pending}
    assert pending["next_call"] == {"name": "collect", "arguments": {"task_id": pending["task_id"]}}
    text = text_of(result)
    assert "still working" in text and pending["task_id"] in text and "collect" in text, text
    return pending


def openai_at(sim: SimControl) -> dict[str, str]:
    """The OpenAI provider's settings, pointed at the simulator (its reasoning models think in silence there)."""
    return {"OPENAI_API_KEY": "sk-test-openai-secret", "OPENAI_BASE_URL": sim.openai_url}


def call_status(data_dir: Path, task_id: str) -> str | None:
    with sqlite3.connect(data_dir / "exai.db") as db:
        row = db.execute("SELECT status FROM calls WHERE id = ?", (task_id,)).fetchone()
    return row[0] if row else None


async def test_a_call_longer_than_the_client_wait_comes_back_pending_and_is_collected_once(
    daemon: Daemon, sim: SimControl
) -> None:
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="2")
    sim.fault("think", model="sim-smart", think_seconds=6)
    async with Client(f"{proc.url}/mcp") as client:
        first = await client.call_tool("chat", {"prompt": "think slowly", "model": "sim-smart"})
        pending = pending_of(first)  # the client wait (2 s) ended before the answer (6 s): no clock needed
        collected = await client.call_tool(**pending["next_call"])
        while not collected.is_error and "exai/pending" in (collected.meta or {}):  # a busy machine: ask again
            collected = await client.call_tool(**pending["next_call"])
        # the same result a synchronous call would have returned
        plain = await client.call_tool("chat", {"prompt": "think slowly", "model": "sim-fast"})
    assert not collected.is_error, collected
    assert collected.structured_content is not None and plain.structured_content is not None
    assert collected.structured_content.keys() == plain.structured_content.keys()
    assert collected.structured_content["model"] == "sim-smart"
    assert collected.structured_content["answer"] in text_of(collected)
    assert sim.count("requests:sim-smart") == 1  # asked once, paid once
    async with Client(f"{proc.url}/mcp") as client:  # collected again, from another connection: the same answer
        again = await client.call_tool(**pending["next_call"])
    assert again.structured_content == collected.structured_content
    assert sim.count("requests:sim-smart") == 1


async def test_an_answer_that_arrived_survives_a_sigkill_and_is_collected_after_the_restart(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="1")
    sim.fault("think", model="sim-smart", think_seconds=3)
    async with Client(f"{proc.url}/mcp") as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "keep this", "model": "sim-smart"}))
    await wait_until(lambda: call_status(data_dir, pending["task_id"]) == "completed", "the answer was recorded")
    proc.stop(signal.SIGKILL)
    restarted = daemon(EXAI_CLIENT_WAIT_SECONDS="1")
    async with Client(f"{restarted.url}/mcp") as client:
        collected = await client.call_tool(**pending["next_call"])
    assert not collected.is_error, collected
    assert collected.structured_content is not None and collected.structured_content["model"] == "sim-smart"
    assert sim.count("requests:sim-smart") == 1  # the upstream saw the prompt once


async def test_a_call_whose_daemon_died_midway_ends_as_lost_after_its_lease(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    settings = {"EXAI_CLIENT_WAIT_SECONDS": "1", "EXAI_CALL_LEASE_SECONDS": "3"}
    proc = daemon(**settings)
    sim.fault("think", model="sim-smart", think_seconds=120)
    async with Client(f"{proc.url}/mcp") as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "lost", "model": "sim-smart"}))
    await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the model is working on the prompt")
    proc.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    restarted = daemon(**settings)
    async with Client(f"{restarted.url}/mcp") as client:
        result = await client.call_tool(**pending["next_call"])
        while not result.is_error:  # still working until the lease (3 s) has run out
            assert time.monotonic() - killed_at < 60, "the lost call stayed 'working'"
            result = await client.call_tool(**pending["next_call"])
    error = tool_error(result)
    assert error["code"] == "call_lost"
    assert "stopped before the answer arrived" in error["message"] and "call the tool again" in error["message"]
    assert call_status(tmp_path / "data", pending["task_id"]) == "failed"
    assert sim.count("requests:sim-smart") == 1  # never run again behind the tenant's back


async def test_another_tenant_cannot_collect_a_call(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="1", EXAI_JWT_SECRET=TEST_JWT_SECRET)
    sim.fault("think", model="sim-smart", think_seconds=2)
    async with as_tenant(proc, "alice", ["exai:tool:chat"]) as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "mine", "model": "sim-smart"}))
    async with as_tenant(proc, "mallory", ["exai:tools"]) as client:
        stolen = await client.call_tool(**pending["next_call"])
        unknown = await client.call_tool("collect", {"task_id": "no-such-task"})
    assert tool_error(stolen)["code"] == tool_error(unknown)["code"] == "unknown_task"
    async with as_tenant(proc, "alice", ["exai:tool:chat"]) as client:  # a narrow token may collect its own
        mine = await client.call_tool(**pending["next_call"])
        while "exai/pending" in (mine.meta or {}):
            mine = await client.call_tool(**pending["next_call"])
    assert not mine.is_error, mine


@asynccontextmanager
async def as_tenant(proc: Proc, tenant: str, scopes: list[str]) -> AsyncIterator[Client]:
    token = issue_token(TEST_JWT_SECRET, tenant, scopes, 600)
    async with mcp_client(proc.url, token, timeout=120) as client:
        yield client


async def collect_all(client: Client, pending: dict[str, Any]) -> CallToolResult:
    """Call `next_call` until the answer is there (a busy machine may need more than one round)."""
    result = await client.call_tool(**pending["next_call"])
    while not result.is_error and "exai/pending" in (result.meta or {}):
        result = await client.call_tool(**pending["next_call"])
    return result


async def test_a_model_cut_by_the_attempt_limit_names_that_limit(daemon: Daemon, sim: SimControl) -> None:
    """The error said "raise EXAI_CALL_DEADLINE_SECONDS", which a user did, and the next call was cut at the same
    45 s: the attempt's limit had cut it. It now says which limit, and that both must be raised."""
    proc = daemon(EXAI_ATTEMPT_TIMEOUT_SECONDS="2", EXAI_MAX_RETRIES="0", EXAI_CLIENT_WAIT_SECONDS="0")
    sim.fault("hang", model="sim-smart", hang_seconds=60)  # silent: nothing to tell a thinking model from a hung one
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("chat", {"prompt": "too slow", "model": "sim-smart"})
    error = tool_error(result)
    assert error["code"] == "upstream_timeout", error
    assert "EXAI_ATTEMPT_TIMEOUT_SECONDS" in error["message"] and "2 s without a word" in error["message"], error
    assert "EXAI_ATTEMPT_TIMEOUT_SECONDS" in error["remedy"] and "EXAI_CALL_DEADLINE_SECONDS" in error["remedy"]


@pytest.mark.parametrize(("model", "thinking"), [("kimi-k2-thinking", "off"), ("kimi-k2.6", "medium")])
async def test_a_model_that_streams_its_thinking_is_not_cut_by_the_attempt_limit(
    daemon: Daemon, sim: SimControl, model: str, thinking: str
) -> None:
    """On the shipped defaults the attempt's limit (45 s) cut every model that thought longer, at the moment a
    client without Tasks would have had its pending answer (EXAI_CLIENT_WAIT_SECONDS, 45): there was never anything
    to collect. A model that will think (one that always does, or one asked to) is now asked to stream, and runs on
    while it speaks, up to the call's deadline: here it thinks 3 times the attempt's limit, streaming its reasoning,
    and the client, which stopped waiting after 1 s, collects the answer."""
    proc = daemon(EXAI_ATTEMPT_TIMEOUT_SECONDS="2", EXAI_MAX_RETRIES="0", EXAI_CLIENT_WAIT_SECONDS="1")
    sim.fault("think", model=model, think_seconds=6)
    async with Client(f"{proc.url}/mcp") as client:
        first = await client.call_tool("chat", {"prompt": "thinks aloud", "model": model, "thinking_mode": thinking})
        assert not first.is_error, text_of(first)
        pending = (first.meta or {})["exai/pending"]
        result = await collect_all(client, pending)
    assert not result.is_error, text_of(result)
    assert "thinks aloud" in text_of(result)
    counters = sim.stats()["counters"]
    assert counters[f"requests:{model}"] == counters[f"completed:{model}"] == 1, counters  # asked once


async def test_a_model_that_thinks_in_silence_has_the_thinking_limit_before_its_first_word(
    daemon: Daemon, sim: SimControl
) -> None:
    """OpenAI's reasoning models stream an empty chunk, then nothing until the answer: on the shipped defaults the
    attempt's limit (45 s of silence) cut every such model that thought longer, and the prompt was paid for. A
    model that will think may now stay silent EXAI_THINKING_TIMEOUT_SECONDS before its first word: here it thinks
    3 times the attempt's limit in silence and the client, which stopped waiting after 1 s, collects the answer."""
    proc = daemon(
        EXAI_ATTEMPT_TIMEOUT_SECONDS="2",
        EXAI_MAX_RETRIES="0",
        EXAI_CLIENT_WAIT_SECONDS="1",
        **openai_at(sim),
    )
    sim.fault("think", model="gpt-5.5", think_seconds=6, silent=True)
    async with Client(f"{proc.url}/mcp") as client:
        args = {"prompt": "thinks quietly", "model": "gpt-5.5", "thinking_mode": "high"}
        first = await client.call_tool("chat", args)
        result = await collect_all(client, pending_of(first))
    assert not result.is_error, text_of(result)
    assert "thinks quietly" in text_of(result)
    assert sim.count("requests:gpt-5.5") == sim.count("completed:gpt-5.5") == 1  # asked once


async def test_a_thinking_model_that_spoke_then_stalls_is_cut_by_the_attempt_limit(
    daemon: Daemon, sim: SimControl
) -> None:
    """Past its first word a thinking model has the attempt's limit again, not its longer thinking limit: one that
    reasons aloud and then goes silent (hung mid-answer) is cut by EXAI_ATTEMPT_TIMEOUT_SECONDS, and says so."""
    proc = daemon(
        EXAI_ATTEMPT_TIMEOUT_SECONDS="2",
        EXAI_THINKING_TIMEOUT_SECONDS="120",
        EXAI_MAX_RETRIES="0",
        EXAI_CLIENT_WAIT_SECONDS="0",
    )
    sim.fault("think", model="kimi-k2.6", think_seconds=2, stall_seconds=300)
    async with Client(f"{proc.url}/mcp") as client:
        started = time.monotonic()
        result = await client.call_tool("chat", {"prompt": "stalls", "model": "kimi-k2.6", "thinking_mode": "high"})
    # cut about 2 s after its last word; the thinking limit would have cut it at 120 s (a wide margin, not a bound)
    assert time.monotonic() - started < 60, "cut by the thinking limit: the attempt's limit was not moved back"
    error = tool_error(result)
    assert "2 s without a word" in error["message"] and "EXAI_ATTEMPT_TIMEOUT_SECONDS" in error["message"], error


async def test_a_model_cut_by_the_thinking_limit_gives_way_to_its_fallback(daemon: Daemon, sim: SimControl) -> None:
    """Not asked again, the model cut while thinking hands the call to the fallback chain, with the rest of the
    deadline: the answer comes from the next model, and the cut one was asked once."""
    proc = daemon(
        EXAI_THINKING_TIMEOUT_SECONDS="2",
        EXAI_MAX_RETRIES="2",
        EXAI_CLIENT_WAIT_SECONDS="0",
        EXAI_FALLBACK_CHAIN="sim-fast",
        EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true",
        **openai_at(sim),
    )
    sim.fault("think", model="gpt-5.5", think_seconds=60, silent=True)
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("chat", {"prompt": "falls back", "model": "gpt-5.5", "thinking_mode": "high"})
    assert not result.is_error, text_of(result)
    data = result.structured_content or {}
    assert data["model"] == "sim-fast" and data["fallbacks"] == ["sim-fast"], data
    assert sim.count("requests:gpt-5.5") == 1 and sim.count("completed:sim-fast") == 1


async def test_a_thinking_model_cut_by_the_calls_deadline_does_not_count_against_its_breaker(
    daemon: Daemon, sim: SimControl
) -> None:
    """A model still reasoning aloud when the call's own deadline cut it was counted as a failing upstream: a few
    long `thinkdeep` calls opened its breaker, and the tenant's next calls were refused `breakers_open` with the
    model healthy. The deadline is the call's budget, not a verdict on a model that speaks; one that said nothing
    still counts (below)."""
    model = "kimi-k2.6"
    proc = daemon(
        EXAI_CALL_DEADLINE_SECONDS="5",  # room for the first chunk on a busy machine
        EXAI_BREAKER_FAILURE_THRESHOLD="1",
        EXAI_MAX_RETRIES="0",
        EXAI_CLIENT_WAIT_SECONDS="0",
        **openai_at(sim),
    )
    sim.fault("think", model=model, think_seconds=60)
    args = {"prompt": "ponders at length", "model": model, "thinking_mode": "high"}
    async with Client(f"{proc.url}/mcp") as client:
        error = tool_error(await client.call_tool("chat", args))
        assert error["code"] == "deadline_exceeded" and "deadline of 5 s" in error["message"], error
        sim.clear_faults()
        again = await client.call_tool("chat", {**args, "prompt": "answers now"})
    assert not again.is_error, text_of(again)
    assert sim.count(f"requests:{model}") == 2  # the cut request, then the answered one: no breaker between


@pytest.mark.parametrize(("model", "fault"), [("kimi-k2.6", "hang"), ("gpt-5.5", "silent")])
async def test_a_thinking_request_that_never_said_a_word_still_counts_against_the_breaker(
    daemon: Daemon, sim: SimControl, model: str, fault: str
) -> None:
    """A hung upstream looks like a model thinking in silence, whether it never answers or (behind a proxy, as
    OpenAI's reasoning models do) sends an empty chunk first: cut by the call's deadline, it still counts, so the
    breaker opens and later calls no longer spend their whole deadline on it (an attack round kept a hung model's
    breaker shut with a 3 s consensus timeout when an empty chunk was enough)."""
    proc = daemon(
        EXAI_CALL_DEADLINE_SECONDS="3",
        EXAI_BREAKER_FAILURE_THRESHOLD="1",
        EXAI_MAX_RETRIES="0",
        EXAI_CLIENT_WAIT_SECONDS="0",
        **openai_at(sim),
    )
    if fault == "hang":
        sim.fault("hang", model=model, hang_seconds=60)
    else:
        sim.fault("think", model=model, think_seconds=60, silent=True)
    args = {"prompt": "hangs", "model": model, "thinking_mode": "high"}
    async with Client(f"{proc.url}/mcp") as client:
        assert tool_error(await client.call_tool("chat", args))["code"] == "deadline_exceeded"
        sim.clear_faults()
        shut = await client.call_tool("chat", args)
    assert tool_error(shut)["code"] == "breakers_open", text_of(shut)
    assert sim.count(f"requests:{model}") == 1


async def test_a_custom_endpoints_reasoning_model_declared_in_the_models_file_thinks_as_long(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    """A Custom endpoint's model (Ollama, vLLM) is not known to think, so its request stays whole and is cut by the
    attempt's limit; declared in EXAI_MODELS_FILE with the thinking style it has, it is streamed and thinks on."""
    models = tmp_path / "models.toml"
    models.write_text(
        '[models."local-reasoner"]\nprovider = "custom"\nthinking_style = "native"\n'
        "context_window = 65536\nmax_output_tokens = 8192\n"
    )
    proc = daemon(
        EXAI_MODELS_FILE=str(models),
        EXAI_ATTEMPT_TIMEOUT_SECONDS="2",
        EXAI_MAX_RETRIES="0",
        EXAI_CLIENT_WAIT_SECONDS="1",
    )
    sim.fault("think", model="local-reasoner", think_seconds=6)
    async with Client(f"{proc.url}/mcp") as client:
        first = await client.call_tool("chat", {"prompt": "thinks locally", "model": "local-reasoner"})
        result = await collect_all(client, pending_of(first))
    assert not result.is_error, text_of(result)
    assert "thinks locally" in text_of(result)
    assert sim.count("requests:local-reasoner") == sim.count("completed:local-reasoner") == 1
    reasoner = Catalogue.load(user_file=models).get("local-reasoner")
    assert reasoner is not None and reasoner.thinking, "listed as a model that does not think"
    models.write_text(models.read_text() + "thinking = false\n")  # what the file says outright stands
    reasoner = Catalogue.load(user_file=models).get("local-reasoner")
    assert reasoner is not None and not reasoner.thinking


async def test_a_silent_thinker_past_the_thinking_limit_is_cut_told_which_limit_and_not_asked_again(
    daemon: Daemon, sim: SimControl
) -> None:
    """The thinking limit still cuts a model that never speaks (a hung upstream looks the same), and the error
    names that limit, not the attempt's. Asked again it would think, and be paid, again: with retries left and the
    client still waiting, it was sent the prompt 3 times (found by a new user). A request not asked to think keeps
    the attempt's limit, and its retries."""
    proc = daemon(
        EXAI_ATTEMPT_TIMEOUT_SECONDS="1",
        EXAI_THINKING_TIMEOUT_SECONDS="3",
        EXAI_MAX_RETRIES="2",
        EXAI_CLIENT_WAIT_SECONDS="0",
        **openai_at(sim),
    )
    sim.fault("think", model="gpt-5.5", think_seconds=60, silent=True)
    async with Client(f"{proc.url}/mcp") as client:
        thinking = await client.call_tool("chat", {"prompt": "ponders", "model": "gpt-5.5", "thinking_mode": "high"})
        assert sim.count("requests:gpt-5.5") == 1, "a model cut while thinking was asked again"
        plain = await client.call_tool("chat", {"prompt": "answers", "model": "gpt-5.5", "thinking_mode": "off"})
    error = tool_error(thinking)
    assert error["code"] == "upstream_timeout", error
    assert "3 s for a model's thinking" in error["message"] and "EXAI_THINKING_TIMEOUT_SECONDS" in error["message"]
    assert "EXAI_THINKING_TIMEOUT_SECONDS" in error["remedy"] and "paid, again" in error["remedy"], error
    assert error["retryable"] is False, "the client was told to retry what it was told would be paid again"
    error = tool_error(plain)
    assert "1 s without a word" in error["message"] and "EXAI_ATTEMPT_TIMEOUT_SECONDS" in error["message"], error
    assert "EXAI_MODELS_FILE" in error["remedy"], error
    assert sim.count("requests:gpt-5.5") == 1 + 3, "a silent request not asked to think is retried as before"


@pytest.mark.parametrize("transport", ["stdio", "bridge"])
async def test_answer_later_works_over_stdio_and_through_the_bridge(
    daemon: Daemon, sim: SimControl, transport: str
) -> None:
    slow = {"EXAI_CLIENT_WAIT_SECONDS": "2"}
    if transport == "stdio":
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "exai", "stdio"], env={**os.environ, **sim_env(sim, **slow)}
        )
    else:
        proc = daemon(**slow)
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "exai", "stdio", "--connect", f"{proc.url}/mcp"], env=dict(os.environ)
        )
    sim.fault("think", model="sim-smart", think_seconds=5)
    async with Client(params) as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": f"slow over {transport}", "model": "sim-smart"}))
        collected = await collect_all(client, pending)
    assert not collected.is_error, collected
    assert f"echo: slow over {transport}" in text_of(collected)
    assert sim.count("requests:sim-smart") == 1


async def test_a_client_listening_for_progress_hears_from_a_slow_call_every_few_seconds(
    daemon: Daemon, sim: SimControl
) -> None:
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="0")  # answer-later off: the call waits for the answer
    sim.fault("think", model="sim-smart", think_seconds=12)
    heard: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(time.monotonic())

    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool(
            "chat", {"prompt": "keep me posted", "model": "sim-smart"}, progress_callback=on_progress
        )
    assert not result.is_error, result
    assert len(heard) >= 2, heard  # 12 s of thinking: a heartbeat every 5 s
    gaps = [later - earlier for earlier, later in itertools.pairwise(heard)]
    assert max(gaps, default=0.0) < 30, gaps  # well inside the 60 s a client waits without news


async def test_an_answer_of_many_small_chunks_is_relayed_as_paced_progress(daemon: Daemon, sim: SimControl) -> None:
    """Each chunk of an answer was a progress notification: an upstream sending 200,000 one-character chunks sent
    as many (33 MB to the client) and slowed other tenants' calls (an attack round). The first 20 are each heard,
    then 10 a second: the simulator streams this answer word by word, about 260 chunks at once."""
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="0")
    heard: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")

    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool(
            "chat", {"prompt": "w " * 240, "model": "sim-fast"}, progress_callback=on_progress
        )
    assert not result.is_error, text_of(result)
    relayed = [m for m in heard if "characters received" in m]
    assert 20 <= len(relayed) < 150, len(relayed)  # 20 + 10 a second: ~260 chunks would take 13 s to reach 150


async def test_a_streamed_call_is_kept_alive_by_chunks_whose_reasoning_is_not_read(
    daemon: Daemon, sim: SimControl
) -> None:
    """A client listening for progress gets its call streamed; a Custom model is not known to think, but its reasoning
    chunks show the upstream alive: the attempt's limit moves on."""
    proc = daemon(EXAI_ATTEMPT_TIMEOUT_SECONDS="2", EXAI_MAX_RETRIES="0", EXAI_CLIENT_WAIT_SECONDS="0")
    sim.fault("think", model="sim-smart", think_seconds=6)

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        pass

    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool(
            "chat", {"prompt": "streams along", "model": "sim-smart"}, progress_callback=on_progress
        )
    assert not result.is_error, text_of(result)
    assert sim.count("requests:sim-smart") == 1


async def test_collecting_needs_no_slot_of_the_tenants_concurrency(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="1", EXAI_RATE_LIMIT_CONCURRENCY="1")  # one call at a time
    sim.fault("think", model="sim-smart", think_seconds=3)
    async with Client(f"{proc.url}/mcp") as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "one slot", "model": "sim-smart"}))
        collected = await collect_all(client, pending)  # the running call holds the one slot meanwhile
    assert not collected.is_error, collected
    assert "echo: one slot" in text_of(collected)


async def test_a_daemon_stopped_with_sigterm_finishes_its_detached_calls_within_the_grace_period(
    daemon: Daemon, sim: SimControl
) -> None:
    settings = {"EXAI_CLIENT_WAIT_SECONDS": "1", "EXAI_DRAIN_NOTICE_SECONDS": "0.1"}
    proc = daemon(**settings)
    sim.fault("think", model="sim-smart", think_seconds=4)
    async with Client(f"{proc.url}/mcp") as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "finish me", "model": "sim-smart"}))
    proc.stop(signal.SIGTERM, timeout=120)  # a rolling deploy: the answer is on its way
    restarted = daemon(**settings)
    async with Client(f"{restarted.url}/mcp") as client:
        collected = await collect_all(client, pending)
    assert not collected.is_error, collected
    assert "echo: finish me" in text_of(collected)
    assert sim.count("requests:sim-smart") == 1


async def test_a_call_cut_because_the_grace_period_ended_is_logged_and_collected_as_lost(
    daemon: Daemon, sim: SimControl
) -> None:
    """A call still thinking when the grace period ended was cut without a line in the log (`detached_calls_drained`
    only): the operator never heard that a paid call was thrown away. It is logged now, with what to change."""
    settings = {"EXAI_CLIENT_WAIT_SECONDS": "1", "EXAI_DRAIN_NOTICE_SECONDS": "0.1", "EXAI_SHUTDOWN_GRACE_SECONDS": "1"}
    proc = daemon(**settings)
    sim.fault("think", model="sim-smart", think_seconds=120)
    async with Client(f"{proc.url}/mcp") as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "cut me", "model": "sim-smart"}))
    proc.stop(signal.SIGTERM, timeout=120)
    cut = [line for line in proc.logs().splitlines() if '"calls_cut_at_shutdown"' in line]
    assert len(cut) == 1 and '"calls": 1' in cut[0] and "EXAI_SHUTDOWN_GRACE_SECONDS" in cut[0], proc.logs()[-2000:]
    restarted = daemon(**settings)
    async with Client(f"{restarted.url}/mcp") as client:
        result = await client.call_tool(**pending["next_call"])
    assert tool_error(result)["code"] == "call_lost"


async def test_a_pending_answer_can_be_cancelled_through_collect(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    """A client without Tasks can stop a call it no longer wants: the upstream request is cut, nothing more is paid."""
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="1")
    sim.fault("think", model="sim-smart", think_seconds=120)
    async with Client(f"{proc.url}/mcp") as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "not wanted", "model": "sim-smart"}))
        await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the model is working on the call")
        cancelled = await client.call_tool("collect", {"task_id": pending["task_id"], "cancel": True})
        assert tool_error(cancelled)["code"] == "cancelled", cancelled
        again = await client.call_tool(**pending["next_call"])  # the call stays cancelled: collect says so
    assert tool_error(again)["code"] == "cancelled", again
    await wait_until(lambda: sim.count("disconnects") >= 1, "the simulator saw the request cut")
    assert sim.count("completed:sim-smart") == 0
    assert call_status(tmp_path / "data", pending["task_id"]) == "cancelled"


async def test_a_tenants_waiting_requests_are_capped(daemon: Daemon, sim: SimControl) -> None:
    """Each `collect` holds a request open while it waits; a tenant cannot open them without end (twice its task
    cap at once), and the refusal says how to go on. A cancellation at the cap is not refused: it used to cancel
    the call and then report the cap, so the client was told nothing happened."""
    proc = daemon(EXAI_CLIENT_WAIT_SECONDS="15", EXAI_MAX_TASKS_PER_TENANT="1")
    sim.fault("think", model="sim-smart", think_seconds=120)
    async with Client(f"{proc.url}/mcp") as client:
        pending = pending_of(await client.call_tool("chat", {"prompt": "wait for me", "model": "sim-smart"}))
        async with anyio.create_task_group() as group:
            waits: list[CallToolResult] = []

            async def collect() -> None:
                waits.append(await client.call_tool(**pending["next_call"]))

            for _ in range(3):
                group.start_soon(collect)
            await wait_until(lambda: len(waits) == 1, "the third wait refused")
            cancel = await client.call_tool("collect", {"task_id": pending["task_id"], "cancel": True})
            assert tool_error(cancel)["code"] == "cancelled", cancel  # what it says is what happened
        refused = [tool_error(w) for w in waits if w.is_error]
        assert [r["code"] for r in refused] == ["too_many_waits", "cancelled", "cancelled"], waits
        assert "Wait for one of them" in refused[0]["remedy"]
    await wait_until(lambda: sim.count("disconnects") >= 1, "the simulator saw the request cut")


async def test_an_answer_goes_out_without_waiting_for_its_call_record_and_is_recorded_after(
    daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str
) -> None:
    """The caller holds its answer before the call's row records it: with every update of the calls table held up
    (a trigger waits for a lock this test holds: a slow or busy database), the answer still arrives and the row says
    `working`; once the lock goes, the row says `completed` with the answer."""
    import psycopg

    proc = daemon(EXAI_DATABASE_URL=postgres_url, EXAI_DATABASE_SCHEMA=pg_schema)  # migrated once it is ready
    calls = f'"{pg_schema}".calls'
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        key = await hold_writes(db, pg_schema, "calls", "UPDATE")
        async with Client(f"{proc.url}/mcp") as client:
            answer = await client.call_tool("chat", {"prompt": "answer first", "model": "sim-fast"})
            assert not answer.is_error, answer
            assert "echo: answer first" in text_of(answer)  # the old code answered "still working" after 45 s
            rows = await (await db.execute(f"SELECT id, status FROM {calls}")).fetchall()
            assert [status for _, status in rows] == ["working"]  # its finish waits behind the lock
            await db.execute("SELECT pg_advisory_unlock(%s)", (key,))

            async def recorded() -> bool:
                row = await (
                    await db.execute(f"SELECT status, result FROM {calls} WHERE id = %s", (rows[0][0],))
                ).fetchone()
                return row is not None and row[0] == "completed" and "echo: answer first" in str(row[1])

            await wait_until(recorded, "the call's row records the answer")
    assert sim.count("requests:sim-fast") == 1


def test_only_a_request_a_model_will_think_for_is_streamed() -> None:
    catalogue = Catalogue.load()

    def streamed(name: str, thinking: ThinkingMode) -> bool:
        model = catalogue.get(name) or custom_model_info(name, 32768)
        return will_think(model, GenerateRequest(messages=[], thinking=thinking))

    assert streamed("kimi-k2-thinking", "off") and streamed("kimi-k2.6", "medium")  # always thinks; asked to
    assert not streamed("kimi-k2.6", "off"), "not asked to think"
    assert not streamed("sim-smart", "high"), "a Custom model's thinking is not known: its request stays whole"
    # Thinking that cannot be switched off: o3's least effort is "low", GPT-5's "minimal"; GPT-5.5 takes "none"
    assert streamed("o3", "off") and streamed("gpt-5", "off") and not streamed("gpt-5.5", "off")
