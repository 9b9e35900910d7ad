"""Turns held in a replica's memory: a continued thread reads only its new turns, and is never stale or mixed up."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exai.conversations.threads import Conversations
from exai.conversations.turn_memory import TurnMemory, turn_bytes
from exai.errors import NotFoundError
from exai.storage.base import ThreadRecord, TurnRecord
from exai.storage.postgres import PostgresStore
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


class CountingStore(PostgresStore):
    """The real store, noting how many turns each thread read returned."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turns_read: list[int] = []

    async def read_thread(self, thread_id: str, after: int = 0) -> tuple[ThreadRecord, list[TurnRecord]] | None:
        found = await super().read_thread(thread_id, after)
        self.turns_read.append(len(found[1]) if found else 0)
        return found


@pytest.fixture
async def replicas(postgres_url: str, pg_schema: str) -> AsyncIterator[list[tuple[Conversations, CountingStore]]]:
    """Two replicas sharing one PostgreSQL database, each holding turns in its own memory."""
    stores = [CountingStore(postgres_url, schema=pg_schema) for _ in range(2)]
    for store in stores:
        await store.open()
    await stores[0].migrate()
    yield [(Conversations(store, 3600, 100, memory=TurnMemory(2**20)), store) for store in stores]
    for store in stores:
        await store.close()


def _turn(content: str) -> TurnRecord:
    return TurnRecord(role="user", content=content, tool="chat")


async def test_a_continued_thread_reads_only_its_new_turns(
    replicas: list[tuple[Conversations, CountingStore]],
) -> None:
    (first, store), (other, _) = replicas
    thread = await first.start("alice", "t")
    await first.record(thread, [_turn("q1"), _turn("a1")], "chat")
    for n in range(2, 6):
        thread = await first.open(thread.id, "alice")
        await first.record(thread, [_turn(f"q{n}"), _turn(f"a{n}")], "chat")
    # The first continuation reads the new thread's two turns; after that only the last one held, to compare it
    # (the old code read 2, 4, 6, 8: the whole thread every time).
    assert store.turns_read == [2, 1, 1, 1]

    on_other = await other.open(thread.id, "alice")  # knows nothing yet: reads all ten
    await other.record(on_other, [_turn("q6"), _turn("a6")], "analyze")
    seen = await first.open(thread.id, "alice")
    assert store.turns_read[-1] == 3  # the last one held again, and the other replica's two
    assert [t.content for t in seen.turns] == [f"{r}{n}" for n in range(1, 7) for r in "qa"]
    assert [t.seq for t in seen.turns] == list(range(1, 13))
    assert seen.record.tools == ["chat", "analyze"] and seen.record.version == 6


async def test_the_row_is_read_every_time(replicas: list[tuple[Conversations, CountingStore]]) -> None:
    """Held turns never stand in for the row: another tenant is refused, an expired thread too."""
    (first, store), _ = replicas
    thread = await first.start("alice", "t")
    await first.record(thread, [_turn("secret")], "chat")
    with pytest.raises(NotFoundError):
        await first.open(thread.id, "mallory")
    async with store._pool.connection() as conn:
        await conn.execute(store._sql("UPDATE {schema}threads SET expires_at = 0 WHERE id = %s"), (thread.id,))
    with pytest.raises(NotFoundError, match="expired"):
        await first.open(thread.id, "alice")
    async with store._pool.connection() as conn:
        await conn.execute(store._sql("DELETE FROM {schema}threads WHERE id = %s"), (thread.id,))
    with pytest.raises(NotFoundError, match="does not exist"):
        await first.open(thread.id, "alice")
    assert first.memory.known(thread.id) == ()


async def test_memory_that_disagrees_with_the_store_is_dropped(
    replicas: list[tuple[Conversations, CountingStore]],
) -> None:
    (first, store), _ = replicas
    thread = await first.start("alice", "t")
    await first.record(thread, [_turn("one"), _turn("two")], "chat")
    stray = [_turn(c).model_copy(update={"seq": n}) for n, c in enumerate(["x", "y", "z"], start=1)]
    first.memory.keep(thread.id, stray)  # more turns than the row has: cannot come from this store
    seen = await first.open(thread.id, "alice")
    assert [t.content for t in seen.turns] == ["one", "two"]
    assert store.turns_read[-1] == 2 and first.memory.known(thread.id) == tuple(seen.turns)


