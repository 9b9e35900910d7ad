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

pytestmark = pytest.mark.anyio


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
    returned = await execution.task
    assert (returned.meta or {}).get("exai/recorded") is False  # the caller has it, marked not recorded yet
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
