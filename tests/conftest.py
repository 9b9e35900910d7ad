"""Shared fixtures: a real upstream simulator process, real daemons, and a clean environment per test."""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from psycopg import AsyncConnection

from exai.app import Services
from exai.provider_specs import PROVIDER_SPECS

pytest_plugins = ["tests.services", "tests.node_toolchain", "tests.container_engine"]
TEST_JWT_SECRET = "a-test-secret-that-is-long-enough-0123456789"
# One TLS context for every test HTTP client: building one loads the CA bundle, about 45 ms of CPU each time.
TLS = ssl.create_default_context()
LEAK_MARKERS = ("sk-test-kimi-secret", "sk-test-anthropic-secret", TEST_JWT_SECRET, "Bearer ey")
SIM_MODELS = "sim-fast,sim-smart,sim-large:1000000"


# Markers that follow from a fixture a test uses (directly or through another fixture), so that
# `pytest -m "not containers"` and the fast lane `-m "not slow"` need no list kept by hand.
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "daemon": ("daemon", "slow"),
    "docker_engine": ("containers", "slow"),
    "node_toolchain": ("js", "slow"),
    "deploy": ("nginx", "slow"),
    "nginx_prefix": ("nginx", "slow"),
    "pgbouncer_url": ("slow",),
    "postgres_url": ("postgres",),
    "private_postgres": ("postgres",),
    "redis_url": ("redis",),
}


def pytest_keyboard_interrupt() -> None:
    """Ctrl-C: pytest prints its short summary; asyncio would then add the interrupted test task's traceback
    ("Task exception was never retrieved") when the event loop is collected. Fixtures still stop every process."""
    logging.getLogger("asyncio").disabled = True


# Tests that share one machine-wide resource run on one pytest-xdist worker, one after another (`--dist loadgroup`):
# the Docker engine is held by one test process at a time (a file lock).
FIXTURE_GROUPS = {"docker_engine": "docker"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for marker in FIXTURE_MARKERS.get(fixture, ()):
                item.add_marker(marker)
            if group := FIXTURE_GROUPS.get(fixture):
                item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _provider_env_names() -> set[str]:
    names = {"CUSTOM_API_URL", "CUSTOM_BASE_URL", "CUSTOM_MODELS", "CUSTOM_CONTEXT_WINDOW"}
    for spec in PROVIDER_SPECS.values():
        names.update(spec.key_env)
        names.update({spec.base_url_env, spec.allowed_env, spec.denied_env})
    return names


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's keys, .env or exai.toml."""
    for name in list(os.environ):
        if name.startswith("EXAI_") or name in _provider_env_names():
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXAI_DATA_DIR", str(tmp_path / "data"))


# Ports for the processes the tests start. Each pytest-xdist worker takes them in turn from a block of its own below
# the kernel's ephemeral range, which `bind(0)` and outgoing connections draw from: a port handed to one test's
# daemon cannot be picked by another worker, by a stress run's own processes or by a client's connection in the
# moment between this check and the daemon's bind.
PORT_BLOCK = 1_500
PORT_BASE = 20_000
_next_port = itertools.count(random.randrange(PORT_BLOCK))
"""From a random place in the block: two test runs at once on one machine (a CI run beside a developer's) would
otherwise hand out the same ports in the same order, and a daemon that lost the race for its port left its test
talking to the other run's daemon."""


def worker_index() -> int:
    """This pytest-xdist worker's number (0 without xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A port nothing listens on, reserved to this worker (see PORT_BLOCK)."""
    base = PORT_BASE + worker_index() * PORT_BLOCK
    if base + PORT_BLOCK > _ephemeral_floor():  # an unusual port range: the kernel's choice it is
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(PORT_BLOCK):
        port = base + next(_next_port) % PORT_BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use, or still in TIME_WAIT from an earlier test
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + PORT_BLOCK - 1}")


@dataclass
class Proc:
    """A real `exai` process on a port of its own."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def _die_with_pytest() -> None:
    """In the child before exec: SIGKILL when the test process dies, however it dies (Linux)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


try:
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (ImportError, OSError, AttributeError):
    _prctl = None