def test_memory_is_bounded_and_forgets_the_least_recently_used() -> None:
    numbered = [TurnRecord(role="user", content="x" * 100, tool="chat", seq=n) for n in range(1, 4)]
    size = turn_bytes(numbered[0])
    memory = TurnMemory(3 * size)
    memory.keep("a", numbered[:1])
    memory.keep("b", numbered[:1])
    memory.keep("a", numbered[:2])  # extends a (and uses it): b is now the least recent
    assert memory.held_bytes == 3 * size
    memory.keep("c", numbered[:1])
    assert memory.known("b") == () and len(memory.known("a")) == 2 and len(memory.known("c")) == 1
    assert memory.held_bytes == 3 * size
    memory.keep("d", numbered)  # as big as the bound: everything else goes
    assert memory.known("a") == () and memory.known("c") == () and memory.held_bytes == 3 * size
    memory.keep("e", [*numbered, numbered[0].model_copy(update={"seq": 4})])  # bigger than the bound: not held
    assert memory.known("e") == () and memory.held_bytes == 3 * size
    memory.keep("f", [numbered[1]])  # not numbered from 1: not held
    memory.keep("g", [])  # nothing to hold
    assert memory.known("f") == () and memory.known("g") == ()
    memory.forget("d")
    assert memory.held_bytes == 0 and TurnMemory(0).known("x") == ()
    off = TurnMemory(0)
    off.keep("a", numbered[:1])
    assert off.known("a") == () and off.held_bytes == 0


