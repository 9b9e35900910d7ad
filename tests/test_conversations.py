"""Threads across calls and tools: history within the budget, files once, clear errors for bad ids."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from exai.conversations.tokens import count_tokens
from exai.errors import NotFoundError
from exai.server.mcp import build_server
from tests.conftest import MakeServices, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio


def _body(sim: SimControl) -> dict[str, Any]:
    body: dict[str, Any] = sim.requests(1)[0]["body"]
    return body


def _all_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"])


async def test_tokenizer_is_o200k() -> None:
    assert count_tokens("hello world") == 2
    assert count_tokens("") == 0


def test_counts_are_the_packages_own_and_its_python_tables_are_never_built() -> None:
    """The counts are those of bpe-openai's public `encode_ordinary` (o200k_base) on every kind of text, in a
    process that counted first: the package's `__init__`, which builds three encodings' tables in pure Python
    (1.3-2.7 s of CPU and about 80 MB), never ran for the count."""
    probe = r"""
import json, sys
from exai.conversations.tokens import count_tokens
texts = ["hello world", "def f(x):\n    return x ** 2  # 🎉", "日本語のテキスト、한국어 텍스트", "<|endoftext|> text",
         "a\ud800b lone surrogate", "ünïcödé " * 5000, "x" * 999_999]
