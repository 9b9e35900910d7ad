"""The call runner against a real SQLite store: an answer the store could not take at first is never lost, even when
another replica's sweep has meanwhile declared the call lost."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from exai.config import Settings
from exai.server.call_records import CallRunner, Execution
from exai.storage.base import CallEnd, CallRecord
from exai.storage.sqlite import SQLiteStore
from tests.conftest import Closing
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


class StuckStore(SQLiteStore):
    """A store whose `finish_call` waits until `unstick` is set (a row locked elsewhere, a database that hangs)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.unstick = asyncio.Event()

    async def finish_call(self, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
        await self.unstick.wait()
        return await super().finish_call(call_id, end, now, owner)


class FlakyStore(SQLiteStore):
    """A store whose next `finish_call` fails, as during a database failover."""

    failing = False

    async def finish_call(self, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
        if self.failing:
            self.failing = False
            raise ConnectionError("the database is failing over")
        return await super().finish_call(call_id, end, now, owner)


async def test_a_kept_answer_wins_over_a_sweep_that_declared_its_call_lost(tmp_path: Path, closing: Closing) -> None:
    store = FlakyStore(tmp_path / "exai.db")
    await store.open()
    closing(store)
    await store.migrate()
    settings = Settings(call_lease_seconds=3)
    owner, other = CallRunner(store, settings), CallRunner(store, settings)
    answer = types.CallToolResult(content=[types.TextContent(type="text", text="the paid answer")])

    async def body(record: Any) -> types.CallToolResult:
        await record()
        store.failing = True  # the answer arrives while the store is away
        return answer

    execution = owner.launch(body, tenant="alice", tool="chat", correlation_id="c", continuation_id=None, task=True)
    assert await execution.task is answer and execution.outcome() is answer  # the caller has it all the same
    call = await execution.record()
    assert call is not None
    with sqlite3.connect(tmp_path / "exai.db") as db:  # the owner's lease ran out while the store was away
        db.execute("UPDATE calls SET lease_until = ? WHERE id = ?", (time.time() - 60, call.id))
    assert [c.id for c in await other.expire_lost()] == [call.id]
    assert [c.id for c in await owner.expire_lost()] == []  # a replica never declares its own calls lost
    await owner._record_unrecorded()  # the maintenance round once the store is back
    kept = await store.get_call(call.id)
    assert kept is not None and kept.status == "completed", kept
    assert kept.result is not None and kept.result["content"][0]["text"] == "the paid answer"


async def test_a_cancellation_that_comes_after_the_answer_lets_the_call_complete_with_it(
    tmp_path: Path, closing: Closing
) -> None:
    """The answer has arrived (paid in full) and the call is saving it when the cancellation comes: the call
    completes with the answer instead of being recorded cancelled with it dropped. One still asking is cut."""
    store = SQLiteStore(tmp_path / "exai.db")
    await store.open()
    closing(store)
    await store.migrate()
    runner = CallRunner(store, Settings())
    answered = {"finished": False, "asking": False}
    saving, save = asyncio.Event(), asyncio.Event()

    def body_for(name: str) -> Any:
        async def body(record: Any) -> types.CallToolResult:
            await record()
            answered[name] = name == "finished"  # the model answered `finished`; `asking` waits for one
            saving.set()
            await save.wait()  # writing the thread's turns, say
            return types.CallToolResult(content=[types.TextContent(type="text", text=f"{name} answer")])

        return body

    calls: dict[str, tuple[Execution, CallRecord]] = {}
    for name in answered:
        execution = runner.launch(
            body_for(name),
            tenant="alice",
            tool="chat",
            correlation_id=name,
            continuation_id=None,
            task=True,
            answered=partial(answered.__getitem__, name),  # looks answered[name] up at each call
        )
        call = await execution.record()
        assert call is not None
        calls[name] = (execution, call)
        await saving.wait()
        saving.clear()
    for _, call in calls.values():
        await runner.cancel(call.id, "alice")
    save.set()
    finished, asking = [await runner.wait(call.id, "alice", 30) for _, call in calls.values()]
    assert finished.status == "completed" and finished.result is not None, finished
    assert finished.result["content"][0]["text"] == "finished answer"
    assert asking.status == "cancelled", asking


@pytest.fixture
async def stuck_store(tmp_path: Path, closing: Closing) -> StuckStore:
    """A migrated store whose `finish_call` waits until the test sets `unstick`."""
    store = StuckStore(tmp_path / "exai.db")
    await store.open()
    closing(store)
    await store.migrate()
    return store


async def _assert_completed(store: SQLiteStore, execution: Execution) -> None:
    call = await execution.record()
    assert call is not None
    kept = await store.get_call(call.id)
    assert kept is not None and kept.status == "completed", kept


async def _answered_task(runner: CallRunner, tenant: str, text: str) -> Execution:
    """A task call whose answer has gone out (its record may still be being written)."""

    async def body(record: Any) -> types.CallToolResult:
        await record()
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    execution = runner.launch(body, tenant=tenant, tool="chat", correlation_id=text, continuation_id=None, task=True)
    assert await execution.settled(30), "the answer did not arrive"
    return execution


async def test_a_tenants_next_task_may_start_once_the_answer_is_out_while_its_record_is_written(
    stuck_store: StuckStore,
) -> None:
    store = stuck_store
    runner = CallRunner(store, Settings(max_tasks_per_tenant=1))
    first = await _answered_task(runner, "alice", "first")
    assert not first.task.done()  # its record is still being written
    second = await _answered_task(runner, "alice", "second")  # not refused as too_many_tasks
    assert second.outcome().content[0].text == "second"  # type: ignore[union-attr]
    store.unstick.set()
    await asyncio.gather(first.task, second.task)
    for execution in (first, second):
        await _assert_completed(store, execution)


async def test_a_stopping_runner_waits_for_answered_calls_records_but_not_for_a_store_that_hangs(
    stuck_store: StuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exai.server import call_records

    store = stuck_store
    runner = CallRunner(store, Settings())
    written = await _answered_task(runner, "alice", "written at shutdown")
    stopping = asyncio.create_task(runner.close())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # it waits for the record of the answer that went out
    store.unstick.set()
    await stopping
    await _assert_completed(store, written)

    monkeypatch.setattr(call_records, "FINISH_WAIT_SECONDS", 0.2)
    stuck_runner = CallRunner(store, Settings())
    store.unstick = asyncio.Event()  # and this time the store never answers
    await _answered_task(stuck_runner, "alice", "never written")
    await asyncio.wait_for(stuck_runner.close(), timeout=60)  # bounded: not held by the store


class SentStore(SQLiteStore):
    """A store whose call record, once asked for, is written whatever happens to its caller (as a record sent in a
    batch with others' is), when `send` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked, self.send = asyncio.Event(), asyncio.Event()

    async def create_call(self, call: CallRecord) -> None:
        async def sent() -> None:
            await self.send.wait()
            await SQLiteStore.create_call(self, call)

        self.asked.set()
        await asyncio.shield(asyncio.ensure_future(sent()))


async def test_a_call_cancelled_while_its_record_is_written_ends_cancelled_not_working(
    tmp_path: Path, closing: Closing
) -> None:
    """The client cancels while the call's record is on its way: the row lands all the same, and is ended as
    cancelled. It stayed working for ever (its replica renewed every working row it owned); nothing was spent."""
    store = SentStore(tmp_path / "exai.db")
    await store.open()
    closing(store)
    await store.migrate()
    runner = CallRunner(store, Settings())
    asked_a_model = False

    async def body(record: Any) -> types.CallToolResult:
        nonlocal asked_a_model
        await record()
        asked_a_model = True
        return types.CallToolResult(content=[])

    execution = runner.launch(body, tenant="alice", tool="chat", correlation_id="c", continuation_id=None, task=False)
    await store.asked.wait()
    execution.task.cancel()
    store.send.set()
    with pytest.raises(asyncio.CancelledError):
        await execution.task

    def statuses() -> list[str]:
        with sqlite3.connect(tmp_path / "exai.db") as db:
            return [row[0] for row in db.execute("SELECT status FROM calls")]

    await wait_until(lambda: statuses() != ["working"], "the record's row ends")
    assert statuses() == ["cancelled"] and not asked_a_model