@pytest.mark.parametrize("files", [0, 40])
@pytest.mark.parametrize("text", ["x" * 20, "x" * 2_000, "中" * 500, "😀" * 200])
def test_the_bound_counts_what_the_turns_take(text: str, files: int) -> None:
    """The estimate is within a fifth of what tracemalloc sees for turns parsed as a store returns them, whatever
    the script of the text (a count of characters held 2.2 times as much for CJK and 3.7 for emoji) or the files a
    turn names."""
    rows = [
        TurnRecord(
            role="user",
            content=f"{text}{n}",
            tool="chat",
            model="m",
            provider="p",
            files=[f"/src/pkg/module_{k}.py{n}" for k in range(files)],
            usage={"input_tokens": n, "output_tokens": n},
            seq=n,
            tokens=n,
        ).model_dump_json()
        for n in range(1, 1_001)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        turns = tuple(TurnRecord.model_validate_json(row) for row in rows)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    taken = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    estimated = sum(turn_bytes(turn) for turn in turns)
    assert 0.8 < estimated / taken < 1.2, (estimated, taken)


async def test_a_history_the_store_no_longer_has_is_dropped(
    replicas: list[tuple[Conversations, CountingStore]],
) -> None:
    """A database restored (or failed over to a standby that missed the last commits) forgets turns this replica
    holds; another replica then commits new turns under the same numbers. The thread is the store's, not a mix."""
    (first, store), (other, _) = replicas
    thread = await first.start("alice", "t")
    await first.record(thread, [_turn("q1"), _turn("a1")], "chat")
    held = await first.open(thread.id, "alice")
    await first.record(held, [_turn("lost-q2"), _turn("lost-a2")], "chat")
    assert [t.content for t in first.memory.known(thread.id)] == ["q1", "a1", "lost-q2", "lost-a2"]
    async with store._pool.connection() as conn:  # the database goes back to before the second commit
        await conn.execute(store._sql("DELETE FROM {schema}turns WHERE thread_id = %s AND seq > 2"), (thread.id,))
        await conn.execute(
            store._sql("UPDATE {schema}threads SET turn_count = 2, version = 1 WHERE id = %s"), (thread.id,)
        )
    on_other = await other.open(thread.id, "alice")
    await other.record(on_other, [_turn("new-q2"), _turn("new-a2")], "chat")
    seen = await first.open(thread.id, "alice")
    assert [t.content for t in seen.turns] == ["q1", "a1", "new-q2", "new-a2"]  # old code: q1, a1, lost-q2, lost-a2
    assert [t.content for t in first.memory.known(thread.id)] == ["q1", "a1", "new-q2", "new-a2"]


async def test_a_write_that_met_another_replicas_commit_holds_the_whole_thread(
    replicas: list[tuple[Conversations, CountingStore]],
) -> None:
    (first, _), (other, _) = replicas
    thread = await first.start("alice", "t")
    await first.record(thread, [_turn("q1"), _turn("a1")], "chat")
    mine, theirs = await first.open(thread.id, "alice"), await other.open(thread.id, "alice")
    await other.record(theirs, [_turn("their-q"), _turn("their-a")], "chat")
    await first.record(mine, [_turn("my-q"), _turn("my-a")], "chat")  # a conflict: read again, then written on top
    expected = ["q1", "a1", "their-q", "their-a", "my-q", "my-a"]
    assert [t.content for t in first.memory.known(thread.id)] == expected
    assert [t.content for t in (await other.open(thread.id, "alice")).turns] == expected
    assert [t.content for t in (await first.open(thread.id, "alice")).turns] == expected


async def test_a_thread_is_read_in_one_statement(postgres_url: str, pg_schema: str) -> None:
    """The row and its new turns in one round trip (in a transaction the same reads took four: BEGIN, two SELECTs,
    COMMIT), consistent with each other: only turns the row counts."""
    store = PostgresStore(postgres_url, schema=pg_schema)
    await store.open()
    await store.migrate()
    try:
        conversations = Conversations(store, 3600, 100)
        thread = await conversations.start("alice", "t")
        await conversations.record(thread, [_turn("one"), _turn("two"), _turn("three")], "chat")
        sent: list[str] = []
        real = store._pool.connection

        @contextlib.asynccontextmanager
        async def watched() -> AsyncIterator[Any]:
            async with real() as conn:
                original = conn.execute

                async def execute(query: Any, params: Any = None, **kwargs: Any) -> Any:
                    sent.append(str(query))
                    return await original(query, params, **kwargs)

                conn.execute = execute  # type: ignore[method-assign]
                try:
                    yield conn
                finally:
                    conn.execute = original  # type: ignore[method-assign]

        store._pool.connection = watched  # type: ignore[method-assign,assignment]
        found = await store.read_thread(thread.id, after=1)
        assert len(sent) == 1, sent
        assert found is not None and [t.content for t in found[1]] == ["two", "three"]
        assert found[0].turn_count == 3 and found[0].tenant == "alice" and found[0].tools == ["chat"]
        assert (await store.read_thread(thread.id))[1][0].content == "one"  # type: ignore[index]
        assert (await store.read_thread(thread.id, after=3)) == (found[0], [])
        assert await store.read_thread(str(uuid.uuid4())) is None
    finally:
        await store.close()


class CountingTurns(PostgresStore):
    """The real store, counting the turns it is asked for (beside the thread rows)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turn_reads = 0

    async def get_turns(self, thread_id: str, after: int = 0) -> list[TurnRecord]:
        self.turn_reads += 1
        return await super().get_turns(thread_id, after)


async def test_with_redis_a_replica_that_does_not_hold_the_thread_fills_the_cache(
    postgres_url: str, pg_schema: str, redis_url: str
) -> None:
    """Memory and the Redis cache together. A new thread is in neither; its first continuation reads its turns from
    the database once and fills Redis, the replica holds them from then on (reading the row and the turns after
    the last it holds in the database's one statement, never from Redis) and extends Redis with each append, and
    other replicas read every turn from Redis."""
    import redis.asyncio as aioredis

    from exai.storage.cache import CachedStore, turns_key

    class CountingRedis(aioredis.Redis):
        lists_read = 0

        async def lrange(self, name: str, start: int, end: int) -> Any:  # type: ignore[override]
            CountingRedis.lists_read += 1
            return await super().lrange(name, start, end)

    inner = [CountingTurns(postgres_url, schema=pg_schema) for _ in range(3)]
    stores = [CachedStore(store, CountingRedis.from_url(redis_url)) for store in inner]
    for store in stores:
        await store.open()
    await stores[0].migrate()
    redis = aioredis.from_url(redis_url)
    try:
        holder, reader, third = (Conversations(store, 3600, 100, memory=TurnMemory(2**20)) for store in stores)
        thread = await holder.start("alice", "t")

        async def cached(count: int) -> None:
            async def reached() -> bool:
                return bool(await redis.llen(turns_key(thread.id)) == count)

            await wait_until(reached, f"{count} turns in the Redis cache")

        await holder.record(thread, [_turn("q1"), _turn("a1")], "chat")
        for n in range(2, 5):
            await holder.record(await holder.open(thread.id, "alice"), [_turn(f"q{n}"), _turn(f"a{n}")], "chat")
            await cached(2 * n)
        assert inner[0].turn_reads == 1, "the database was asked for turns once: at the first continuation"
        assert CountingRedis.lists_read == 1, "Redis was read once: at the first continuation, holding nothing"
        assert (await reader.open(thread.id, "alice")).record.turn_count == 8
        await holder.record(await holder.open(thread.id, "alice"), [_turn("q5"), _turn("a5")], "chat")
        await cached(10)
        seen = await third.open(thread.id, "alice")
        assert [t.content for t in seen.turns] == [f"{r}{n}" for n in range(1, 6) for r in "qa"]
        assert inner[0].turn_reads == 1 and inner[1].turn_reads == inner[2].turn_reads == 0, "the rest from Redis"
        assert CountingRedis.lists_read == 3, "the holder's reads went to the database alone"
    finally:
        await redis.delete(turns_key(thread.id))
        await redis.aclose()
        for store in stores:
            await store.close()