def popen_owned(args: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` for a helper process the tests own: it cannot outlive the test run, not even after a
    SIGKILL of pytest (the fixtures that start it also stop it in a `finally`)."""
    return subprocess.Popen(args, preexec_fn=_die_with_pytest, **options)


def start_exai(args: list[str], env: dict[str, str], log_path: Path, port: int) -> Proc:
    with log_path.open("wb") as log:
        process = popen_owned([sys.executable, "-m", "exai", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    proc = Proc(process, port, log_path)
    try:
        deadline = time.monotonic() + 120  # generous: the machine may be busy; a healthy start takes about a second
        # One client for every probe: a new one per probe would cost CPU the starting daemon needs.
        with httpx2.Client(timeout=1, verify=TLS) as http:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"exai {' '.join(args)} exited with {process.returncode}:\n{proc.logs()}")
                try:
                    if http.get(f"{proc.url}/healthz").status_code == 200:
                        return proc
                except httpx2.TransportError:
                    time.sleep(0.05)
        raise RuntimeError(f"exai {' '.join(args)} did not become healthy:\n{proc.logs()}")
    except BaseException:  # a failed start, or Ctrl-C while waiting: no process is left behind
        proc.stop(signal.SIGKILL)
        raise


@dataclass
class SimControl:
    """Drives the simulator's control API."""

    url: str
    client: httpx2.Client = field(default_factory=lambda: httpx2.Client(timeout=10, verify=TLS))

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def listed(self) -> list[str]:
        """The models the simulator's OpenAI listing names (its own and every vendor's it plays)."""
        return [model["id"] for model in self.client.get(f"{self.openai_url}/models").json()["data"]]

    def fault(self, kind: str, model: str = "*", **options: Any) -> None:
        self.client.post(f"{self.url}/_sim/faults", json={"kind": kind, "model": model, **options}).raise_for_status()

    def clear_faults(self) -> None:
        self.client.delete(f"{self.url}/_sim/faults").raise_for_status()

    def latency(self, ms: float, model: str = "*", jitter_ms: float = 0.0) -> None:
        self.client.post(f"{self.url}/_sim/latency", json={"ms": ms, "model": model, "jitter_ms": jitter_ms})

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.client.get(f"{self.url}/_sim/stats").json()
        return stats

    def count(self, key: str) -> int:
        counted: int = self.stats()["counters"].get(key, 0)
        return counted

    def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        requests: list[dict[str, Any]] = self.client.get(f"{self.url}/_sim/requests", params={"limit": limit}).json()
        return requests

    def reset(self) -> None:
        self.client.post(f"{self.url}/_sim/reset").raise_for_status()


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The statements sent to PostgreSQL, by their first two words and table (counted, then sent as usual)."""
    seen: Counter[str] = Counter()
    execute = AsyncConnection.execute

    async def counted(self: AsyncConnection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        words = str(query).split()
        if words[:2] == ["INSERT", "INTO"] or words[:1] == ["UPDATE"]:
            table = words[2] if words[0] == "INSERT" else words[1]
            seen[f"{words[0]} {table.rsplit('.', 1)[-1]}"] += 1
        elif words[:1] == ["WITH"]:
            seen["WITH"] += 1
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(AsyncConnection, "execute", counted)
    return seen


@pytest.fixture(scope="session")
def sim_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    proc = start_exai(["sim", "--port", str(port)], dict(os.environ), tmp_path_factory.mktemp("sim") / "sim.log", port)
    yield proc
    proc.stop()


@pytest.fixture
def sim(sim_process: Proc) -> SimControl:
    control = SimControl(sim_process.url)
    control.reset()
    return control


def sim_env(sim: SimControl, **extra: str) -> dict[str, str]:
    """Provider settings that point Custom, Kimi and Anthropic at the simulator, with quick retries."""
    return {
        "CUSTOM_API_URL": sim.openai_url,
        "CUSTOM_MODELS": SIM_MODELS,
        "KIMI_API_KEY": "sk-test-kimi-secret",
        "KIMI_BASE_URL": sim.openai_url,
        "ANTHROPIC_API_KEY": "sk-test-anthropic-secret",
        "ANTHROPIC_BASE_URL": sim.url,
        "EXAI_RETRY_BASE_DELAY_SECONDS": "0.01",
        "EXAI_RETRY_MAX_DELAY_SECONDS": "0.05",
        **extra,
    }


MakeServices = Callable[..., Awaitable[Services]]
Closing = Callable[[Any], Any]


@pytest.fixture
async def closing() -> AsyncIterator[Closing]:
    """`closing(thing)` returns `thing` and closes it (its async `close()`) after the test, pass or fail."""
    async with AsyncExitStack() as stack:

        def close_later(thing: Any) -> Any:
            stack.push_async_callback(thing.close)
            return thing

        yield close_later


@pytest.fixture
async def make_services(monkeypatch: pytest.MonkeyPatch, sim: SimControl) -> AsyncIterator[MakeServices]:
    """Build started in-process services against the simulator (settings as `EXAI_*=value` keywords); every one
    built is closed after the test, whether it passed or not."""
    from tests.helpers import build_services

    async with AsyncExitStack() as built:

        async def make(**extra: str) -> Services:
            services = await build_services(monkeypatch, sim, **extra)
            built.push_async_callback(services.close)
            return services

        yield make


@pytest.fixture
def daemon(sim: SimControl, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start real `exai serve` processes against the simulator; all are stopped after the test."""
    started: list[Proc] = []

    def start(port: int | None = None, **extra: str) -> Proc:
        port = port or free_port()
        env = {**os.environ, "EXAI_LOG_JSON": "true", **sim_env(sim, **extra), "EXAI_PORT": str(port)}
        proc = start_exai(["serve"], env, tmp_path / f"daemon-{port}.log", port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)
        logs = proc.logs()
        for secret in LEAK_MARKERS:
            assert secret not in logs, f"a secret ({secret[:12]}…) appeared in the daemon's log"


@pytest.fixture
def pg_schema(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema per test in the shared database, dropped afterwards."""
    import psycopg

    # A test that reaches PostgreSQL through `request.getfixturevalue` is not marked by the fixtures it names: its
    # parameter must carry the mark, or `-m "not postgres"` would still run it against the shared database.
    assert request.node.get_closest_marker("postgres"), "mark the parameter that uses PostgreSQL (pytest.param)"
    schema = f"exai_test_{os.getpid()}_{int(time.time() * 1000) % 10_000_000}"
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