ours = [count_tokens(text) for text in texts]
built = "bpe_openai" in sys.modules
import bpe_openai
public = [len(bpe_openai.get_encoding("o200k_base").encode_ordinary(text)) for text in texts]
long = "word " * 400_000  # 2 million characters: counted whole (the package's own API refuses a million)
print(json.dumps({"ours": ours, "public": public, "built": built, "long": count_tokens(long)}))
"""
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert seen["ours"] == seen["public"]
    assert seen["built"] is False
    assert seen["long"] == 400_001


async def test_chat_continues_with_history(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    async with Client(build_server(services)) as client:
        first = await client.call_tool("chat", {"prompt": "My name is Ada.", "model": "sim-fast"})
        thread = first.structured_content["continuation_id"]
        assert f"continuation_id: {thread}" in text_of(first)
        second = await client.call_tool(
            "chat", {"prompt": "What is my name?", "model": "sim-smart", "continuation_id": thread}
        )
    assert second.structured_content["continuation_id"] == thread
    assert second.structured_content["earlier_turns_included"] == 2
    messages = _body(sim)["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "My name is Ada." and messages[3]["content"] == "What is my name?"
    assert messages[2]["content"].startswith("SIM sim-fast")


async def test_files_are_embedded_once_in_their_newest_version(
    sim: SimControl, tmp_path: Path, make_services: MakeServices
) -> None:
    source = tmp_path / "calc.py"
    source.write_text("def add(a, b):\n    return a - b\n")
    services = await make_services(EXAI_FILE_ROOTS=str(tmp_path))
    async with Client(build_server(services)) as client:
        first = await client.call_tool("chat", {"prompt": "Review", "files": [str(source)], "model": "sim-fast"})
        thread = first.structured_content["continuation_id"]
        source.write_text("def add(a, b):\n    return a + b\n")
        await client.call_tool(
            "chat", {"prompt": "Again", "files": [str(source)], "model": "sim-fast", "continuation_id": thread}
        )
        third = await client.call_tool("chat", {"prompt": "And now?", "model": "sim-fast", "continuation_id": thread})
    # Only what we send as the user counts: the simulator's earlier answers echo earlier prompts.
    text = "\n".join(m["content"] for m in _body(sim)["messages"] if m["role"] == "user")
    assert text.count(f"BEGIN FILE: {source}") == 1, "one copy, however many turns referenced it"
    assert "return a + b" in text and "return a - b" not in text
    assert third.structured_content["files_included"] == [str(source)]


async def test_bad_continuation_ids_are_clear_errors(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_MAX_TURNS_PER_THREAD="4")
    async with Client(build_server(services)) as client:
        bad = await client.call_tool("chat", {"prompt": "x", "continuation_id": "not-a-thread"})
        assert tool_error(bad)["code"] == "invalid_continuation_id"
        missing = await client.call_tool(
            "chat", {"prompt": "x", "continuation_id": "6f1d6c64-0000-4000-8000-000000000000"}
        )
        error = tool_error(missing)
        assert error["code"] == "thread_not_found" and "without continuation_id" in error["remedy"]
        first = await client.call_tool("chat", {"prompt": "x", "model": "sim-fast"})
        thread = first.structured_content["continuation_id"]
        await client.call_tool("chat", {"prompt": "y", "model": "sim-fast", "continuation_id": thread})
        full = await client.call_tool("chat", {"prompt": "z", "model": "sim-fast", "continuation_id": thread})
        assert tool_error(full)["code"] == "thread_full"
    with pytest.raises(NotFoundError):
        await services.conversations.open(thread, "another-tenant")


async def test_an_expired_thread_is_a_clear_error(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_THREAD_TTL_HOURS="0.0003")  # about a second
    async with Client(build_server(services)) as client:
        first = await client.call_tool("chat", {"prompt": "x", "model": "sim-fast"})
        thread = first.structured_content["continuation_id"]
        deadline = time.monotonic() + 60
        while not (shown := await client.call_tool("threads", {"action": "show", "thread_id": thread})).is_error:
            assert time.monotonic() < deadline, "the thread never expired"
            await asyncio.sleep(0.1)
        assert tool_error(shown)["code"] == "thread_expired"
        expired = await client.call_tool("chat", {"prompt": "z", "model": "sim-fast", "continuation_id": thread})
    error = tool_error(expired)
    assert error["code"] == "thread_expired" and "without continuation_id" in error["remedy"]


async def test_history_keeps_the_newest_turns_that_fit(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(CUSTOM_MODELS="sim-tiny:20000", EXAI_MAX_TURNS_PER_THREAD="100")
    async with Client(build_server(services)) as client:
        thread = None
        for i in range(12):
            args = {"prompt": f"turn {i} " + "lorem ipsum dolor sit amet " * 300, "model": "sim-tiny"}
            if thread:
                args["continuation_id"] = thread
            result = await client.call_tool("chat", args)
            thread = result.structured_content["continuation_id"]
    included = result.structured_content["earlier_turns_included"]
    assert 0 < included < 22, "older turns are dropped once the budget is spent"
    messages = _body(sim)["messages"]
    assert "turn 10" in messages[-3]["content"], "the newest earlier turns are the ones kept"
    assert "turn 0 " not in _all_text(_body(sim))


async def test_threads_tool_lists_and_shows(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    async with Client(build_server(services)) as client:
        first = await client.call_tool("chat", {"prompt": "Plan the migration to PostgreSQL", "model": "sim-fast"})
        thread = first.structured_content["continuation_id"]
        await client.call_tool(
            "thinkdeep",
            {
                "step": "weigh it",
                "step_number": 1,
                "total_steps": 1,
                "next_step_required": False,
                "continuation_id": thread,
                "model": "sim-smart",
            },
        )
        listing = (await client.call_tool("threads", {})).structured_content
        shown = (await client.call_tool("threads", {"action": "show", "thread_id": thread})).structured_content
        missing = await client.call_tool("threads", {"action": "show"})
    assert listing["threads"][0]["id"] == thread
    assert listing["threads"][0]["title"] == "Plan the migration to PostgreSQL"
    assert listing["threads"][0]["tools"] == ["chat", "thinkdeep"] and listing["threads"][0]["turns"] == 4
    assert [t["tool"] for t in shown["turns"]] == ["chat", "chat", "thinkdeep", "thinkdeep"]
    assert shown["workflows"] == {"thinkdeep": "complete"}
    assert missing.is_error and tool_error(missing)["details"]["field"] == "thread_id"


async def test_history_tokens_are_counted_once_when_written(
    sim: SimControl, monkeypatch: pytest.MonkeyPatch, make_services: MakeServices
) -> None:
    """Each turn's tokens are stored with it; continuing a thread counts only the new request, not the history."""
    from exai.conversations import history, threads, tokens

    services = await make_services()
    async with Client(build_server(services)) as client:
        first = await client.call_tool("chat", {"prompt": "My name is Ada. " * 50, "model": "sim-fast"})
        thread = first.structured_content["continuation_id"]
        stored = await services.store.get_turns(thread)
        assert [t.tokens for t in stored] == [count_tokens(t.content) for t in stored]

        counted: list[str] = []
        real = tokens.count_tokens_async  # the function history and threads import, not yet patched

        async def counting(text: str) -> int:
            counted.append(text)
            return await real(text)

        monkeypatch.setattr(history, "count_tokens_async", counting)
        monkeypatch.setattr(threads, "count_tokens_async", counting)
        second = await client.call_tool(
            "chat", {"prompt": "And my name?", "model": "sim-fast", "continuation_id": thread}
        )
    assert second.structured_content["earlier_turns_included"] == 2
    assert not any(text in counted for text in (t.content for t in stored)), "the history was counted again"
