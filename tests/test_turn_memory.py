"""Turns held in a replica's memory: a continued thread reads only its new turns, and is never stale or mixed up."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exai.conversations.threads import Conversations
from exai.conversations.turn_memory import TURN_OVERHEAD_BYTES, TurnMemory
from exai.errors import NotFoundError
from exai.storage.base import ThreadRecord, TurnRecord
from exai.storage.postgres import PostgresStore

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
    assert store.turns_read == [0, 0, 0, 0]  # every turn was this replica's: none read again (old code: 2, 4, 6, 8)

    on_other = await other.open(thread.id, "alice")  # knows nothing yet: reads all ten
    await other.record(on_other, [_turn("q6"), _turn("a6")], "analyze")
    seen = await first.open(thread.id, "alice")
    assert store.turns_read[-1] == 2  # only the other replica's two
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
    size = 100 + TURN_OVERHEAD_BYTES
    memory = TurnMemory(3 * size)
    numbered = [TurnRecord(role="user", content="x" * 100, tool="chat", seq=n) for n in range(1, 4)]
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
    assert memory.known("f") == ()
    memory.forget("d")
    assert memory.held_bytes == 0 and TurnMemory(0).known("x") == ()
    off = TurnMemory(0)
    off.keep("a", numbered[:1])
    assert off.known("a") == () and off.held_bytes == 0


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
        assert found[0].turn_count == 3 and found[0].tenant == "alice"
        assert (await store.read_thread(thread.id, after=3)) == (found[0], [])
        assert await store.read_thread(str(uuid.uuid4())) is None
    finally:
        await store.close()
