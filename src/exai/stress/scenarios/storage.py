"""storage: sustained thread writes on SQLite, PostgreSQL and PostgreSQL + Redis; every acknowledged turn read back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx2

from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.metrics import histogram_quantile, scrape
from exai.stress.results import ScenarioResult
from exai.stress.target import LOCAL_POSTGRES, Daemon, Storage

NAME = "storage"
SUMMARY = (
    "Many threads are continued turn after turn, concurrently, on each backend; afterwards every thread is read back "
    "and its turns counted. Commit latency is the daemon's exai_storage_latency_seconds{operation=append_turns}; "
    "beside it, the daemon's event-loop lag (exai_event_loop_lag_seconds): a write resumes only when the loop gets "
    "to it, so the commit as the daemon sees it includes that wait."
)
CRITERION = "p95 commit latency < 10 ms (SQLite, PostgreSQL on loopback); 0 acknowledged turns lost; growth reported."
BACKENDS: tuple[Storage, ...] = ("sqlite", "postgres", "postgres+redis")
COMMIT_P95_MS = 10.0


def _size(daemon: Daemon, storage: Storage) -> int:
    """Bytes the store uses: the SQLite files, or the PostgreSQL schema's relations."""
    assert daemon.managed is not None
    env = daemon.managed.env
    if storage == "sqlite":
        return sum(p.stat().st_size for p in Path(env["EXAI_DATA_DIR"]).rglob("*") if p.is_file())
    import psycopg

    query = (
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'"
    )
    with psycopg.connect(LOCAL_POSTGRES) as conn:
        row = conn.execute(query, (env["EXAI_DATABASE_SCHEMA"],)).fetchone()
    return int(row[0]) if row else 0


async def _backend(ctx: Context, result: ScenarioResult, storage: Storage, writers: int, turns: int) -> None:
    daemon = ctx.target.daemon(f"storage-{storage}", storage)
    acknowledged: dict[str, int] = {}
    size_before = await asyncio.to_thread(_size, daemon, storage)

    threads_of: list[str | None] = [None] * writers

    async def writer(index: int, count: int) -> None:
        async with session(daemon.mcp_url, ctx.target.token) as client:
            for n in range(count):
                thread = threads_of[index]
                args = {"prompt": f"{storage} writer {index} turn {n}", "model": "sim-fast"}
                done = await call(
                    client, "chat", {**args, **({"continuation_id": thread} if thread else {})}, ctx.epoch
                )
                result.samples.append(done.sample)
                if done.sample.ok:
                    threads_of[index] = thread = done.data["continuation_id"]
                    acknowledged[thread] = acknowledged.get(thread, 0) + 1

    async with httpx2.AsyncClient(headers=ctx.admin_headers()) as http:
        await asyncio.gather(*(writer(i, 1) for i in range(writers)))  # warm-up: pools, connections, first thread
        before = await scrape(http, daemon.url)
        started = time.monotonic()
        await asyncio.gather(*(writer(i, turns - 1) for i in range(writers)))
        seconds = time.monotonic() - started
        after = await scrape(http, daemon.url)
    commit = histogram_quantile(after.bucket_delta(before, "exai_storage_latency_seconds:append_turns"), 0.95)
    lag = histogram_quantile(after.bucket_delta(before, "exai_event_loop_lag_seconds"), 0.95)
    lost = 0
    async with session(daemon.mcp_url, ctx.target.token) as client:
        for thread, acks in acknowledged.items():
            shown = await call(client, "threads", {"action": "show", "thread_id": thread, "limit": 1}, ctx.epoch)
            stored = shown.data.get("thread", {}).get("turns", 0) if shown.sample.ok else 0
            lost += max(0, 2 * acks - stored)  # each acknowledged chat wrote a user and an assistant turn
    written = 2 * sum(acknowledged.values())
    growth = (await asyncio.to_thread(_size, daemon, storage)) - size_before
    commit_ms = round(commit * 1000, 2) if commit is not None else None
    result.figures[storage] = {
        "turns_written": written,
        "calls_per_s": round(writers * (turns - 1) / seconds, 1),
        "commit_p95_ms": commit_ms,
        "event_loop_lag_p95_ms": round(lag * 1000, 2) if lag is not None else None,
        "growth_bytes_per_1000_turns": round(growth / written * 1000) if written else None,
    }
    if storage != "postgres+redis":
        passed = commit_ms is not None and commit_ms < COMMIT_P95_MS
        required = f"< {COMMIT_P95_MS:.0f} ms"
        result.check(f"{storage}: commit p95", required, f"{commit_ms} ms", passed, judged=not ctx.quick)
    result.check(f"{storage}: acknowledged turns lost", "0", f"{lost} of {written}", lost == 0 and written > 0)
    ctx.target.stop_daemon(daemon)


async def run(ctx: Context, result: ScenarioResult) -> None:
    if not ctx.target.local:
        result.skipped = "needs local daemons on each backend (SQLite, PostgreSQL, PostgreSQL + Redis)"
        return
    await ctx.sim.reset()
    await ctx.sim.latency(50)
    writers, turns = ctx.scale(16, 4), ctx.scale(100, 10)
    for number, storage in enumerate(BACKENDS):
        ctx.progress(number, len(BACKENDS), storage)
        await _backend(ctx, result, storage, writers, turns)
