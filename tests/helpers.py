"""Building in-process services against the simulator."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import pytest
import redis.asyncio as aioredis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from exai.app import Services
from exai.config import load_settings
from tests.conftest import TLS, SimControl, sim_env


def run_exai(
    args: list[str], env: Mapping[str, str] | None = None, *, cwd: Path | str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m exai ARGS` to its end, in the test's environment plus `env`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "exai", *args],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def build_services(monkeypatch: pytest.MonkeyPatch, sim: SimControl, **extra: str) -> Services:
    """Services against the simulator, started (store open and migrated) like the daemon's."""
    for name, value in sim_env(sim, **extra).items():
        monkeypatch.setenv(name, value)
    services = Services.build(load_settings())
    await services.start()
    return services


def text_of(result: CallToolResult, index: int = 0) -> str:
    """The text of a result's content block `index` (the first by default), checked to be a text block."""
    block = result.content[index]
    assert isinstance(block, TextContent), block
    return block.text


def tool_error(result: CallToolResult) -> dict[str, Any]:
    """The error of a tool-error result, checked to be readable by every client.

    No structured content (clients validate it against the output schema even on errors); the whole error is
    in the text, and as data under `_meta["exai/error"]`.
    """
    assert result.is_error, result
    assert result.structured_content is None, result.structured_content
    error: dict[str, Any] = (result.meta or {})["exai/error"]
    text = text_of(result)
    assert error["message"] in text and error["correlation_id"] in text, text
    return error


async def redis_int(redis: aioredis.Redis, key: str) -> int:
    """The integer stored at `key` in Redis, checked to be there."""
    value = await redis.get(key)
    assert value is not None, f"nothing is stored at {key}"
    return int(value)


CEILING_SECONDS = 90.0  # how long a wait may take before it fails: generous, the machine may be busy


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, ceiling: float = CEILING_SECONDS, every: float = 0.1
) -> None:
    """Poll `condition` (plain or async) until it holds; fail after a generous ceiling."""
    deadline = time.monotonic() + ceiling
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {ceiling:.0f} s waiting until {what}")
        await asyncio.sleep(every)


def wait_until_sync(
    condition: Callable[[], bool], what: str, ceiling: float = CEILING_SECONDS, every: float = 0.1
) -> None:
    """`wait_until` for synchronous tests."""
    deadline = time.monotonic() + ceiling
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {ceiling:.0f} s waiting until {what}")
        time.sleep(every)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def mcp_client(
    url: str, token: str | None = None, *, headers: Mapping[str, str | bytes] | None = None, timeout: float = 120
) -> AsyncIterator[Client]:
    """An MCP session with a daemon (`url` without `/mcp`), sending a bearer token and extra headers when given."""
    async with (
        # httpx2 sends str and bytes values alike; its types take a mapping of one or the other.
        httpx2.AsyncClient(
            headers=cast(Mapping[str, str], {**(headers or {}), **bearer(token)}), timeout=timeout, verify=TLS
        ) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield client


async def call_tool(
    url: str,
    tool: str,
    args: dict[str, Any],
    token: str | None = None,
    *,
    headers: Mapping[str, str | bytes] | None = None,
    timeout: float = 120,
) -> CallToolResult:
    """One tool call in a session of its own."""
    async with mcp_client(url, token, headers=headers, timeout=timeout) as client:
        return await client.call_tool(tool, args)


async def cancel_once_upstream(
    call: Callable[[], Awaitable[Any]], sim: SimControl, until: Callable[[], bool] | None = None
) -> None:
    """Start `call`, wait until its request is held at the simulator (or, given, until `until` holds: a streamed
    answer is not held), then cancel it as a client would."""
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await call()

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        if until is None:
            await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the call's request reached the upstream")
        else:
            await wait_until(until, "the call got as far as the test needs")
        scope.cancel()


@contextmanager
def jwks_endpoint() -> Iterator[tuple[str, list[dict[str, object]], list[int]]]:
    """A JWKS endpoint on a free port: its URL, the keys it serves (change them at will) and a count of fetches."""
    keys: list[dict[str, object]] = []
    fetches: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(1)
            body = json.dumps({"keys": keys}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    with serve_on_loopback(Handler) as port:
        yield f"http://127.0.0.1:{port}/jwks.json", keys, fetches


@contextmanager
def serve_on_loopback(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server of `handler` on a free loopback port, from threads of the test process; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


async def hold_writes(db: Any, schema: str, table: str, events: str) -> int:
    """Hold up every `events` (e.g. "UPDATE", "INSERT OR UPDATE") on the schema's `table` (a slow or busy
    database): a trigger waits for an advisory lock that `db` (an autocommit psycopg connection) takes here.
    Returns the lock's key: `SELECT pg_advisory_unlock(key)` lets the writes through."""
    key = int.from_bytes(os.urandom(4), "big")
    await db.execute(
        f'CREATE FUNCTION "{schema}".held() RETURNS trigger LANGUAGE plpgsql AS '
        f"$$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NEW; END $$"
    )
    await db.execute(
        f'CREATE TRIGGER held BEFORE {events} ON "{schema}".{table} FOR EACH ROW EXECUTE FUNCTION "{schema}".held()'
    )
    await db.execute("SELECT pg_advisory_lock(%s)", (key,))
    return key
