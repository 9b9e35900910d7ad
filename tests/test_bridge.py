"""The stdio-to-daemon bridge as a real process, between the SDK's stdio client and a real daemon.

Every test counts what reached the upstream on the simulator's side: a bridge that re-sends a call the daemon
may already have run shows up there as a prompt answered twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import TEST_JWT_SECRET, Proc, SimControl, free_port
from tests.helpers import cancel_once_upstream, serve_on_loopback, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
CEILING = 60.0


def _bridge(url: str, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "exai", "stdio", "--connect", f"{url}/mcp"], env={**os.environ, **env}
    )


def upstream_requests(sim: SimControl, marker: str) -> int:
    """How many model requests the simulator received whose messages carry `marker`."""
    return sum(marker in json.dumps(entry["body"]) for entry in sim.requests(limit=500))


def text_of(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_calls_cut_off_by_a_daemon_kill_never_reach_the_upstream_twice(daemon: Daemon, sim: SimControl) -> None:
    port = free_port()
    proc = daemon(port=port)
    sim.latency(60_000)  # every call is held at the upstream until the daemon dies
    prompts = [f"cut off {i}" for i in range(5)]
    async with Client(_bridge(proc.url)) as client:
        await client.list_tools()
        calls = [asyncio.ensure_future(client.call_tool("chat", {"prompt": p, "model": "sim-fast"})) for p in prompts]
        await wait_until(lambda: sim.stats()["in_flight"] == len(prompts), "every call reached the upstream")
        proc.process.send_signal(signal.SIGKILL)
        proc.process.wait(10)
        sim.latency(0)
        daemon(port=port)
        results = await asyncio.wait_for(asyncio.gather(*calls), CEILING)
        after = await client.call_tool("chat", {"prompt": "after the restart", "model": "sim-fast"})

    for prompt in prompts:
        assert upstream_requests(sim, prompt) == 1, f"'{prompt}' reached the upstream more than once"
    for result in results:
        assert result.is_error, "a call whose fate is unknown is not reported as a success"
        text = text_of(result)
        assert "daemon_connection_lost" in text and "lost while 'chat' was running" in text, text
        assert "not sent again" in text and "may run it twice" in text, text
        assert result.structured_content is None
    assert not after.is_error, text_of(after)
    assert upstream_requests(sim, "after the restart") == 1


async def test_a_call_sent_while_the_daemon_is_down_runs_once_when_it_is_back(daemon: Daemon, sim: SimControl) -> None:
    port = free_port()
    proc = daemon(port=port)
    # The bridge keeps re-sending for as long as the restart may take on a loaded machine.
    async with Client(_bridge(proc.url, EXAI_BRIDGE_CONNECT_TIMEOUT_SECONDS=str(CEILING))) as client:
        await client.list_tools()
        proc.stop(signal.SIGKILL)
        call = asyncio.ensure_future(client.call_tool("chat", {"prompt": "while down", "model": "sim-fast"}))
        await asyncio.sleep(0)  # the call goes out against a closed port
        daemon(port=port)
        result = await asyncio.wait_for(call, CEILING)
    assert not result.is_error, text_of(result)
    assert upstream_requests(sim, "while down") == 1


async def test_one_failing_call_does_not_fail_the_others(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    sim.latency(1_500)
    prompts = [f"bystander {i}" for i in range(5)]
    async with Client(_bridge(proc.url)) as client:
        await client.list_tools()
        calls = [asyncio.ensure_future(client.call_tool("chat", {"prompt": p, "model": "sim-fast"})) for p in prompts]
        await wait_until(lambda: sim.stats()["in_flight"] == len(prompts), "every call reached the upstream")
        # A protocol error whose message mentions a session, and a tool error, while the others run.
        with pytest.raises(Exception, match="Unknown tool 'session-reset'"):
            await client.call_tool("session-reset", {})
        failed = await client.call_tool("chat", {"prompt": "fails", "model": "no-such-model"})
        results = await asyncio.wait_for(asyncio.gather(*calls), CEILING)
    assert failed.is_error
    for prompt, result in zip(prompts, results, strict=True):
        assert not result.is_error, text_of(result)
        assert upstream_requests(sim, prompt) == 1, f"'{prompt}' reached the upstream more than once"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_log_notifications_reach_the_stdio_client(daemon: Daemon, sim: SimControl, mode: Any) -> None:
    proc = daemon()
    sim.fault("500", model="sim-fast", count=1)  # the daemon retries once and logs a warning about it
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with Client(_bridge(proc.url), mode=mode, logging_callback=on_log, log_level="warning") as client:
        if mode == "legacy":
            await client.set_logging_level("warning")
        result = await client.call_tool("chat", {"prompt": "log through the bridge", "model": "sim-fast"})
    assert not result.is_error, text_of(result)
    retries = [entry for entry in logs if "retrying" in json.dumps(entry.data)]
    assert retries and retries[0].level == "warning", f"log notifications received: {logs}"
    assert upstream_requests(sim, "log through the bridge") == 2  # the failed attempt and its retry, no more


async def test_unreachable_daemon_is_a_clear_error_not_a_hang(sim: SimControl) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with Client(_bridge(url, EXAI_BRIDGE_CONNECT_TIMEOUT_SECONDS="1")) as client:
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(client.list_tools(), CEILING)
        assert "Cannot reach the EX-AI daemon" in str(caught.value)
        result = await asyncio.wait_for(client.call_tool("chat", {"prompt": "anyone there?"}), CEILING)
    text = text_of(result)
    assert result.is_error and "daemon_unreachable" in text and "safe to retry" in text, text
    assert upstream_requests(sim, "anyone there?") == 0


@pytest.mark.parametrize("where", ["wrong path", "https to plain http"])
async def test_a_wrong_url_or_tls_failure_is_reported_at_once_not_retried(
    daemon: Daemon, sim: SimControl, where: str
) -> None:
    posts: list[str] = []

    class NotHere(BaseHTTPRequestHandler):  # a web server at the address, but no daemon at its path
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["content-length"])))["method"])
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with ExitStack() as stack:
        if where == "wrong path":
            port = stack.enter_context(serve_on_loopback(NotHere))
            url, expected = f"http://127.0.0.1:{port}/not-here", "it answered 404 Not Found"
        else:
            url, expected = f"https://127.0.0.1:{daemon().port}", "the TLS handshake failed"
        # Retrying would outlast the ceiling, and a retry with a short backoff would show in `posts`.
        async with Client(_bridge(url, EXAI_BRIDGE_CONNECT_TIMEOUT_SECONDS="600")) as client:
            with pytest.raises(Exception) as caught:
                await asyncio.wait_for(client.list_tools(), CEILING)
            result = await asyncio.wait_for(client.call_tool("chat", {"prompt": "wrong address"}), CEILING)
    for text in (str(caught.value), text_of(result)):
        assert "[network/daemon_misconfigured]" in text and expected in text, text
        assert "Retrying as is cannot succeed" in text and "safe to retry" not in text, text
    if where == "wrong path":
        # the SDK's handshake (server/discover, then initialize on a 404) once per request, none sent again
        assert posts == ["server/discover", "initialize"] * 2, f"requests that reached the address: {posts}"
    assert result.is_error and upstream_requests(sim, "wrong address") == 0


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8765/mcp",
        "ftp://127.0.0.1:8765/mcp",
        "http:///mcp",
        "http://127.0.0.1:notaport/mcp",
        "http://127.0.0.1:99999/mcp",
        "http://[::1/mcp",
    ],
)
async def test_a_url_no_request_could_use_is_refused_at_start(url: str) -> None:
    """Without a scheme every call was retried for the whole connect timeout (29 s), then reported as a daemon
    that cannot be reached, with "start the daemon" as the fix."""
    command = [sys.executable, "-m", "exai", "stdio", "--connect", url]
    with anyio.fail_after(CEILING):
        refused = await anyio.run_process(command, input=b"", check=False)
    stderr = refused.stderr.decode()
    assert refused.returncode == 2, stderr
    assert "is not a daemon's URL: it needs http:// or https://, a host and a valid port" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert "--connect http://127.0.0.1:8765/mcp" in stderr, stderr


async def test_a_503_is_retried_then_reported_as_safe_to_retry(sim: SimControl) -> None:
    posts = []

    class Unavailable(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(self.path)
            self.send_response(503)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async with Client(
            _bridge(f"http://127.0.0.1:{server.server_port}", EXAI_BRIDGE_CONNECT_TIMEOUT_SECONDS="2")
        ) as c:
            with pytest.raises(Exception) as caught:
                await asyncio.wait_for(c.list_tools(), CEILING)
    finally:
        server.shutdown()
    assert "Cannot reach the EX-AI daemon" in str(caught.value) and "unavailable (503)" in str(caught.value)
    assert len(posts) >= 2, "a 503 is sent again until the connect timeout"


@pytest.mark.parametrize("token", ["", "not-a-valid-token"])
async def test_a_refused_token_is_an_auth_error_at_once_not_a_retry_loop(
    daemon: Daemon, sim: SimControl, token: str
) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    # Retrying would outlast the ceiling below: only an immediate answer passes.
    bridge = _bridge(proc.url, EXAI_TOKEN=token, EXAI_BRIDGE_CONNECT_TIMEOUT_SECONDS="600")
    async with Client(bridge) as client:
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(client.list_tools(), CEILING)
        result = await asyncio.wait_for(client.call_tool("chat", {"prompt": "who am I?"}), CEILING)
    for text in (str(caught.value), text_of(result)):
        assert "[auth/daemon_refused_token]" in text and "refused the token (401)" in text, text
        assert "Set EXAI_TOKEN to a valid token" in text and "exai token issue" in text, text
        assert "safe to retry" not in text and "Start the daemon" not in text, text
    assert result.is_error
    assert upstream_requests(sim, "who am I?") == 0


async def test_progress_and_protocol_errors_pass_through(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    reported: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async with Client(_bridge(proc.url)) as client:
        await client.list_tools()
        result = await client.call_tool(
            "chat", {"prompt": "stream through the bridge", "model": "sim-fast"}, progress_callback=on_progress
        )
        bad = await client.call_tool("chat", {"prompt": ""})
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("nope", {})
    assert not result.is_error and len(reported) > 3
    assert bad.is_error and "[validation/invalid_arguments]" in text_of(bad)
    assert upstream_requests(sim, "stream through the bridge") == 1


async def test_cancelling_through_the_bridge_cancels_upstream(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    sim.fault("hang", model="sim-fast")
    async with Client(_bridge(proc.url)) as client:
        await client.list_tools()
        await cancel_once_upstream(lambda: client.call_tool("chat", {"prompt": "cancel me", "model": "sim-fast"}), sim)
        await wait_until(lambda: sim.count("disconnects") >= 1, "the daemon's upstream request was cancelled")
        sim.clear_faults()
        after = await client.call_tool("chat", {"prompt": "next", "model": "sim-fast"})
    assert not after.is_error
    assert upstream_requests(sim, "cancel me") == 1


def test_the_bridge_depends_on_the_protocol_only() -> None:
    """Importing the bridge loads neither the daemon's server and services nor any provider SDK."""
    import subprocess

    heavy = ("exai.app", "exai.server.mcp", "exai.providers", "openai", "anthropic", "tiktoken")
    code = f"import sys, exai.server.bridge; print(sorted(m for m in sys.modules if m in {heavy!r}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"the bridge pulled in {loaded.strip()}"
