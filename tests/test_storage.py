"""Both stores behind the one protocol, on real SQLite, real PostgreSQL and real Redis."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from exai.conversations.state import ThreadState, WorkflowRun
from exai.conversations.threads import Conversations
from exai.errors import ExaiError
from exai.storage.base import AuditRecord, CallEnd, CallRecord, Store, ThreadConflict, ThreadRecord, TurnRecord
from exai.storage.cache import CachedStore
from exai.storage.migrations import LATEST
from exai.storage.postgres import PostgresStore
from exai.storage.sqlite import SQLiteStore
from tests.conftest import Closing

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("postgresql+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
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


def _thread(tenant: str = "alice", ttl: float = 3600) -> ThreadRecord:
    return ThreadRecord(tenant=tenant, title="t", expires_at=time.time() + ttl)


def _turn(content: str, seq: int, tool: str = "chat", **extra: object) -> TurnRecord:
    return TurnRecord(role="user", content=content, tool=tool, seq=seq, **extra)


async def _create(store: Store, thread: ThreadRecord) -> ThreadRecord:
    """Store a new thread with its first turn, as the server does: in one transaction."""
    created = thread.model_copy(update={"turn_count": 1, "tools": ["chat"], "version": 1})
    await store.append_turns(created, [_turn("seed", 1)], expected_version=0)
    return created


async def test_migrations_are_idempotent(store: Store) -> None:
    assert await store.migrate() == LATEST
    await store.ping()


async def test_threads_and_turns_round_trip(store: Store) -> None:
    thread = await _create(store, _thread())
    turns = [
        _turn("héllo ✓", 2, files=["/a.py"]),
        TurnRecord(role="assistant", content="hi", tool="chat", model="m", provider="p", seq=3, usage={"in": 3}),
    ]
    updated = thread.model_copy(update={"turn_count": 3, "state": {"workflows": {}}, "version": 2})
    await store.append_turns(updated, turns, expected_version=1)
    loaded = await store.get_thread(thread.id)
    assert loaded == updated
    got = await store.get_turns(thread.id)
    assert [(t.seq, t.content) for t in got] == [(1, "seed"), (2, "héllo ✓"), (3, "hi")]
    assert got[1].files == ["/a.py"] and got[2].usage == {"in": 3} and got[2].model == "m"
    assert [t.seq for t in await store.get_turns(thread.id, after=1)] == [2, 3]
    assert await store.get_thread("00000000-0000-0000-0000-000000000000") is None


async def test_a_write_at_a_stale_version_changes_nothing(store: Store) -> None:
    thread = await _create(store, _thread())
    first = thread.model_copy(update={"turn_count": 2, "state": {"by": "first"}, "version": 2})
    await store.append_turns(first, [_turn("first", 2)], expected_version=1)
    stale = thread.model_copy(update={"turn_count": 2, "state": {"by": "stale"}, "version": 2})
    with pytest.raises(ThreadConflict) as raised:
        await store.append_turns(stale, [_turn("stale", 2)], expected_version=1)
    assert not raised.value.gone
    assert await store.get_thread(thread.id) == first
    assert [t.content for t in await store.get_turns(thread.id)] == ["seed", "first"]
    await store.purge(time.time() + 7200)
    with pytest.raises(ThreadConflict) as vanished:
        await store.append_turns(first.model_copy(update={"version": 3}), [_turn("late", 3)], expected_version=2)
    assert vanished.value.gone


async def test_a_stale_write_whose_turns_clash_with_nothing_writes_nothing(store: Store) -> None:
    thread = await _create(store, _thread())
    moved = thread.model_copy(update={"state": {"by": "other"}, "version": 2})
    await store.append_turns(moved, [], expected_version=1)  # another writer moved the thread on, adding no turn
    stale = thread.model_copy(update={"turn_count": 2, "version": 2})
    with pytest.raises(ThreadConflict) as raised:
        await store.append_turns(stale, [_turn("stale", 2)], expected_version=1)
    assert not raised.value.gone
    assert [t.content for t in await store.get_turns(thread.id)] == ["seed"], "the turn went with the conflict"


async def test_concurrent_records_keep_every_turn_and_state_change(store: Store) -> None:
    conversations = Conversations(store, ttl_seconds=3600, max_turns=1000)
    thread = await conversations.start("alice", "t")
    await conversations.record(thread, [_turn("seed", 0)], "chat")

    async def call(i: int) -> None:
        mine = await conversations.open(thread.id, "alice")

        def change(state: ThreadState, record: ThreadRecord) -> None:
            state.workflows.setdefault("debug", WorkflowRun(total_steps=0)).total_steps += 1

        await conversations.record(
            mine,
            [
                TurnRecord(role="user", content=f"q{i}", tool=f"tool{i % 3}"),
                TurnRecord(role="assistant", content=f"a{i}", tool=f"tool{i % 3}"),
            ],
            f"tool{i % 3}",
            change,
        )

    await asyncio.gather(*(call(i) for i in range(12)))
    final = await conversations.read(thread.id, "alice")
    assert [t.seq for t in final.turns] == list(range(1, 26))
    for question, answer in zip(final.turns[1::2], final.turns[2::2], strict=True):
        assert question.content[1:] == answer.content[1:], "a call's two turns stay together"
    assert final.record.turn_count == 25 and final.record.version == 13
    assert sorted(final.record.tools) == ["chat", "tool0", "tool1", "tool2"]
    assert final.state.workflows["debug"].total_steps == 12, "every call's state change was applied"


async def test_listing_is_per_tenant_and_newest_first(store: Store) -> None:
    for tenant in ("alice", "alice", "bob"):
        await _create(store, _thread(tenant))
    alice = await store.list_threads("alice", 10)
    assert len(alice) == 2 and alice[0].updated_at >= alice[1].updated_at
    assert all(t.tenant == "alice" for t in alice)


async def test_purge_and_audit(store: Store) -> None:
    old = await _create(store, _thread(ttl=-1))
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


async def test_redis_outage_falls_back_to_the_database(tmp_path: Path, closing: Closing) -> None:
    cached = CachedStore(
        SQLiteStore(tmp_path / "x.db"), aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    )
    await cached.open()
    closing(cached)
    await cached.migrate()
    thread = await _create(cached, _thread())
    await cached.append_turns(
        thread.model_copy(update={"turn_count": 2, "version": 2}), [_turn("x", 2)], expected_version=1
    )
    stored = await cached.get_thread(thread.id)
    assert stored is not None and stored.turn_count == 2
    assert [t.content for t in await cached.get_turns(thread.id)] == ["seed", "x"]


class AlwaysOvertaken(SQLiteStore):
    """A store where another writer always commits first (after the thread was created)."""

    async def append_turns(self, thread: ThreadRecord, turns: list[TurnRecord], *, expected_version: int) -> None:
        if expected_version:
            raise ThreadConflict(thread.id, gone=False)
        await super().append_turns(thread, turns, expected_version=expected_version)


async def test_a_write_that_keeps_losing_is_refused_as_a_conflict(tmp_path: Path, closing: Closing) -> None:
    store = AlwaysOvertaken(tmp_path / "x.db")
    await store.open()
    closing(store)
    await store.migrate()
    conversations = Conversations(store, ttl_seconds=3600, max_turns=100)
    thread = await conversations.start("alice", "t")
    await conversations.record(thread, [_turn("seed", 0)], "chat")
    with pytest.raises(ExaiError) as refused:
        await conversations.record(thread, [_turn("lost", 0)], "chat")
    assert refused.value.code == "conflict" and refused.value.retryable
    assert "again" in (refused.value.remedy or "")
    assert [t.content for t in await store.get_turns(thread.id)] == ["seed"]


async def test_sqlite_turn_commit_waits_for_another_writer_off_the_event_loop(tmp_path: Path, closing: Closing) -> None:
    """The event loop's own connection never waits for a lock: while another process holds the write lock, the
    commit goes to the store's thread, which waits for the lock and then commits (before `append_turns` returns)."""
    import sqlite3

    store = SQLiteStore(tmp_path / "exai.db")
    await store.open()
    closing(store)
    await store.migrate()
    other = sqlite3.connect(tmp_path / "exai.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    thread = _thread().model_copy(update={"turn_count": 1, "tools": ["chat"], "version": 1})
    commit = asyncio.create_task(store.append_turns(thread, [_turn("while locked", 1)], expected_version=0))
    ticks = 0
    while not commit.done() and ticks < 20:  # the loop keeps running while the commit waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert not commit.done() and ticks == 20, "the commit cannot finish while another writer holds the lock"
    other.execute("COMMIT")
    await asyncio.wait_for(commit, 60)
    other.close()
    assert [t.content for t in await store.get_turns(thread.id)] == ["while locked"]


def _call(tenant: str = "alice", owner: str = "replica-a", lease: float = 30, ttl: float = 3600) -> CallRecord:
    now = time.time()
    return CallRecord(tenant=tenant, tool="chat", owner=owner, lease_until=now + lease, expires_at=now + ttl, task=True)


async def test_call_records_end_once_and_keep_the_exact_result(store: Store) -> None:
    call = _call()
    await store.create_call(call)
    stored = await store.get_call(call.id)
    assert stored is not None and stored.status == "working" and stored.tenant == "alice"
    result = {"content": [{"type": "text", "text": "ünïcode ✓"}], "structuredContent": {"answer": "42"}}
    assert await store.finish_call(call.id, CallEnd("completed", result=result), time.time())
    assert not await store.finish_call(call.id, CallEnd("cancelled"), time.time())  # the first outcome stands
    done = await store.get_call(call.id)
    assert done is not None and done.status == "completed" and done.result == result
    assert await store.get_call("no-such-call") is None


async def test_leases_renew_cancellations_are_seen_by_the_owner_and_expired_calls_end_lost(store: Store) -> None:
    mine, theirs, dead = _call(owner="a"), _call(owner="b"), _call(owner="gone", lease=-1)
    forgotten, running = _call(owner="a", lease=-1), _call(owner="a", lease=-1)
    for call in (mine, theirs, dead, forgotten, running):
        await store.create_call(call)
    await store.request_cancel(mine.id, time.time())
    assert await store.renew_calls([mine.id], time.time() + 60) == [mine.id]
    assert await store.renew_calls([theirs.id], time.time() + 60) == []
    assert await store.renew_calls([], time.time() + 60) == []
    # A row of replica a's that a does not run (its record was written after its call was given up) expires like
    # any other; the one it runs does not, even with its lease run out.
    lost = await store.expire_calls(time.time(), CallEnd("failed", message="lost"), running=[running.id])
    assert sorted(c.id for c in lost) == sorted([dead.id, forgotten.id])
    failed, working = await store.get_call(dead.id), await store.get_call(theirs.id)
    assert failed is not None and failed.status == "failed"
    assert working is not None and working.status == "working"
    counts = await store.count_calls(time.time())
    assert counts.by_status == {"working": 3, "failed": 2} and counts.oldest_working is not None


async def test_call_listing_is_per_tenant_and_expired_calls_are_purged(store: Store) -> None:
    old = _call(ttl=-1)
    await store.create_call(old)
    await store.finish_call(old.id, CallEnd("completed", result={"content": []}), time.time())
    fresh = [_call() for _ in range(3)]
    for call in fresh:
        await store.create_call(call)
    await store.create_call(_call(tenant="bob"))
    listed = await store.list_calls("alice", 10)
    assert {c.id for c in listed} == {old.id, *(c.id for c in fresh)}
    assert [c.created_at for c in listed] == sorted((c.created_at for c in listed), reverse=True)
    assert len(await store.list_calls("alice", 10, before=listed[1].created_at)) == len(listed) - 2
    assert await store.purge(time.time()) >= 1
    assert await store.get_call(old.id) is None
    assert await store.get_call(fresh[0].id) is not None


async def test_sqlite_keeps_text_as_utf_8_not_escaped(tmp_path: Path) -> None:
    """An emoji in a thread's state took 12 bytes escaped (a 59 MB state row from 5 million characters); as UTF-8 it
    takes 4, and reads back the same."""
    store = SQLiteStore(tmp_path / "exai.db")
    await store.open()
    await store.migrate()
    try:
        thread = _thread().model_copy(update={"state": {"note": "\U0001f600" * 1000}})
        created = await _create(store, thread)
        stored = await store.get_thread(created.id)
        assert stored is not None and stored.state == {"note": "\U0001f600" * 1000}
        with sqlite3.connect(tmp_path / "exai.db") as db:
            (size,) = db.execute("SELECT length(CAST(state AS BLOB)) FROM threads").fetchone()
        assert 4000 <= size < 4100, size
        lone = _thread().model_copy(update={"state": {"note": "\ud83d"}})  # UTF-8 cannot carry it: kept escaped
        assert (await store.get_thread((await _create(store, lone)).id)).state == {"note": "\ud83d"}  # type: ignore[union-attr]
    finally:
        await store.close()
