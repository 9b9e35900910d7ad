"""Writes to one thread through real daemons: concurrent workflow steps, turn limits, purging while running."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, closing
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
ROUNDS, CLIENTS = 3, 4


def _step(number: int, final: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "step": f"step {number}",
        "step_number": number,
        "total_steps": number + 1,
        "next_step_required": not final,
        "findings": f"finding {number}",
        "use_assistant_model": False,
        **extra,
    }


async def _ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, text_of(result)
    answer: dict[str, Any] = result.structured_content
    return answer


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_concurrent_workflow_steps_on_one_thread_are_all_kept(
    daemon: Daemon, sim: SimControl, request: pytest.FixtureRequest, backend: str
) -> None:
    if backend == "sqlite":
        urls = [daemon().url] * CLIENTS
    else:  # two daemons sharing the database: the writes race across processes too
        env = {
            "EXAI_DATABASE_URL": request.getfixturevalue("postgres_url"),
            "EXAI_DATABASE_SCHEMA": request.getfixturevalue("pg_schema"),
        }
        a, b = daemon(**env), daemon(**env)
        urls = [(a, b)[i % 2].url for i in range(CLIENTS)]
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(f"{url}/mcp")) for url in urls]
        thread = (await _ok(clients[0], "debug", _step(1)))["continuation_id"]
        await _ok(clients[1], "codereview", _step(1, continuation_id=thread))
        acknowledged: dict[str, set[int]] = {"debug": {1}, "codereview": {1}}
        for round_ in range(ROUNDS):
            calls = []
            for i, client in enumerate(clients):  # each round: 4 debug steps and 4 codereview steps at once
                number = 2 + round_ * CLIENTS + i
                calls += [_ok(client, tool, _step(number, continuation_id=thread)) for tool in ("debug", "codereview")]
            for result, tool in zip(await asyncio.gather(*calls), ["debug", "codereview"] * CLIENTS, strict=True):
                acknowledged[tool].add(result["step_number"])
        last = 2 + ROUNDS * CLIENTS
        finals = {
            tool: await _ok(clients[0], tool, _step(last, final=True, continuation_id=thread))
            for tool in ("debug", "codereview")
        }
        shown = await _ok(clients[1], "threads", {"action": "show", "thread_id": thread, "limit": 200})
    for tool, final in finals.items():
        assert final["status"] == "complete_without_expert"
        assert final["steps_recorded"] == sorted(acknowledged[tool] | {last}), f"{tool} lost acknowledged steps"
    assert shown["workflows"] == {"debug": "complete", "codereview": "complete"}
    assert shown["thread"]["turns"] == 2 * (1 + ROUNDS * CLIENTS + 2), "one turn per step and one per summary"


async def test_a_full_thread_is_shown_and_its_limit_is_never_exceeded(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_MAX_TURNS_PER_THREAD="5")
    async with Client(f"{proc.url}/mcp") as client:
        thread = (await _ok(client, "chat", {"prompt": "one", "model": "sim-fast"}))["continuation_id"]
        await _ok(client, "chat", {"prompt": "two", "model": "sim-fast", "continuation_id": thread})
        over = await client.call_tool("chat", {"prompt": "three", "model": "sim-fast", "continuation_id": thread})
        shown = await client.call_tool("threads", {"action": "show", "thread_id": thread})
        await _ok(client, "planner", _step(1, continuation_id=thread))  # one more turn still fits
        full = await client.call_tool("threads", {"action": "show", "thread_id": thread})
    error = tool_error(over)
    assert error["code"] == "thread_full" and "new thread" in error["remedy"]
    assert not shown.is_error, text_of(shown)
    assert shown.structured_content["thread"]["turns"] == 4, "two turns more would have made 6 of 5"
    assert not full.is_error and full.structured_content["thread"]["turns"] == 5


async def test_a_running_daemon_purges_expired_threads_and_audit_rows(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    proc = daemon(EXAI_PURGE_INTERVAL_SECONDS="0.2", EXAI_AUDIT_RETENTION_DAYS="1")
    database = tmp_path / "data" / "exai.db"  # the daemon's (EXAI_DATA_DIR), migrated and purged at its start
    soon = time.time() + 1  # added after the start-up purge; expired a moment later
    thread = str(uuid.uuid4())
    with closing(sqlite3.connect(database)) as db, db:
        db.execute(
            "INSERT INTO threads (id, tenant, title, created_at, updated_at, expires_at, turn_count, tools, state) "
            "VALUES (?, 'local', 'short-lived', ?, ?, ?, 0, '[]', '{}')",
            (thread, soon - 1, soon - 1, soon),
        )
        db.execute(
            "INSERT INTO audit (time, tenant, tool, input_tokens, output_tokens, cost_usd, latency_ms, outcome, "
            "correlation_id) VALUES (?, 'local', 'chat', 0, 0, 0, 0, 'ok', 'old')",
            (soon - 86400,),
        )

    def count(query: str) -> int:
        with closing(sqlite3.connect(database)) as db:
            counted: int = db.execute(query).fetchone()[0]
            return counted

    await wait_until(lambda: count(f"SELECT COUNT(*) FROM threads WHERE id = '{thread}'") == 0, "thread purge")
    await wait_until(lambda: count("SELECT COUNT(*) FROM audit WHERE correlation_id = 'old'") == 0, "audit purge")
    assert proc.stop() == 0, proc.logs()
    assert "Traceback" not in proc.logs() and "purge_failed" not in proc.logs()
