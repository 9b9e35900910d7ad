"""The processes bench/overhead.py measures, and how to reach each one with the official MCP SDK client.

Every server runs in its own process on this machine: the upstream simulator, the bare echo and forwarding
servers (bench/echo_server.py, bench/forward_server.py) and `exai serve` / `exai stdio` as shipped by default,
once more with auth (HTTP only: a JWT per call), per-tenant limits and Redis, and once with every feature on
(the same and PostgreSQL, in a schema of its own that `close` drops).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from exai.security.auth import issue_token

HERE = Path(__file__).parent
FAST_MODEL = "sim-fast"  # answers at once
SLOW_MODEL = "sim-smart"  # answers after SLOW_MS
SLOW_MS = 200.0
REDIS = "redis://127.0.0.1:6379"
POSTGRES = os.environ.get("EXAI_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
LIMIT = 1_000_000  # limits are on and counted, but never refuse a benchmark call


def cpu_seconds(pid: int) -> float:
    """CPU time of one process so far, all its threads (Linux scheduler statistics, nanoseconds: the clock ticks of
    /proc/<pid>/stat count 10 ms, too coarse for a block of calls)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any EX-AI or provider setting, plus `extra`."""
    prefixes = ("EXAI_", "CUSTOM_", "KIMI_", "GLM_", "OPENAI_", "ANTHROPIC_", "OPENROUTER_", "MOONSHOT_", "ZHIPU")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(prefixes)}, **extra}


def wait_for_http(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx2.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return
        except httpx2.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not start")


@dataclass
class Servers:
    """The processes of one benchmark run; `close` ends every one of them."""

    data_dir: Path
    sim_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    tenant: str = field(default_factory=lambda: f"bench-{secrets.token_hex(4)}")
    redis_db: int = field(default_factory=lambda: random.randint(1, 15))
    schemas: list[str] = field(default_factory=list)

    def spawn(self, args: list[str], port: int, env: dict[str, str] | None = None) -> str:
        proc = subprocess.Popen(args, env=env or clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_for_http(port, proc)
        return f"http://127.0.0.1:{port}"

    def start_sim(self) -> None:
        port = free_port()
        self.sim_url = self.spawn([sys.executable, "-m", "exai", "sim", "--port", str(port)], port)
        rule = {"model": SLOW_MODEL, "ms": SLOW_MS}
        httpx2.post(f"{self.sim_url}/_sim/latency", json=rule).raise_for_status()

    def exai_env(self, name: str, full: bool, postgres: bool = False) -> dict[str, str]:
        """`exai` as shipped by default (durable SQLite, metrics, audit, alerts); `full` adds limits and Redis
        (and, over HTTP, JWT auth); `postgres` stores threads, calls and the audit in PostgreSQL. The one tenant of
        the bench's calls gets limits and a provider share (`EXAI_PROVIDER_CONCURRENCY_PER_TENANT`, 16 by default)
        above the 50 calls it makes at once: the rows measure the daemon's cost, not a tenant held to its share."""
        env = clean_env(
            CUSTOM_API_URL=f"{self.sim_url}/v1",
            CUSTOM_MODELS=f"{FAST_MODEL},{SLOW_MODEL}",
            EXAI_DATA_DIR=str(self.data_dir / name),
            EXAI_LOG_LEVEL="WARNING",
        )
        if full:
            over_http = name.startswith("http")
            tenant = self.tenant if over_http else "local"
            env |= {"EXAI_JWT_SECRET": self.jwt_secret} if over_http else {}
            env |= {
                "EXAI_REDIS_URL": f"{REDIS}/{self.redis_db}",
                "EXAI_RATE_LIMIT_RPM": str(LIMIT),
                "EXAI_RATE_LIMIT_TOKENS_PER_DAY": str(LIMIT * 1000),
                "EXAI_TENANT_LIMITS": json.dumps({tenant: {"requests_per_minute": LIMIT, "concurrent": 64}}),
                "EXAI_PROVIDER_CONCURRENCY_PER_TENANT": "64",
            }
        if postgres:
            schema = f"exai_bench_{secrets.token_hex(4)}"
            self.schemas.append(schema)
            env |= {"EXAI_DATABASE_URL": POSTGRES, "EXAI_DATABASE_SCHEMA": schema}
        return env

    def start_exai_http(self, name: str, full: bool, postgres: bool = False) -> str:
        port = free_port()
        env = self.exai_env(name, full, postgres) | {"EXAI_PORT": str(port)}
        return self.spawn([sys.executable, "-m", "exai", "serve"], port, env) + "/mcp"

    def start_script_http(self, script: str, *args: str) -> str:
        port = free_port()
        return self.spawn([sys.executable, str(HERE / script), *args, str(port)], port) + "/mcp"

    def bearer(self) -> str:
        return f"Bearer {issue_token(self.jwt_secret, self.tenant, ['exai:tools'], 3600)}"

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.schemas:
            import psycopg

            with psycopg.connect(POSTGRES, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def http_client(url: str, authorization: str | None = None) -> AbstractAsyncContextManager[Client]:
    @asynccontextmanager
    async def connect() -> AsyncIterator[Client]:
        headers = {"Authorization": authorization} if authorization else {}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            yield client

    return connect()


def stdio_client(command: list[str], env: dict[str, str]) -> Client:
    return Client(StdioServerParameters(command=command[0], args=command[1:], env=env))
