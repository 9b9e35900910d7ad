"""Three `exai serve` replicas in stateless mode behind a real nginx (deploy/nginx.conf), sharing PostgreSQL and Redis.

Clients on a handshake-era protocol (with the Mcp-Session-Id the TypeScript SDK 1.x keeps) and on 2026-07-28 work on
every replica; a rolling restart fails no call; a SIGKILL fails only the calls in flight on the killed replica, and
no acknowledged turn goes missing; rate limits are exact across replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from exai.security.auth import new_api_key
from exai.stress.balancer import NGINX
from exai.stress.driver import describe
from tests.conftest import Proc, SimControl
from tests.container_engine import unavailable
from tests.helpers import text_of, wait_until
from tests.replica_cluster import ACCEPT, LEGACY_VERSION, CallFailed, Cluster, LegacyClient, Nginx, start_nginx

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]
LIMITED_RPM = 10
THREAD_TURNS = 50  # prompts per thread before a client starts a new one (`threads show` lists 200 turns)


@dataclass
class Deployment:
    cluster: Cluster
    nginx: Nginx
    key: str  # a tenant with room for the load
    limited_key: str  # a tenant allowed LIMITED_RPM calls a minute
    started: float = field(default_factory=time.monotonic)


def own_redis_db(redis_url: str) -> str:
    """The shared Redis, on a database number of its own (keys are per tenant, and the tenants are new)."""
    base, _, _ = redis_url.rpartition("/")
    return f"{base}/{1 + os.getpid() % 12}"  # 13 to 15 are the workers' shared databases


@pytest.fixture
def deploy(
    daemon: Callable[..., Proc], sim: SimControl, postgres_url: str, pg_schema: str, redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., Deployment]]:
    if not NGINX.exists():
        unavailable("the replica tests need Debian's nginx (apt-get install nginx-light)")
    suffix = os.urandom(4).hex()
    key, entry = new_api_key(f"load-{suffix}", ["exai:tools"])
    limited_key, limited_entry = new_api_key(f"limited-{suffix}", ["exai:tools"])
    env = {
        "EXAI_STATELESS_HTTP": "true",
        "EXAI_DATABASE_URL": postgres_url,
        "EXAI_DATABASE_SCHEMA": pg_schema,
        "EXAI_REDIS_URL": own_redis_db(redis_url),
        "EXAI_API_KEYS": f"{entry},{limited_entry}",
        "EXAI_RATE_LIMIT_RPM": "100000",
        "EXAI_RATE_LIMIT_CONCURRENCY": "64",
        "EXAI_TENANT_LIMITS": json.dumps({f"limited-{suffix}": {"requests_per_minute": LIMITED_RPM}}),
        "EXAI_MAX_TURNS_PER_THREAD": "2000",
        "EXAI_TOOL_PROFILE": "full",
        "EXAI_SHUTDOWN_GRACE_SECONDS": "30",
    }
    balancers: list[Nginx] = []

    def make(replicas: int, per_address_limits: bool = True) -> Deployment:
        cluster = Cluster(lambda port: daemon(port=port, **env))
        cluster.launch(replicas)
        prefix = tmp_path / f"nginx-{len(balancers)}"
        balancers.append(start_nginx(cluster.ports, prefix, per_address_limits=per_address_limits))
        return Deployment(cluster, balancers[-1], key, limited_key)

    yield make
    for nginx in balancers:
        nginx.stop()


def modern_client(url: str, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    return Client(streamable_http_client(f"{url}/mcp", http_client=http))


async def test_legacy_clients_work_on_every_replica(deploy: Callable[[int], Deployment], sim: SimControl) -> None:
    dep = deploy(3)
    client = LegacyClient(dep.nginx.url, dep.key)
    try:
        init = await client.open()
        assert init["protocolVersion"] == "2025-06-18"
        assert client.session is None, "stateless: no session id to lose on another replica"
        await client.request("logging/setLevel", {"level": "debug"})
        thread = None
        for n in range(6):  # round robin: every replica answers twice
            args = {"prompt": f"turn {n}", "model": "sim-fast", **({"continuation_id": thread} if thread else {})}
            result, notes = await client.request(
                "tools/call", {"name": "chat", "arguments": args, "_meta": {"progressToken": f"p{n}"}}
            )
            assert not result.get("isError"), result
            thread = result["structuredContent"]["continuation_id"]
            progress = [m for m in notes if m["method"] == "notifications/progress"]
            assert progress and progress[0]["params"]["progressToken"] == f"p{n}", "progress comes on the POST stream"
        shown = await client.call("threads", {"action": "show", "thread_id": thread})
        prompts = [t["content"] for t in shown["structuredContent"]["turns"] if t["role"] == "user"]
        assert prompts == [f"turn {n}" for n in range(6)]
        stream = await client.http.get(f"{dep.nginx.url}/mcp", headers={"Accept": "text/event-stream"})
        assert stream.status_code == 405 and "stateless" in stream.text
    finally:
        await client.close()
    async with modern_client(dep.nginx.url, dep.key) as modern:
        for _ in range(3):
            assert not (await modern.call_tool("chat", {"prompt": "modern", "model": "sim-fast"})).is_error


@dataclass
class Load:
    """Clients calling `chat` in a loop, each continuing its own thread, and what became of every call."""

    url: str
    key: str
    acknowledged: dict[str, list[str]] = field(default_factory=dict)  # thread -> prompts answered
    failures: list[tuple[float, float, str]] = field(default_factory=list)  # (started, ended, error)
    calls: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run_legacy(self, name: str) -> None:
        client = LegacyClient(self.url, self.key)
        await client.open()
        thread: str | None = None
        try:
            for n in range(100_000):
                if self.stop.is_set():
                    return
                prompt, started = f"{name} {n}", time.monotonic()
                try:
                    args = {"prompt": prompt, "model": "sim-fast", **({"continuation_id": thread} if thread else {})}
                    result = await client.call("chat", args)
                except (CallFailed, httpx2.TransportError) as exc:
                    self.failures.append((started, time.monotonic(), f"{name}: {exc}"))
                    continue
                thread = self.record(result["structuredContent"]["continuation_id"], prompt)
        finally:
            await client.close()

    async def run_modern(self, name: str) -> None:
        thread: str | None = None
        for n in range(100_000):
            if self.stop.is_set():
                return
            prompt, started = f"{name} {n}", time.monotonic()
            try:
                async with modern_client(self.url, self.key) as client:
                    args = {"prompt": prompt, "model": "sim-fast", **({"continuation_id": thread} if thread else {})}
                    result = await client.call_tool("chat", args)
                if result.is_error:
                    raise CallFailed(text_of(result))
            except Exception as exc:  # the SDK raises its own types for HTTP and stream failures
                said = describe(exc)[1]  # the task group's leaves: what failed, not "unhandled errors in a TaskGroup"
                self.failures.append((started, time.monotonic(), f"{name}: {said}"))
                continue
            thread = self.record(result.structured_content["continuation_id"], prompt)

    def record(self, thread: str, prompt: str) -> str | None:
        """Keep an acknowledged prompt; the thread to continue next (a new one once this one is long enough)."""
        self.acknowledged.setdefault(thread, []).append(prompt)
        self.calls += 1
        return thread if len(self.acknowledged[thread]) < THREAD_TURNS else None

    async def wait_for_calls(self, more: int) -> None:
        target = self.calls + more
        await wait_until(lambda: self.calls >= target, f"{more} more calls answered (failures: {self.failures[-3:]})")


async def missing_turns(url: str, key: str, acknowledged: dict[str, list[str]]) -> dict[str, list[str]]:
    missing = {}
    client = LegacyClient(url, key)
    await client.open()
    try:
        for thread, prompts in acknowledged.items():
            shown = await client.call("threads", {"action": "show", "thread_id": thread, "limit": 200})
            assert len(prompts) <= THREAD_TURNS, "`threads show` lists at most 200 turns: keep each thread shorter"
            stored = {t["content"] for t in shown["structuredContent"]["turns"] if t["role"] == "user"}
            if lost := [p for p in prompts if p not in stored]:
                missing[thread] = lost
    finally:
        await client.close()
    return missing


async def test_rolling_restart_and_sigkill_under_load(deploy: Callable[[int], Deployment], sim: SimControl) -> None:
    dep = deploy(3)
    sim.latency(40, jitter_ms=20)
    load = Load(dep.nginx.url, dep.key)
    clients = [load.run_legacy("legacy-a"), load.run_legacy("legacy-b"), load.run_modern("modern-a")]
    tasks = [asyncio.create_task(c) for c in [*clients, load.run_modern("modern-b")]]
    try:
        await load.wait_for_calls(10)
        for index in range(3):  # (a) rolling restart: SIGTERM each replica in turn, wait until it is back
            code = await asyncio.to_thread(dep.cluster.restart, index)
            assert code == 0, f"replica {index} did not shut down cleanly (exit {code})"
            await load.wait_for_calls(5)
        assert load.failures == [], f"the rolling restart failed calls: {load.failures[:5]}"

        kill_sent = time.monotonic()  # (b) SIGKILL one replica under load
        await asyncio.to_thread(dep.cluster.replicas[1].stop, signal.SIGKILL)
        dead = time.monotonic()  # the process is reaped: a call that starts now never reaches it
        await load.wait_for_calls(10)
        await asyncio.to_thread(dep.cluster.start_again, 1)
        await load.wait_for_calls(20)
    finally:
        load.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    late = [f for f in load.failures if f[0] > dead]
    assert late == [], f"calls started after the SIGKILL failed: {late[:5]}"
    assert all(ended >= kill_sent for _, ended, _ in load.failures), "only calls in flight at the kill may fail"
    assert await missing_turns(dep.nginx.url, dep.key, load.acknowledged) == {}, "an acknowledged turn was lost"


async def test_a_restart_resets_no_request_the_balancer_has_sent(deploy: Callable[..., Deployment]) -> None:
    """A replica's listener closing at shutdown reset the connections queued in it, and those accepted just before
    whose request had not been read: nginx had sent a POST on each, got the reset and answered 502 (it does not
    repeat a POST once sent). Found behind the rolling restart test's one unexplained failure: 13 of 31,000
    `initialize` POSTs failed over 10 restarts at about 1,000 a second. Here 32 clients send them as fast as they
    can through nginx (its per-address limits lifted: every client is 127.0.0.1) while each of two replicas is
    restarted three times."""
    dep = deploy(2, per_address_limits=False)
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"Authorization": f"Bearer {dep.key}", "Accept": ACCEPT}
    answers: Counter[str] = Counter()
    stop = asyncio.Event()

    async def client() -> None:
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            while not stop.is_set():
                try:
                    answers[str((await http.post(f"{dep.nginx.url}/mcp", json=body)).status_code)] += 1
                except httpx2.TransportError as exc:
                    answers[type(exc).__name__] += 1

    async def hundred_more_answers() -> None:
        target = answers.total() + 100
        await wait_until(lambda: answers.total() >= target, "100 more answers")

    clients = [asyncio.create_task(client()) for _ in range(32)]
    try:
        await hundred_more_answers()
        for _ in range(3):
            for index in range(2):
                code = await asyncio.to_thread(dep.cluster.restart, index)
                assert code == 0, f"replica {index} did not shut down cleanly (exit {code})"
                await hundred_more_answers()
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    errors = (dep.nginx.prefix / "logs" / "error.log").read_text().splitlines()
    why = [line for line in errors if "[error]" in line and "connect() failed" not in line]  # refusals are retried
    assert set(answers) == {"200"}, f"requests failed across the restarts: {dict(answers)}; nginx said: {why}"


async def test_rate_limits_are_exact_across_replicas(deploy: Callable[[int], Deployment], sim: SimControl) -> None:
    dep = deploy(3)
    client = LegacyClient(dep.nginx.url, dep.limited_key)
    await client.open()
    outcomes = []
    try:
        for n in range(LIMITED_RPM + 6):  # round robin over three replicas
            result, _ = await client.request("tools/call", {"name": "chat", "arguments": {"prompt": f"{n}"}})
            outcomes.append(result["_meta"]["exai/error"]["code"] if result.get("isError") else "ok")
    finally:
        await client.close()
    assert outcomes == ["ok"] * LIMITED_RPM + ["rate_limited_rpm"] * 6, outcomes


async def calls_per_second(url: str, key: str, clients: int, calls_each: int) -> float:
    async def one_client() -> None:
        client = LegacyClient(url, key)
        await client.open()
        try:
            for n in range(calls_each):
                await client.call("chat", {"prompt": f"throughput {n}", "model": "sim-fast"})
        finally:
            await client.close()

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return clients * calls_each / (time.monotonic() - started)


async def test_throughput_with_one_and_three_replicas(
    deploy: Callable[[int], Deployment], sim: SimControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rate is measured and printed, not asserted (on 2 shared cores three replicas cannot scale linearly, and
    a timing bound would fail for the machine's load, not for the code). What is asserted: under this load every
    call answered (a failed call raises) and reached the upstream exactly once."""
    rates = {}
    for replicas in (1, 3):
        dep = deploy(replicas)
        await calls_per_second(dep.nginx.url, dep.key, 4, 3)  # warm up every replica's pools
        before = sim.count("requests:sim-fast")
        rates[replicas] = await calls_per_second(dep.nginx.url, dep.key, 8, 15)
        assert sim.count("requests:sim-fast") - before == 8 * 15, "each call reached the upstream exactly once"
    with capsys.disabled():
        print(f"\nstateless replicas behind nginx, chat calls/s: 1 replica {rates[1]:.1f}, 3 replicas {rates[3]:.1f}")
