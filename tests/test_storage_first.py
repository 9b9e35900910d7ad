"""Storage first: with the store unreachable, a call is refused before any model is asked (nothing paid, nothing
lost), and once the store is back calls succeed without a restart. Counted on the simulator's side."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import tool_error
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
            thread = first.structured_content["continuation_id"]  # type: ignore[index]
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
        assert "turns: 3" in back.content[0].text  # type: ignore[union-attr]  # the thread went on
    finally:
        proxy.close()
