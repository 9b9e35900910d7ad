"""Both stores behind the one protocol, on real SQLite, real PostgreSQL and real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from exai.storage.base import AuditRecord, Store, ThreadRecord, TurnRecord
from exai.storage.cache import CachedStore
from exai.storage.migrations import LATEST
from exai.storage.postgres import PostgresStore
from exai.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    kind = request.param
    built: Store
    if kind == "sqlite":
        built = SQLiteStore(tmp_path / "exai.db")
    else:
        url = request.getfixturevalue("postgres_url")
        built = PostgresStore(url, schema=request.getfixturevalue("pg_schema"))
        if kind.endswith("redis"):
            built = CachedStore(built, aioredis.from_url(request.getfixturevalue("redis_url")))
    await built.open()
    assert await built.migrate() == LATEST
    yield built
    await built.close()


async def _create(store: Store, thread: ThreadRecord) -> None:
    """Store a thread the way the server does: with its first turn, in one transaction."""
    await store.append_turns(
        thread.id,
        [TurnRecord(role="user", content="seed", tool="chat")],
        tool="chat",
        state=None,
        expires_at=thread.expires_at,
        create=thread,
    )


def _thread(tenant: str = "alice", ttl: float = 3600) -> ThreadRecord:
    return ThreadRecord(tenant=tenant, title="t", expires_at=time.time() + ttl)


async def test_migrations_are_idempotent(store: Store) -> None:
    assert await store.migrate() == LATEST
    await store.ping()


async def test_threads_and_turns_round_trip(store: Store) -> None:
    thread = _thread()
    await _create(store, thread)
    turns = [
        TurnRecord(role="user", content="héllo ✓", tool="chat", files=["/a.py"]),
        TurnRecord(
            role="assistant",
            content="hi",
            tool="chat",
            model="m",
            provider="p",
            usage={"input_tokens": 3, "output_tokens": 1},
        ),
    ]
    updated = await store.append_turns(
        thread.id, turns, tool="chat", state={"workflows": {"x": {"n": 1}}}, expires_at=thread.expires_at + 10
    )
    assert updated.turn_count == 3 and updated.tools == ["chat"] and updated.state["workflows"]["x"]["n"] == 1
    await store.append_turns(
        thread.id,
        [TurnRecord(role="user", content="more", tool="analyze")],
        tool="analyze",
        state=None,
        expires_at=thread.expires_at + 20,
    )
    loaded = await store.get_thread(thread.id)
    assert loaded is not None and loaded.turn_count == 4 and loaded.tools == ["chat", "analyze"]
    assert loaded.state == {"workflows": {"x": {"n": 1}}}, "state=None keeps the previous state"
    got = await store.get_turns(thread.id)
    assert [(t.seq, t.content) for t in got] == [(1, "seed"), (2, "héllo ✓"), (3, "hi"), (4, "more")]
    assert got[1].files == ["/a.py"] and got[2].usage == {"input_tokens": 3, "output_tokens": 1}
    assert await store.get_thread("00000000-0000-0000-0000-000000000000") is None


async def test_concurrent_appends_keep_every_turn_in_order(store: Store) -> None:
    thread = _thread()
    await _create(store, thread)

    async def append(i: int) -> None:
        await store.append_turns(
            thread.id,
            [
                TurnRecord(role="user", content=f"q{i}", tool="chat"),
                TurnRecord(role="assistant", content=f"a{i}", tool="chat"),
            ],
            tool="chat",
            state=None,
            expires_at=thread.expires_at,
        )

    await asyncio.gather(*(append(i) for i in range(20)))
    turns = await store.get_turns(thread.id)
    assert [t.seq for t in turns] == list(range(1, 42))
    for question, answer in zip(turns[1::2], turns[2::2], strict=True):
        assert question.content[1:] == answer.content[1:], "a call's two turns stay together"
    assert (await store.get_thread(thread.id)).turn_count == 41


async def test_listing_is_per_tenant_and_newest_first(store: Store) -> None:
    for tenant in ("alice", "alice", "bob"):
        record = _thread(tenant)
        await _create(store, record)
        await store.append_turns(
            record.id,
            [TurnRecord(role="user", content="x", tool="chat")],
            tool="chat",
            state=None,
            expires_at=record.expires_at,
        )
    alice = await store.list_threads("alice", 10)
    assert len(alice) == 2 and alice[0].updated_at >= alice[1].updated_at
    assert all(t.tenant == "alice" for t in alice)


async def test_purge_and_audit(store: Store) -> None:
    old = _thread(ttl=-1)
    await _create(store, old)
    await store.write_audit(
        [
            AuditRecord(
                tenant="alice",
                tool="chat",
                outcome="ok",
                correlation_id="c1",
                input_tokens=5,
                cost_usd=0.1,
                time=time.time() - 100,
            ),
            AuditRecord(tenant="bob", tool="debug", outcome="error", error_category="provider", correlation_id="c2"),
        ]
    )
    assert [a.correlation_id for a in await store.list_audit()] == ["c2", "c1"]
    assert [a.correlation_id for a in await store.list_audit(tenant="alice")] == ["c1"]
    assert [a.correlation_id for a in await store.list_audit(tool="debug", since=time.time() - 50)] == ["c2"]
    assert await store.purge(time.time(), audit_before=time.time() - 50) == 2
    assert await store.get_thread(old.id) is None
    assert [a.correlation_id for a in await store.list_audit()] == ["c2"]


async def test_redis_cache_never_goes_back_to_an_older_version(
    postgres_url: str, pg_schema: str, redis_url: str
) -> None:
    inner = PostgresStore(postgres_url, schema=pg_schema)
    first = CachedStore(inner, aioredis.from_url(redis_url))
    second = CachedStore(PostgresStore(postgres_url, schema=pg_schema), aioredis.from_url(redis_url))
    await first.open()
    await second.open()
    await first.migrate()
    thread = _thread()
    await _create(first, thread)
    stale = await second.get_thread(thread.id)  # cached at version 0
    await first.append_turns(
        thread.id,
        [TurnRecord(role="user", content="new", tool="chat")],
        tool="chat",
        state={"v": 1},
        expires_at=thread.expires_at,
    )
    await second._set(f"exai:thread:{thread.id}", stale.turn_count, stale.model_dump())  # a late, stale write
    seen = await second.get_thread(thread.id)
    assert seen.turn_count == 2 and seen.state == {"v": 1}
    assert [t.content for t in await second.get_turns(thread.id)] == ["seed", "new"]
    await first.close()
    await second.close()


async def test_redis_outage_falls_back_to_the_database(tmp_path: Path) -> None:
    cached = CachedStore(
        SQLiteStore(tmp_path / "x.db"), aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    )
    await cached.open()
    await cached.migrate()
    thread = _thread()
    await _create(cached, thread)
    await cached.append_turns(
        thread.id,
        [TurnRecord(role="user", content="x", tool="chat")],
        tool="chat",
        state=None,
        expires_at=thread.expires_at,
    )
    assert (await cached.get_thread(thread.id)).turn_count == 2
    await cached.close()
