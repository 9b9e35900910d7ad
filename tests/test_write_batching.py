"""PostgreSQL writes that arrive together go together (one statement, one commit), on a real database.

Each test makes the writes of many calls at once through `PostgresStore`, as many calls in flight make them, and
checks what a neighbour in a batch must never see: another's refusal, another's cancellation, another's outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
import pytest
from psycopg import AsyncConnection

from exai.storage.base import CallEnd, CallRecord, EndRefused, ThreadConflict, ThreadRecord, TurnRecord
from exai.storage.batching import WriteBatcher
from exai.storage.postgres import PostgresStore, refused_for_content

pytestmark = pytest.mark.anyio
CALLS = 32
IN_FLIGHT = 4
"""PostgresStore's batched writes of one kind on their way at once."""
RESULT = {"content": [{"type": "text", "text": "answer"}]}


@pytest.fixture
async def store(postgres_url: str, pg_schema: str) -> AsyncIterator[PostgresStore]:
    built = PostgresStore(postgres_url, schema=pg_schema)
    await built.open()
    await built.migrate()
    yield built
    await built.close()


def _call(tenant: str = "alice") -> CallRecord:
    now = time.time()
    return CallRecord(tenant=tenant, tool="chat", owner="replica-a", lease_until=now + 30, expires_at=now + 3600)


def _thread() -> ThreadRecord:
    return ThreadRecord(tenant="alice", title="t", expires_at=time.time() + 3600, turn_count=1, version=1)


def _turn(content: str, seq: int) -> TurnRecord:
    return TurnRecord(role="user", content=content, tool="chat", seq=seq)


async def test_the_records_of_calls_in_flight_together_share_statements(
    store: PostgresStore, statements: Counter[str]
) -> None:
    calls = [_call() for _ in range(CALLS)]
    await asyncio.gather(*(store.create_call(call) for call in calls))
    ends = [CallEnd("completed", result={**RESULT, "n": n}) for n in range(CALLS)]
    written = await asyncio.gather(*(store.finish_call(c.id, e, time.time()) for c, e in zip(calls, ends, strict=True)))
    assert written == [True] * CALLS
    for n, call in enumerate(calls):  # each row got its own end, not a neighbour's
        stored = await store.get_call(call.id)
        assert stored is not None and stored.status == "completed" and stored.result == {**RESULT, "n": n}
    # Four go at once by themselves; the rest wait for one of them and go together (one each was 32 + 32).
    assert statements["INSERT calls"] <= 10, statements
    assert statements["UPDATE calls"] <= 10, statements


async def test_threads_written_together_share_statements_and_keep_their_own_turns(
    store: PostgresStore, statements: Counter[str]
) -> None:
    threads = [_thread() for _ in range(CALLS)]
    await asyncio.gather(
        *(store.append_turns(t, [_turn(f"first {n}", 1)], expected_version=0) for n, t in enumerate(threads))
    )
    continued = [t.model_copy(update={"turn_count": 3, "version": 2}) for t in threads]
    await asyncio.gather(
        *(
            store.append_turns(t, [_turn(f"second {n}", 2), _turn(f"third {n}", 3)], expected_version=1)
            for n, t in enumerate(continued)
        )
    )
    for n, thread in enumerate(threads):
        found = await store.read_thread(thread.id)
        assert found is not None
        record, turns = found
        assert (record.turn_count, record.version) == (3, 2)
        assert [t.content for t in turns] == [f"first {n}", f"second {n}", f"third {n}"]
    assert statements["INSERT threads"] + statements["WITH"] <= 20, statements  # 64 one at a time


async def test_appends_racing_on_one_thread_never_both_win_even_in_one_batch(
    store: PostgresStore, postgres_url: str, pg_schema: str
) -> None:
    threads = [_thread() for _ in range(IN_FLIGHT + 8)]
    for thread in threads:
        await store.append_turns(thread, [_turn("seed", 1)], expected_version=0)
    blockers, racing = threads[:IN_FLIGHT], threads[IN_FLIGHT:]
    gone = _thread().model_copy(update={"turn_count": 2, "version": 2})

    async def append(thread: ThreadRecord, who: str) -> str:
        # No turn, only a new title: no turn's primary key can catch two writers of one version.
        bumped = thread.model_copy(update={"version": 2, "title": who})
        try:
            await store.append_turns(bumped, [], expected_version=1)
        except ThreadConflict as exc:
            return "gone" if exc.gone else "changed"
        return "added"

    async with _locked(postgres_url, pg_schema, "threads", [t.id for t in blockers]) as release:
        # Appends on locked rows take every place in flight: all the racing ones then go in one batch.
        held = [asyncio.create_task(append(t, "blocker")) for t in blockers]
        await _until_waiting_on_locks(postgres_url, pg_schema, IN_FLIGHT)
        racers = asyncio.gather(
            *(append(t, f"{who} {n}") for who in ("a", "b") for n, t in enumerate(racing)), append(gone, "x")
        )
        await asyncio.sleep(0.05)
        await release()
        outcomes = await racers
    assert await asyncio.gather(*held) == ["added"] * IN_FLIGHT
    assert outcomes[-1] == "gone"
    for n, thread in enumerate(racing):
        mine = [outcomes[n], outcomes[len(racing) + n]]
        assert sorted(mine) == ["added", "changed"], (n, mine)
        winner = f"{'ab'[mine.index('added')]} {n}"
        found = await store.read_thread(thread.id)
        assert found is not None and found[0].title == winner


