"""What the durable call record costs one call: its insert before the upstream request and its finish after.

Measured on the stores themselves (SQLite as the daemon opens it, PostgreSQL on 127.0.0.1 in a throwaway schema),
one pair of writes at a time and then 16 callers at once, with a result the size of a typical chat answer; then a
chat call's three writes (record, thread, end) from 32 callers at once, with the CPU they cost this process and the
database's processes per call (PostgreSQL batches writes that arrive together: `exai.storage.batching`).
Reported as p50 and p95 milliseconds per call: the insert alone (what the caller waits for: its answer goes out
while the finish is written) and both writes (the store's work), beside one thread append of the same call's two
turns, the write every model call already made before records existed. For PostgreSQL also the floor any
synchronously committed write pays on this machine: a one-row insert back to back, and paced at one every 100 ms
(a daemon at 10 calls/s: between commits the database's processes sleep and must be woken).

Run: `python bench/call_record.py [--calls 2000] [--postgres postgresql://postgres@127.0.0.1:5432/test]
[--out bench/results/call_record.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from exai.storage.base import CallEnd, CallRecord, Store, ThreadRecord, TurnRecord
from exai.storage.sqlite import SQLiteStore

RESULT = {
    "content": [{"type": "text", "text": "x" * 1500}],
    "structuredContent": {
        "answer": "x" * 1500,
        "model": "sim-fast",
        "usage": {"input_tokens": 30, "output_tokens": 300},
    },
}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3),
    }


async def one_record(store: Store) -> tuple[float, float]:
    """The insert (what the caller waits for: the answer goes out while the finish is written) and both writes."""
    now = time.time()
    call = CallRecord(tenant="bench", tool="chat", owner="bench", lease_until=now + 30, expires_at=now + 3600)
    started = time.perf_counter()
    await store.create_call(call)
    inserted = time.perf_counter() - started
    await store.finish_call(call.id, CallEnd("completed", result=RESULT), time.time())
    return inserted, time.perf_counter() - started


async def one_append(store: Store) -> float:
    thread = ThreadRecord(tenant="bench", title="bench", expires_at=time.time() + 3600)
    turns = [
        TurnRecord(role="user", content="question", tool="chat", seq=1),
        TurnRecord(role="assistant", content="x" * 1500, tool="chat", seq=2),
    ]
    thread.turn_count, thread.version = 2, 1
    started = time.perf_counter()
    await store.append_turns(thread, turns, expected_version=0)
    return time.perf_counter() - started


async def measure(store: Store, calls: int) -> dict[str, Any]:
    for _ in range(50):  # warm-up: connections, statement caches
        await one_record(store)
        await one_append(store)
    record = [await one_record(store) for _ in range(calls)]
    append = [await one_append(store) for _ in range(calls)]

    async def writer(n: int) -> list[float]:
        return [(await one_record(store))[1] for _ in range(n)]

    concurrent = [s for batch in await asyncio.gather(*(writer(calls // 16) for _ in range(16))) for s in batch]
    return {
        "call_record_caller_waits": percentiles([inserted for inserted, _ in record]),
        "call_record": percentiles([both for _, both in record]),
        "thread_append": percentiles(append),
        "call_record_16_writers": percentiles(concurrent),
        "calls_32_at_once": await calls_at_once(store, calls, 32),
    }


async def calls_at_once(store: Store, calls: int, writers: int) -> dict[str, Any]:
    """A chat call's three writes (record, a new thread's two turns, the record's end) from `writers` at once: the
    rate, and the CPU per call of this process (the store's client) and of the database's processes."""

    async def writer(n: int) -> None:
        for _ in range(n):
            now = time.time()
            call = CallRecord(tenant="bench", tool="chat", owner="bench", lease_until=now + 30, expires_at=now + 3600)
            await store.create_call(call)
            await one_append(store)
            await store.finish_call(call.id, CallEnd("completed", result=RESULT), time.time())

    client, database, started = time.process_time(), database_cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(writer(calls // writers) for _ in range(writers)))
    seconds, done = time.perf_counter() - started, calls // writers * writers
    return {
        "calls_per_s": round(done / seconds, 1),
        "client_cpu_ms_per_call": round((time.process_time() - client) / done * 1000, 3),
        "database_cpu_ms_per_call": round((database_cpu_seconds() - database) / done * 1000, 3),
    }


def database_cpu_seconds() -> float:
    """User and system time of this machine's PostgreSQL processes (0 for SQLite, which runs in this process)."""
    total = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().startswith("postgres"):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / os.sysconf("SC_CLK_TCK")


async def commit_floor(url: str, schema: str, commits: int, gap_s: float) -> dict[str, float]:
    """A one-row insert committed `commits` times, `gap_s` apart: the WAL flush and wake-ups, nothing of ours."""
    import psycopg

    table = f'"{schema}".commit_floor'
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (n integer)")
        taken: list[float] = []
        for n in range(commits):
            started = time.perf_counter()
            await conn.execute(f"INSERT INTO {table} VALUES (%s)", (n,))
            taken.append(time.perf_counter() - started)
            if gap_s:
                await asyncio.sleep(gap_s)
    return percentiles(taken)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--postgres", default=os.environ.get("EXAI_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "call_record.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load_before": os.getloadavg()}
    }
    with tempfile.TemporaryDirectory() as folder:
        sqlite = SQLiteStore(Path(folder) / "bench.db")
        await sqlite.open()
        await sqlite.migrate()
        results["sqlite"] = await measure(sqlite, args.calls)
        await sqlite.close()
    from exai.storage.postgres import PostgresStore

    schema = f"exai_bench_{secrets.token_hex(4)}"
    postgres = PostgresStore(args.postgres, schema=schema)
    await postgres.open()
    try:
        await postgres.migrate()
        results["postgresql"] = await measure(postgres, args.calls)
        results["postgresql"]["commit_back_to_back"] = await commit_floor(args.postgres, schema, 1000, 0.0)
        results["postgresql"]["commit_every_100_ms"] = await commit_floor(args.postgres, schema, 300, 0.1)
    finally:
        await postgres.close()
        import psycopg

        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    results["machine"]["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
