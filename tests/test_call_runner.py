"""The call runner against a real SQLite store: an answer the store could not take at first is never lost, even when
another replica's sweep has meanwhile declared the call lost."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from exai.config import Settings
from exai.server.call_records import CallRunner
from exai.storage.base import CallEnd
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
    settings = Settings(call_lease_seconds=3)  # type: ignore[call-arg]
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
