"""How a call's end (its answer, or how it failed) reaches the store when the store does not take it at once: kept
through an outage and written together once it is over, never thrown away for an error that may pass, and never
retried for ever when the store refuses what it holds. On a real PostgreSQL and a real SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import mcp_types as types
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from exai.config import Settings
from exai.server import call_records
from exai.server.call_records import CallRunner, Execution
from exai.storage.base import CallEnd, CallRecord, Store
from exai.storage.batching import StoreClosed
from exai.storage.postgres import PostgresStore, refused_for_good
from exai.storage.sqlite import SQLiteStore
from tests.conftest import Closing
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
UNSTORABLE = "paid for, but \u0000 cannot be kept in a PostgreSQL JSON value"


class EndsFailing(PostgresStore):
    """A store whose call ends fail with `failure` while it is set (an outage), or only the next one (`once`: a
    transport fault), raised where PostgreSQL's own errors are: under the store's classification of them."""

    failure: Exception | None = None
    once = False

    async def _write_ends(self, ends: list[tuple[str, CallEnd, float, str | None]]) -> list[bool]:
        if self.failure is not None:
            failure, self.failure = self.failure, None if self.once else self.failure
            raise failure
        return await super()._write_ends(ends)


@pytest.fixture
async def store(postgres_url: str, pg_schema: str) -> AsyncIterator[EndsFailing]:
    built = EndsFailing(postgres_url, schema=pg_schema)
    await built.open()
    await built.migrate()
    yield built
    await built.close()


async def _answered(runner: CallRunner, text: str) -> Execution:
    """A task call whose answer is `text` and whose work, the writing of its end included, is over."""

    async def body(record: Callable[[], Awaitable[None]]) -> types.CallToolResult:
        await record()
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    execution = runner.launch(body, tenant="alice", tool="chat", correlation_id="c", continuation_id=None, task=True)
    await execution.task
    return execution


async def _stored(store: Store, execution: Execution) -> CallRecord:
    call = await execution.record()
    assert call is not None
    stored = await store.get_call(call.id)
    assert stored is not None
    return stored


async def test_ends_kept_through_an_outage_are_written_together_once_it_is_over(
    store: EndsFailing, statements: Counter[str]
) -> None:
    """They were written one after another, each its own statement and commit, inside the round that renews the
    replica's leases."""
    runner = CallRunner(store, Settings(max_tasks_per_tenant=1000))
    store.failure = psycopg.OperationalError("the database is failing over")
    executions = await asyncio.gather(*(_answered(runner, f"answer {n}") for n in range(64)))
    store.failure = None
    statements.clear()
    await runner.close()  # writes what it holds
    assert statements["UPDATE calls"] <= 12, statements  # 64 one at a time
    for n, execution in enumerate(executions):
        stored = await _stored(store, execution)
        assert stored.status == "completed", stored
        assert stored.result is not None and stored.result["content"][0]["text"] == f"answer {n}"


@pytest.mark.parametrize(
    "failure",
    [
        psycopg.OperationalError("the connection was lost"),
        psycopg.DatabaseError("unexpected response from server"),  # a fault on the wire, no SQLSTATE
        psycopg.InternalError("got no result from the query"),
        psycopg.errors.lookup("40P01")("deadlock detected"),
        psycopg.errors.lookup("40001")("could not serialize access"),
        psycopg.errors.lookup("57014")("canceling statement due to statement timeout"),
        psycopg.errors.lookup("25006")("cannot execute UPDATE in a read-only transaction"),
        PoolTimeout("couldn't get a connection after 5.00 sec"),
        StoreClosed("the store closed while this write was on its way"),
    ],
    ids=lambda failure: type(failure).__name__,
)
async def test_an_end_that_fails_for_what_may_pass_is_kept_and_written_later_never_given_up(
    store: EndsFailing, failure: Exception
) -> None:
    """Giving an end up writes a failure in place of a paid answer: only the database's refusal of what the end
    holds may do that, never a fault of the transport, the pool or the moment."""
    assert not refused_for_good(failure)
    runner = CallRunner(store, Settings())
    store.failure, store.once = failure, True  # the next write would pass: an end given up would be written then
    execution = await _answered(runner, "kept answer")
    assert (await _stored(store, execution)).status == "working"
    await runner.close()
    stored = await _stored(store, execution)
    assert stored.status == "completed" and stored.result is not None, stored
    assert stored.result["content"][0]["text"] == "kept answer"