async def test_a_write_the_database_refuses_fails_alone_not_its_batch(store: PostgresStore) -> None:
    calls = [_call() for _ in range(16)]
    await asyncio.gather(*(store.create_call(call) for call in calls))
    refused = 5  # PostgreSQL cannot keep U+0000 in a JSON value: this end is refused, and only it
    ends = [CallEnd("completed", result={"text": "\u0000" if n == refused else f"fine {n}"}) for n in range(16)]
    outcomes = await asyncio.gather(
        *(store.finish_call(c.id, e, time.time()) for c, e in zip(calls, ends, strict=True)), return_exceptions=True
    )
    refusal = outcomes[refused]
    assert isinstance(refusal, EndRefused) and isinstance(refusal.__cause__, psycopg.Error), refusal
    assert [o for n, o in enumerate(outcomes) if n != refused] == [True] * 15
    for n, call in enumerate(calls):
        stored = await store.get_call(call.id)
        assert stored is not None
        assert stored.status == ("working" if n == refused else "completed")


async def test_a_write_cancelled_while_it_waits_is_left_out_and_its_neighbours_are_kept(
    store: PostgresStore, postgres_url: str, pg_schema: str
) -> None:
    calls = [_call() for _ in range(IN_FLIGHT + 6)]
    for call in calls:
        await store.create_call(call)
    done = CallEnd("completed", result=RESULT)
    async with _locked(postgres_url, pg_schema, "calls", [c.id for c in calls[:IN_FLIGHT]]) as release:
        # Ends on locked rows take every place in flight, and the next ones must wait.
        blocked = [asyncio.create_task(store.finish_call(c.id, done, time.time())) for c in calls[:IN_FLIGHT]]
        await _until_waiting_on_locks(postgres_url, pg_schema, IN_FLIGHT)
        queued = [asyncio.create_task(store.finish_call(c.id, done, time.time())) for c in calls[IN_FLIGHT:]]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in queued)
        queued[0].cancel()
        await release()
    assert await asyncio.gather(*blocked) == [True] * IN_FLIGHT
    assert await asyncio.gather(*queued[1:]) == [True] * 5
    assert queued[0].cancelled()
    statuses = [(await store.get_call(c.id)).status for c in calls]  # type: ignore[union-attr]
    assert statuses == ["completed"] * IN_FLIGHT + ["working"] + ["completed"] * 5


@asynccontextmanager
async def _locked(url: str, schema: str, table: str, ids: list[str]) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Rows locked by another transaction until the returned `release` is awaited (or the block ends)."""
    async with await AsyncConnection.connect(url) as holder:
        await holder.execute(f'SELECT id FROM "{schema}".{table} WHERE id = ANY(%s) FOR UPDATE', (ids,))
        yield holder.rollback


async def _until_waiting_on_locks(url: str, schema: str, count: int) -> None:
    """Wait until `count` statements on this test's schema wait for a lock."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                    (f"%{schema}%",),
                )
            ).fetchone()
            if row is not None and row[0] >= count:
                return
            await asyncio.sleep(0.01)


async def _batched_outcomes(error: Exception) -> tuple[list[int | BaseException], list[list[int]]]:
    """Six writes through a batcher set up as PostgreSQL's, whose batches of more than one item fail with `error`:
    what each caller got, and the batches the writer was given (two go alone while the rest queue behind them)."""
    given: list[list[int]] = []
    gate = asyncio.Event()

    async def write_many(items: list[int]) -> list[int]:
        given.append(items)
        await gate.wait()
        if len(items) > 1:
            raise error
        return [item * 10 for item in items]

    batcher: WriteBatcher[int, int] = WriteBatcher(write_many, limit=2, one_item_may_be_at_fault=refused_for_content)
    writes = [asyncio.create_task(batcher.write(n)) for n in range(6)]
    while len(given) < 2:
        await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    await batcher.close()
    return outcomes, given


async def test_a_batch_refused_for_its_content_is_written_again_item_by_item() -> None:
    outcomes, given = await _batched_outcomes(psycopg.errors.UntranslatableCharacter("cannot keep U+0000"))
    assert outcomes == [0, 10, 20, 30, 40, 50]
    assert given == [[0], [1], [2, 3, 4, 5], [2], [3], [4], [5]]


