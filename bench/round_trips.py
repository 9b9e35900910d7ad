"""The floor of every round trip a call makes to Redis and PostgreSQL on this machine: back to back, and paced.

With every feature on, a new chat waits for four round trips before and after its upstream request (the limiter's
admission and release in Redis, the call's record and the thread's turns in PostgreSQL). Their cost is set by the
machine as much as by the daemon: paced at one every 100 ms (a daemon serving 10 calls/s), both processes sleep
between requests and each round trip pays their wake-up; back to back it does not. This measures the bare floor,
without the daemon: a Redis PING and a PostgreSQL `SELECT 1` on one connection each, p50 and p95 in milliseconds.

Run: `python bench/round_trips.py [--count 300] [--redis redis://127.0.0.1:6379/15]
[--postgres postgresql://postgres@127.0.0.1:5432/test] [--out bench/results/round_trips.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis

PACE_SECONDS = 0.1


async def timed(ask: Callable[[], Awaitable[Any]], count: int, pace: float) -> dict[str, float]:
    """p50 and p95 of `count` round trips, `pace` seconds apart (0: back to back)."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        await ask()
        seconds.append(time.perf_counter() - started)
        if pace:
            await asyncio.sleep(pace)
    ordered = sorted(seconds)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "round_trips.json")
    args = parser.parse_args()
    redis = aioredis.from_url(args.redis)
    postgres = await psycopg.AsyncConnection.connect(args.postgres, autocommit=True)
    asks: dict[str, Callable[[], Awaitable[Any]]] = {
        "redis PING": redis.ping,
        "postgres SELECT 1": lambda: postgres.execute("SELECT 1"),
    }
    report: dict[str, Any] = {"machine": platform.node(), "load_average_before": os.getloadavg()[0], "floors": {}}
    try:
        for name, ask in asks.items():
            await timed(ask, 20, 0)  # the connection is warm before anything is counted
            report["floors"][name] = {
                "back to back": await timed(ask, args.count, 0),
                f"one every {PACE_SECONDS * 1000:g} ms": await timed(ask, args.count, PACE_SECONDS),
            }
    finally:
        await redis.aclose()
        await postgres.close()
    report["load_average_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, floors in report["floors"].items():
        print(name, "  ".join(f"{how}: p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms" for how, f in floors.items()))


if __name__ == "__main__":
    asyncio.run(main())
