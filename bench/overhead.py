"""Gateway overhead: how much `chat` through `exai serve` costs on top of the protocol floor and the upstream.

Measures, against the simulator at 0 ms latency:
  (a) a direct upstream call with the openai SDK,
  (b) a bare MCP SDK server's echo tool over Streamable HTTP,
  (c) the `chat` tool through `exai serve`,
at concurrency 1 and 32, and reports ratio = c / (a + b) at p50, concurrency 1 (target <= 1.25).
Run by hand: `python bench/overhead.py [--calls 300] [--out bench/results/overhead.json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import openai
from mcp import Client

from exai.tools.chat import SYSTEM_PROMPT

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, env=env or dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            httpx2.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return proc
        except httpx2.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{args} did not start")


async def measure(call: Callable[[int], Awaitable[object]], calls: int, concurrency: int) -> dict[str, float]:
    for i in range(20):  # warm-up: connections, imports, caches
        await call(i)
    latencies: list[float] = []
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            started = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
        "throughput_per_s": round(calls / wall, 1),
        "calls": calls,
    }


async def run(calls: int) -> dict[str, object]:
    sim_port, echo_port, exai_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "CUSTOM_API_URL": f"http://127.0.0.1:{sim_port}/v1",
        "CUSTOM_MODELS": "sim-fast",
        "EXAI_PORT": str(exai_port),
        "EXAI_LOG_LEVEL": "WARNING",
    }
    procs = [
        start([sys.executable, "-m", "exai", "sim", "--port", str(sim_port)], sim_port),
        start([sys.executable, str(HERE / "echo_server.py"), str(echo_port)], echo_port),
        start([sys.executable, "-m", "exai", "serve"], exai_port, env),
    ]
    results: dict[str, dict[str, dict[str, float]]] = {"direct": {}, "echo": {}, "chat": {}}
    try:
        upstream = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{sim_port}/v1", api_key="x", max_retries=0)

        async def direct(i: int) -> object:
            return await upstream.chat.completions.create(
                model="sim-fast", messages=[{"role": "user", "content": f"bench {i}"}]
            )

        async with (
            Client(f"http://127.0.0.1:{echo_port}/mcp") as echo_client,
            Client(f"http://127.0.0.1:{exai_port}/mcp") as exai_client,
        ):
            await echo_client.list_tools()
            await exai_client.list_tools()

            async def echo(i: int) -> object:
                return await echo_client.call_tool("echo", {"text": f"bench {i}"})

            async def chat(i: int) -> object:
                result = await exai_client.call_tool("chat", {"prompt": f"bench {i}", "model": "sim-fast"})
                assert not result.is_error, result.content
                return result

            for concurrency in (1, 32):
                for name, fn in (("direct", direct), ("echo", echo), ("chat", chat)):
                    results[name][f"c{concurrency}"] = await measure(fn, calls, concurrency)
        await upstream.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    floor = results["direct"]["c1"]["p50_ms"] + results["echo"]["c1"]["p50_ms"]
    floor32 = results["direct"]["c32"]["p50_ms"] + results["echo"]["c32"]["p50_ms"]
    return {
        "what": "p50/p99 latency (ms) and throughput; ratio = chat / (direct + echo) at p50",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
        "ratio_p50_c1": round(results["chat"]["c1"]["p50_ms"] / floor, 3),
        "ratio_p50_c32": round(results["chat"]["c32"]["p50_ms"] / floor32, 3),
        "target_ratio_p50_c1": 1.25,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "overhead.json")
    args = parser.parse_args()
    report = asyncio.run(run(args.calls))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