async def test_an_outage_fails_its_batch_and_the_writes_queued_before_it_was_sent_at_once() -> None:
    # A database that cannot be reached fails every item alike: writing each again, or sending the writes that
    # waited behind it into the same outage, would only make each refusal wait out the pool once more. A write
    # queued after the failed batch was sent gets its own attempt (a pool that was only busy may serve it).
    outage = psycopg.OperationalError("connection refused")
    given: list[list[int]] = []
    alone, together = asyncio.Event(), asyncio.Event()

    async def write_many(items: list[int]) -> list[int]:
        given.append(items)
        if len(items) == 1:
            await alone.wait()
            return [item * 10 for item in items]
        await together.wait()
        raise outage

    batcher: WriteBatcher[int, int] = WriteBatcher(
        write_many, limit=1, max_batch=2, one_item_may_be_at_fault=refused_for_content
    )
    writes = [asyncio.create_task(batcher.write(n)) for n in range(5)]  # 0 alone; 1-4 queue behind it
    while not given:
        await asyncio.sleep(0)
    alone.set()
    while len(given) < 2:
        await asyncio.sleep(0)
    writes.append(asyncio.create_task(batcher.write(5)))  # queued after the batch [1, 2] was sent
    await asyncio.sleep(0)
    together.set()
    assert await asyncio.gather(*writes, return_exceptions=True) == [0, outage, outage, outage, outage, 50]
    assert given == [[0], [1, 2], [5]], "3 and 4 were never sent into the outage; 5 had its own attempt"


@pytest.mark.parametrize(
    ("error", "alone"),
    [
        (psycopg.errors.UntranslatableCharacter("U+0000"), True),
        (psycopg.errors.UniqueViolation("taken"), True),
        (psycopg.errors.DeadlockDetected("another writer's order"), True),
        (psycopg.errors.ProgramLimitExceeded("too large"), True),
        (TypeError("not adaptable"), True),
        (psycopg.OperationalError("connection refused"), False),
        (psycopg.errors.ReadOnlySqlTransaction("a standby"), False),
        (psycopg.errors.UndefinedTable("no such table"), False),
    ],
)
def test_which_failures_are_written_again_item_by_item(error: Exception, alone: bool) -> None:
    assert refused_for_content(error) is alone


async def test_a_batcher_that_failed_and_was_cancelled_still_sends_the_next_write_at_once() -> None:
    """Every path gives its place in flight back: after batches that failed, writes cancelled while queued and a
    cancelled `close`, a write goes alone at once and gets its own outcome."""
    given: list[list[int]] = []
    gate = asyncio.Event()

    async def write_many(items: list[int]) -> list[int]:
        given.append(items)
        await gate.wait()
        if 13 in items:
            raise psycopg.errors.UniqueViolation("13 is taken")
        return [item * 10 for item in items]

    batcher: WriteBatcher[int, int] = WriteBatcher(write_many, limit=2, one_item_may_be_at_fault=refused_for_content)
    writes = [asyncio.create_task(batcher.write(n)) for n in (1, 2, 3, 13, 4, 5)]
    while len(given) < 2:
        await asyncio.sleep(0)
    writes[-1].cancel()
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    closing.cancel()
    gate.set()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert outcomes[:3] == [10, 20, 30] and outcomes[4] == 40
    assert isinstance(outcomes[3], psycopg.errors.UniqueViolation) and isinstance(outcomes[5], asyncio.CancelledError)
    assert 5 not in [item for batch in given for item in batch], "a write cancelled while it queued is never sent"
    sent = len(given)
    assert await asyncio.wait_for(batcher.write(6), timeout=30) == 60
    assert given[sent:] == [[6]], "alone, at once"


async def test_a_batch_is_bounded_by_its_statement_parameters() -> None:
    given: list[list[int]] = []
    gate = asyncio.Event()

    async def write_many(items: list[int]) -> list[int]:
        given.append(items)
        await gate.wait()
        return items

    batcher: WriteBatcher[int, int] = WriteBatcher(write_many, limit=1, size=lambda item: item, max_size=10)
    writes = [asyncio.create_task(batcher.write(n)) for n in (1, 4, 4, 4, 12, 3)]
    while not given:
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*writes) == [1, 4, 4, 4, 12, 3]
    assert given == [[1], [4, 4], [4], [12], [3]], "an item larger than the bound goes alone"


async def test_calls_lost_by_the_thousands_end_in_statements_postgresql_can_take(
    store: PostgresStore, postgres_url: str, pg_schema: str
) -> None:
    """A replica that died with 10,000 calls working: one statement for all of them would need 70,000 parameters
    (PostgreSQL takes 65,535), fail, and leave every one of them working for ever."""
    now = time.time()
    async with await AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            f'INSERT INTO "{pg_schema}".calls (id, tenant, tool, status, owner, lease_until, created_at, updated_at, '
            "expires_at, correlation_id) SELECT 'lost-' || n, 'alice', 'chat', 'working', 'dead-replica', %s, %s, %s, "
            "%s, '' FROM generate_series(1, 10000) AS n",
            (now - 60, now - 120, now - 120, now + 3600),
        )
    lost = await store.expire_calls(now, CallEnd("failed", message="lost"), ["a-call-this-replica-runs"])
    assert len(lost) == 10_000
    counts = await store.count_calls(now)
    assert counts.by_status == {"failed": 10_000}
