"""Never pay for an answer you then lose: once a model has answered, nothing that stops its turns from being written
(a thread filled up by other calls, a thread that keeps changing, one deleted meanwhile) costs the caller the answer.

Through the real daemon, counted on the simulator's side: every upstream completion is an answer some caller got.
A thread already full before a call is still refused up front, with nothing sent upstream.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp_types import CallToolResult

from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]
Daemon = Callable[..., Proc]
RACERS = 6


def _step(number: int, text: str, final: bool, **extra: Any) -> dict[str, Any]:
    return {
        "step": text,
        "step_number": number,
        "total_steps": 2,
        "next_step_required": not final,
        "findings": f"found {text}",
        "model": "sim-fast",
        **extra,
    }


def _call(tool: str, i: int, thread: str | None) -> dict[str, Any]:
    """Call number `i` of `tool`, continuing `thread` (or starting one when None)."""
    more = {"continuation_id": thread} if thread else {}
    if tool == "chat":
        return {"prompt": f"race {i}", "model": "sim-fast", **more}
    if tool == "consensus":
        models = [{"model": "sim-fast", "stance": "for"}, {"model": "sim-smart", "stance": "against"}]
        return {"prompt": f"race {i}", "models": models, **more}
    return _step(2 if thread else 1, f"race {i}", final=bool(thread), **more)


def _answers(tool: str, result: CallToolResult) -> int:
    """How many model answers the caller got in `result`."""
    data = result.structured_content or {}
    if tool == "consensus":
        assert all(o["answer"] for o in data["opinions"] if o["ok"]), data
        return int(data["succeeded"])
    if tool == "chat":
        assert "echo: race" in data["answer"], data
        return 1
    assert data["status"] == "complete" and data["expert_analysis"], data
    return 1


@pytest.mark.parametrize(
    ("tool", "backend"),
    [
        ("chat", "sqlite"),
        ("consensus", "sqlite"),
        ("thinkdeep", "sqlite"),
        pytest.param("chat", "postgresql", marks=pytest.mark.postgres),
    ],
)
async def test_calls_racing_for_a_threads_last_turns_each_get_the_answer_they_paid_for(
    daemon: Daemon, sim: SimControl, request: pytest.FixtureRequest, tool: str, backend: str
) -> None:
    max_turns = 4  # room for one more call after the first (a workflow: for steps and experts)
    if backend == "sqlite":
        urls = [daemon(EXAI_MAX_TURNS_PER_THREAD=str(max_turns)).url] * RACERS
    else:  # two daemons sharing the database: the calls race across processes too
        env = {
            "EXAI_MAX_TURNS_PER_THREAD": str(max_turns),
            "EXAI_DATABASE_URL": request.getfixturevalue("postgres_url"),
            "EXAI_DATABASE_SCHEMA": request.getfixturevalue("pg_schema"),
        }
        a, b = daemon(**env), daemon(**env)
        urls = [(a, b)[i % 2].url for i in range(RACERS)]
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(f"{url}/mcp")) for url in urls]
        first = await clients[0].call_tool(tool, _call(tool, 0, None))
        thread = (first.structured_content or {}).get("continuation_id")
        sim.latency(3000)  # the racers' models answer together, after every racer has found room for its turns
        before = sim.count("completed")
        results = await asyncio.gather(
            *(client.call_tool(tool, _call(tool, i, thread)) for i, client in enumerate(clients, start=1))
        )
        sim.latency(0)
        paid = sim.count("completed") - before
        requests = sim.count("requests")
        full = await clients[0].call_tool(tool, _call(tool, 99, thread))
        unspent = sim.count("requests") == requests
        shown = await clients[0].call_tool("threads", {"action": "show", "thread_id": thread})
    assert not first.is_error, first.content
    answered = sum(_answers(tool, r) for r in results if not r.is_error)
    assert answered == paid, f"{paid} answers were paid for upstream, {answered} reached their callers"
    for refused in (r for r in results if r.is_error):  # refused before anything was spent
        assert tool_error(refused)["code"] == "thread_full", refused.content
    unsaved = [r for r in results if not r.is_error and (r.meta or {}).get("exai/thread_saved") is False]
    assert unsaved, "the racers' calls overlapped: some answers arrived after the thread had filled up"
    for result in unsaved:
        assert (result.meta or {})["exai/thread_error"]["code"] == "thread_full"
        note = text_of(result, -1)
        assert f"not saved to thread {thread}" in note and "turn limit" in note, note
        assert "start a new thread" in note, note
    saved = [r for r in results if not r.is_error and r not in unsaved]
    if tool != "thinkdeep":  # room for exactly one more exchange (a workflow's steps took the room instead)
        assert len(saved) == 1, [r.content for r in results]
    assert tool_error(full)["code"] == "thread_full", full.content
    assert unspent, "a thread full before the call is refused with nothing sent upstream"
    assert shown.structured_content["thread"]["turns"] == max_turns


async def test_an_answer_is_returned_when_its_thread_keeps_changing_or_is_deleted_while_the_model_works(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    proc = daemon()
    database = tmp_path / "data" / "exai.db"
    async with Client(f"{proc.url}/mcp") as client:
        first = await client.call_tool("chat", {"prompt": "start", "model": "sim-fast"})
        thread = (first.structured_content or {}).get("continuation_id")
        with sqlite3.connect(database) as db:  # every compare-and-set on the thread now finds it changed
            db.execute("CREATE TRIGGER threads_busy BEFORE UPDATE ON threads BEGIN SELECT RAISE(IGNORE); END")
        busy = await client.call_tool("chat", {"prompt": "busy", "model": "sim-fast", "continuation_id": thread})
        with sqlite3.connect(database) as db:
            db.execute("DROP TRIGGER threads_busy")

        sim.fault("think", model="sim-smart", think_seconds=5, count=1)
        args = {"prompt": "gone", "model": "sim-smart", "continuation_id": thread}
        call = asyncio.create_task(client.call_tool("chat", args))
        await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the model is working on the call")
        with sqlite3.connect(database) as db:  # deleted meanwhile (as a purge of an expired thread would)
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("DELETE FROM threads WHERE id = ?", (thread,))
        gone = await call
    for result, code, words in ((busy, "conflict", "kept changing"), (gone, "thread_not_found", "deleted")):
        assert not result.is_error, result.content
        assert "echo: " in result.structured_content["answer"]
        assert (result.meta or {})["exai/thread_saved"] is False
        assert (result.meta or {})["exai/thread_error"]["code"] == code
        assert words in text_of(result, -1)
    assert sim.count("completed") == 3, "three answers paid for, three returned"