@pytest.mark.parametrize("sqlstate", ["22P05", "22021", "23505", "54000"])
def test_what_postgresql_refuses_for_what_a_write_holds_is_refused_for_good(sqlstate: str) -> None:
    assert refused_for_good(psycopg.errors.lookup(sqlstate)("refused"))
    assert refused_for_good(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))


async def _assert_not_kept(runner: CallRunner, store: Store, execution: Execution, reason: str) -> None:
    """The call keeps its status (a task that ended never changes it: a held end may have been served from memory
    already), says why in its status message (`tasks/get`), and its result is the error `tasks/result` and
    `collect` return; nothing of the refused data is quoted."""
    stored = await _stored(store, execution)
    assert stored.status == "completed", stored
    assert stored.status_message is not None and f"the store refused to keep its answer ({reason})" in (
        stored.status_message
    ), stored.status_message
    outcome = runner.outcome(stored)
    assert outcome.is_error and "[storage/answer_not_kept]" in outcome.content[0].text, outcome  # type: ignore[union-attr]
    assert "cannot be kept" not in stored.model_dump_json(), "no data quoted"


async def test_an_end_the_database_refuses_for_what_it_holds_ends_the_call_failed_not_working_for_ever(
    store: EndsFailing,
) -> None:
    """PostgreSQL cannot keep U+0000 in a JSON value, so the same end is refused on every retry: the call stayed
    working, its lease renewed by its replica for as long as it ran."""
    writes: list[tuple[str, bool]] = []
    runner = CallRunner(store, Settings(), on_storage=lambda operation, seconds, ok: writes.append((operation, ok)))
    execution = await _answered(runner, UNSTORABLE)
    assert execution.outcome().content[0].text == UNSTORABLE  # type: ignore[union-attr]  # the waiting request's
    await _assert_not_kept(runner, store, execution, "SQLSTATE 22P05")
    assert ("finish_call", False) in writes and ("finish_call", True) not in writes, "a replaced end is no success"
    await runner.close()


async def test_an_end_held_through_an_outage_then_refused_ends_failed_once_the_store_is_back(
    store: EndsFailing,
) -> None:
    runner = CallRunner(store, Settings())
    store.failure = psycopg.OperationalError("the database is failing over")
    execution = await _answered(runner, UNSTORABLE)
    store.failure = None
    await runner.close()  # the last round writes what it holds
    await _assert_not_kept(runner, store, execution, "SQLSTATE 22P05")


class TinySQLite(SQLiteStore):
    """A SQLite store that takes no value over 2,000 bytes (SQLITE_LIMIT_LENGTH; 1,000,000,000 by default)."""

    async def open(self) -> None:
        await super().open()
        for db in (self._db, self._writer):
            assert db is not None
            db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 2_000)


async def test_an_end_sqlite_refuses_for_what_it_holds_ends_the_call_failed_too(
    tmp_path: Path, closing: Closing
) -> None:
    store = closing(TinySQLite(tmp_path / "exai.db"))
    await store.open()
    await store.migrate()
    runner = CallRunner(store, Settings())
    execution = await _answered(runner, "x" * 5_000)
    await _assert_not_kept(runner, store, execution, "DataError")
    await runner.close()


