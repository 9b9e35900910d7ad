"""Daemon replicas behind a real nginx (Debian's), configured from deploy/nginx.conf, and a pre-2026 MCP client.

The replicas are `exai serve` processes on ports of their own, sharing PostgreSQL (a schema per test) and Redis
(a database number of their own); nginx round-robins between them on another port. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from exai.stress.balancer import NGINX, nginx_config
from tests.conftest import TLS, Proc, free_port, popen_owned

LEGACY_VERSION = "2025-06-18"
ACCEPT = "application/json, text/event-stream"


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_nginx(replica_ports: list[int], prefix: Path, *, per_address_limits: bool = True) -> Nginx:
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(replica_ports, port, per_address_limits=per_address_limits))
    globals_ = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log warn;"
    process = popen_owned(
        [str(NGINX), "-p", str(prefix), "-c", str(conf), "-g", globals_],
        stdout=subprocess.DEVNULL,
        stderr=(prefix / "logs" / "stderr.log").open("wb"),
    )
    nginx = Nginx(process, port, prefix)
    try:
        deadline = time.monotonic() + 60
        with httpx2.Client(timeout=2, verify=TLS) as http:  # one client: a new one per probe costs CPU
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"nginx exited: {(prefix / 'logs' / 'stderr.log').read_text()}")
                try:
                    if http.get(f"{nginx.url}/healthz").status_code == 200:
                        return nginx
                except httpx2.TransportError:
                    time.sleep(0.05)
        raise RuntimeError("nginx did not answer /healthz within 60 s")
    except BaseException:  # a failed start, or Ctrl-C while waiting
        nginx.stop()
        raise


@dataclass
class Cluster:
    """Replicas started by `start(port)`; restarting one keeps its port (nginx's upstream list is fixed)."""

    start: Callable[[int], Proc]
    replicas: list[Proc] = field(default_factory=list)

    def launch(self, count: int) -> None:
        self.replicas = [self.start(free_port()) for _ in range(count)]

    @property
    def ports(self) -> list[int]:
        return [replica.port for replica in self.replicas]

    def restart(self, index: int, sig: int = signal.SIGTERM) -> int:
        """Stop replica `index` with `sig`, start it again on its port, and return the old process's exit code."""
        code = self.replicas[index].stop(sig, timeout=60)
        self.start_again(index)
        return code

    def start_again(self, index: int) -> None:
        """Start stopped replica `index` again on its port."""
        self.replicas[index] = self.start(self.replicas[index].port)


class CallFailed(Exception):
    pass


@dataclass
class LegacyClient:
    """An MCP client on a handshake-era protocol (as the TypeScript SDK 1.x speaks it), over raw HTTP.

    It initializes once, keeps the Mcp-Session-Id if the server gives one, and sends it with every request.
    """

    url: str
    token: str
    http: httpx2.AsyncClient = field(init=False)
    session: str | None = None
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.http = httpx2.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {self.token}", "Accept": ACCEPT})

    async def open(self) -> dict[str, Any]:
        params = {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "legacy", "version": "1"},
        }
        result, _ = await self.request("initialize", params)
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    async def close(self) -> None:
        await self.http.aclose()

    async def post(self, message: dict[str, Any]) -> httpx2.Response:
        headers = {"mcp-protocol-version": LEGACY_VERSION} if message["method"] != "initialize" else {}
        if self.session:
            headers["mcp-session-id"] = self.session
        response = await self.http.post(f"{self.url}/mcp", json=message, headers=headers)
        if response.status_code >= 400:
            raise CallFailed(f"HTTP {response.status_code}: {response.text[:300]}")
        if message["method"] == "initialize":
            self.session = response.headers.get("mcp-session-id")
        return response

    async def request(self, method: str, params: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The request's result and the notifications that came before it on the response stream."""
        request_id = next(self.ids)
        response = await self.post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        messages = sse_messages(response.text) if "event-stream" in response.headers.get("content-type", "") else []
        if not messages:
            messages = [response.json()]
        answer = next((m for m in messages if m.get("id") == request_id), None)
        if answer is None:
            raise CallFailed(f"no answer to request {request_id} in {response.text[:300]!r}")
        if "error" in answer:
            raise CallFailed(f"JSON-RPC error: {answer['error']}")
        return answer["result"], [m for m in messages if "id" not in m]

    async def call(self, tool: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if meta:
            params["_meta"] = meta
        result, _ = await self.request("tools/call", params)
        if result.get("isError"):
            raise CallFailed(f"tool error: {result['content'][0]['text'][:300]}")
        return result


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages in a server-sent event stream."""
    messages = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if data:
            messages.append(json.loads(data))
    return messages
