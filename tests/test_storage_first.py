"""Storage first: with the store unreachable, a call is refused before any model is asked (nothing paid, nothing
lost), and once the store is back calls succeed without a restart. Counted on the simulator's side."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error
from tests.tcp_proxy import ThreadedProxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]
Daemon = Callable[..., Proc]


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_with_postgresql_unreachable_no_call_reaches_the_upstream_and_calls_resume_when_it_is_back(
    daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str
) -> None:
    proxy = ThreadedProxy(urlsplit(postgres_url).port or 5432)
    proxy.start()
    try:
        proc = daemon(EXAI_DATABASE_URL=through(postgres_url, proxy.port), EXAI_DATABASE_SCHEMA=pg_schema)
        async with Client(f"{proc.url}/mcp") as client:
            first = await client.call_tool("chat", {"prompt": "before the outage", "model": "sim-fast"})
            assert not first.is_error, first
            thread = first.structured_content["continuation_id"]
            before = sim.count("requests")
            proxy.stop()
            for i in range(10):
                arguments = {"prompt": f"during the outage {i}", "model": "sim-fast"}
                if i % 2:
                    arguments["continuation_id"] = thread  # continued chats and new ones
                started = time.monotonic()
                refused = await client.call_tool("chat", arguments)
                assert time.monotonic() - started < 60, "a refusal must be quick (15 s on a quiet machine)"
                error = tool_error(refused)
                assert error["category"] == "storage" and error["retryable"], error
            assert sim.count("requests") == before, "a prompt reached the upstream while the store was down"
            proxy.start()
            back = await client.call_tool("chat", {"prompt": "after", "model": "sim-fast", "continuation_id": thread})
            while back.is_error and tool_error(back)["category"] == "storage":  # the pool reconnects on its own
                back = await client.call_tool(
                    "chat", {"prompt": "after", "model": "sim-fast", "continuation_id": thread}
                )
        assert not back.is_error, back
        assert "turns: 3" in text_of(back)  # the thread went on
    finally:
        proxy.close()


async def test_an_answer_paid_for_is_returned_when_the_thread_cannot_be_saved(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    """The store takes the call's record, the model answers, then the thread's turns cannot be written (a store
    that fails midway, as under overload): the caller still gets the answer it paid for, told the thread missed it."""
    proc = daemon()
    async with Client(f"{proc.url}/mcp") as client:
        first = await client.call_tool("chat", {"prompt": "start a thread", "model": "sim-fast"})
        thread = first.structured_content["continuation_id"]
        with sqlite3.connect(tmp_path / "data" / "exai.db") as db:  # turns fail from now on; call records do not
            db.execute("CREATE TRIGGER turns_fail BEFORE INSERT ON turns BEGIN SELECT RAISE(ABORT, 'disk I/O'); END")
        paid = await client.call_tool(
            "chat", {"prompt": "worth keeping", "model": "sim-fast", "continuation_id": thread}
        )
    assert not paid.is_error, paid
    assert paid.structured_content is not None and "echo: worth keeping" in paid.structured_content["answer"]
    assert (paid.meta or {}).get("exai/thread_saved") is False
    assert f"not saved to thread {thread}" in text_of(paid, -1)
    assert sim.count("requests") == 2  # one upstream request each: nothing asked twice, nothing paid and lost