class SlowToWrite(SQLiteStore):
    """A SQLite store whose call ends fail while `failing` is set, then take `pause` seconds (None: for ever, a
    database that stopped answering)."""

    failing = True
    pause: float | None = 0.2

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = asyncio.Event()

    async def finish_call(self, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
        if self.failing:
            raise sqlite3.OperationalError("database is locked")
        self.writing.set()
        await (asyncio.Event().wait() if self.pause is None else asyncio.sleep(self.pause))
        return await super().finish_call(call_id, end, now, owner)


async def test_a_runner_that_stops_while_its_upkeep_writes_held_ends_stops_cleanly(
    tmp_path: Path, closing: Closing
) -> None:
    """Its last round and a round of its upkeep wrote the same ends at once, and the second to finish failed on an
    end the first had taken off (KeyError): the stop broke off there, and what the daemon closes after it (the
    audit's last rows, the store) was never closed."""
    store = closing(SlowToWrite(tmp_path / "exai.db"))
    await store.open()
    await store.migrate()
    runner = CallRunner(store, Settings())
    execution = await _answered(runner, "held answer")
    store.failing = False
    runner.start()  # its first round begins at once and takes a moment
    await store.writing.wait()
    await runner.close()
    assert (await _stored(store, execution)).status == "completed"


class PickySQLite(SQLiteStore):
    """A SQLite store whose call ends fail while `failing` is set, the next `fail_next` of them, and always those
    holding an answer over 10,000 characters (as a disk too full for them would: the error does not say it is
    the answer's)."""

    failing = False
    fail_next = 0

    async def finish_call(self, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
        big = len(str(end.result)) > 10_000
        if self.failing or self.fail_next or big:
            self.fail_next = max(0, self.fail_next - 1)
            raise sqlite3.OperationalError("database or disk is full")
        return await super().finish_call(call_id, end, now, owner)


async def _picky_store(tmp_path: Path, closing: Closing) -> PickySQLite:
    store = PickySQLite(tmp_path / "exai.db")
    closing(store)
    await store.open()
    await store.migrate()
    return store


async def test_an_end_the_store_cannot_take_holds_up_no_other(tmp_path: Path, closing: Closing) -> None:
    """A round wrote one held end first and the rest only if it was written: the same end first every time, so one
    the store could never take kept every other call working (and lost at the next restart)."""
    store = await _picky_store(tmp_path, closing)
    runner = CallRunner(store, Settings())
    stuck = await _answered(runner, "x" * 20_000)
    store.failing = True
    others = [await _answered(runner, f"answer {n}") for n in range(5)]
    store.failing = False
    runner.start()

    async def others_written() -> bool:
        return all([(await _stored(store, execution)).status == "completed" for execution in others])

    await wait_until(others_written, "the other calls' ends are written")
    assert (await _stored(store, stuck)).status == "working"
    await runner.close()


async def test_a_stopping_runner_tries_every_end_it_holds(tmp_path: Path, closing: Closing) -> None:
    """Its last round wrote one end first and, when that one failed once, tried no other: all were lost."""
    store = await _picky_store(tmp_path, closing)
    runner = CallRunner(store, Settings())
    store.failing = True
    held = [await _answered(runner, f"answer {n}") for n in range(5)]
    store.failing, store.fail_next = False, 1
    await runner.close()
    statuses = [(await _stored(store, execution)).status for execution in held]
    assert sorted(statuses) == ["completed"] * 4 + ["working"], statuses


async def test_a_runner_stops_even_while_its_upkeep_waits_on_a_store_that_hangs(
    tmp_path: Path, closing: Closing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop waits for the round under way (a write torn midway would be written twice), but only so long: it
    waited for ever behind a round that a hanging store never let finish."""
    monkeypatch.setattr(call_records, "FINISH_WAIT_SECONDS", 0.5)
    store = SlowToWrite(tmp_path / "exai.db")
    store.pause = None
    closing(store)
    await store.open()
    await store.migrate()
    runner = CallRunner(store, Settings())
    execution = await _answered(runner, "held answer")
    store.failing = False
    runner.start()
    await store.writing.wait()
    await asyncio.wait_for(runner.close(), 60)  # a ceiling, not a measure: it returned at once, or never
    assert (await _stored(store, execution)).status == "working"  # its row ends as lost after its lease
