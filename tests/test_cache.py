"""The Redis turn cache on real Redis and PostgreSQL: never stale, even when its writes fail; cheap per append."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from exai.conversations.threads import Conversations
from exai.storage.base import TurnRecord
from exai.storage.cache import CachedStore
from exai.storage.postgres import PostgresStore
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
READS = {"GET", "LRANGE", "LLEN", "SCRIPT"}


class FailingWrites(aioredis.Redis):
    """A Redis client whose every write fails, as on a connection lost between commit and cache update."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() not in READS:
            raise RedisConnectionError("simulated failure on write")
        # redis leaves execute_command unannotated; untyped_calls_exclude does not reach a call through super().
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


@pytest.fixture
async def two_replicas(postgres_url: str, pg_schema: str, redis_url: str) -> AsyncIterator[list[Conversations]]:
    """Two replicas sharing one database and one Redis; the first one's Redis writes all fail."""
    failing = FailingWrites.from_url(redis_url)
    stores = [
        CachedStore(PostgresStore(postgres_url, schema=pg_schema), failing),
        CachedStore(PostgresStore(postgres_url, schema=pg_schema), aioredis.from_url(redis_url)),
    ]
    for store in stores:
        await store.open()
    await stores[0].migrate()
    yield [Conversations(store, ttl_seconds=3600, max_turns=100) for store in stores]
    for store in stores:
        await store.close()


def _turn(content: str) -> TurnRecord:
    return TurnRecord(role="user", content=content, tool="chat")


async def test_a_failed_cache_write_never_serves_a_stale_thread(two_replicas: list[Conversations]) -> None:
    failing, healthy = two_replicas
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    thread = await healthy.start(tenant, "shared")
    await healthy.record(thread, [_turn("one")], "chat")
    assert [t.content for t in (await healthy.open(thread.id, tenant)).turns] == ["one"]  # now cached

    on_failing = await failing.open(thread.id, tenant)
    await failing.record(on_failing, [_turn("two")], "analyze")  # committed; the cache update fails

    seen = await healthy.open(thread.id, tenant)
    assert seen.record.turn_count == 2 and seen.record.tools == ["chat", "analyze"]
    assert [t.content for t in seen.turns] == ["one", "two"]
    await healthy.record(seen, [_turn("three")], "chat")  # continues on the fresh version: no conflict
    assert [t.content for t in (await failing.open(thread.id, tenant)).turns] == ["one", "two", "three"]


async def test_an_append_pushes_only_the_new_turns(two_replicas: list[Conversations], redis_url: str) -> None:
    from exai.storage.cache import turns_key

    _, healthy = two_replicas
    redis = aioredis.from_url(redis_url)
    thread = await healthy.start("alice", "t")

    async def cached(count: int) -> list[bytes | str]:
        """The cached turns once the background extension after a commit has landed."""

        async def reached() -> bool:
            return len(await redis.lrange(turns_key(thread.id), 0, -1)) >= count

        await wait_until(reached, f"the cache reached {count} turns")
        return await redis.lrange(turns_key(thread.id), 0, -1)

    await healthy.record(thread, [_turn("one"), _turn("two")], "chat")
    await healthy.open(thread.id, "alice")  # a new thread is cached when it is first continued
    first = await cached(2)
    await healthy.record(thread, [_turn("three")], "chat")
    later = await cached(3)
    assert later[:2] == first and len(later) == 3, "earlier turns are not rewritten"
    assert 0 < await redis.ttl(turns_key(thread.id)) <= 600
    await redis.aclose()


async def test_a_gap_in_the_cache_is_filled_from_the_database(two_replicas: list[Conversations]) -> None:
    failing, healthy = two_replicas
    thread = await failing.start("alice", "t")
    await failing.record(thread, [_turn("one")], "chat")  # not cached
    continued = await healthy.open(thread.id, "alice")  # cached from the database now
    await healthy.record(continued, [_turn("two")], "chat")
    await failing.record(await failing.open(thread.id, "alice"), [_turn("three")], "chat")  # not cached
    turns = (await healthy.open(thread.id, "alice")).turns
    assert [(t.seq, t.content) for t in turns] == [(1, "one"), (2, "two"), (3, "three")]


async def test_a_fully_cached_thread_is_read_with_one_store_query(
    two_replicas: list[Conversations], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread row comes from the store and the turns from Redis, at once; the store's turns are not read."""
    from exai.storage.cache import turns_key

    _, healthy = two_replicas
    redis = aioredis.from_url(redis_url)
    thread = await healthy.start("alice", "t")
    await healthy.record(thread, [_turn("one"), _turn("two")], "chat")
    await healthy.open(thread.id, "alice")  # a new thread is cached when it is first continued
    try:

        async def extended() -> bool:
            return await redis.llen(turns_key(thread.id)) == 2

        await wait_until(extended, "the cache was extended in the background after the read")
    finally:
        await redis.aclose()
    store = healthy.store
    assert isinstance(store, CachedStore)

    async def no_turns_from_the_store(*_: object, **__: object) -> list[TurnRecord]:
        raise AssertionError("the turns were read from the store although Redis had them all")

    monkeypatch.setattr(store.inner, "get_turns", no_turns_from_the_store)
    assert [t.content for t in (await healthy.open(thread.id, "alice")).turns] == ["one", "two"]


async def test_a_new_thread_costs_no_redis_work_until_it_is_continued(
    daemon: Any, sim: Any, redis_url: str, postgres_url: str, pg_schema: str
) -> None:
    from mcp import Client

    from exai.storage.cache import turns_key

    db = redis_url  # the test's own Redis database
    proc = daemon(EXAI_REDIS_URL=db, EXAI_DATABASE_URL=postgres_url, EXAI_DATABASE_SCHEMA=pg_schema)
    redis = aioredis.from_url(db)
    async with Client(f"{proc.url}/mcp") as client:
        one_shot = await client.call_tool("chat", {"prompt": "one shot", "model": "sim-fast"})
        second = await client.call_tool("chat", {"prompt": "to continue", "model": "sim-fast"})
        thread = second.structured_content["continuation_id"]
        more = await client.call_tool("chat", {"prompt": "and again", "model": "sim-fast", "continuation_id": thread})
        assert not more.is_error

        async def cached() -> bool:
            return bool(await redis.llen(turns_key(thread)) >= 2)

        await wait_until(cached, "a continued thread's turns are cached")
        never = one_shot.structured_content["continuation_id"]
        assert await redis.exists(turns_key(never)) == 0, "a thread nobody continued cost no Redis write"
        await redis.delete(turns_key(thread))
    await redis.aclose()
