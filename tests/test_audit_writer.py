"""The audit writer loses nothing at close: not the queue, not a batch in flight, not when close is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exai.storage.audit import AuditWriter
from exai.storage.base import AuditRecord
from exai.storage.sqlite import SQLiteStore
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
RECORDS = 5


class GatedStore(SQLiteStore):
    """A real store whose audit writes wait until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()

    async def write_audit(self, records: list[AuditRecord]) -> None:
        self.writing.set()
        await self.gate.wait()
        await super().write_audit(records)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GatedStore]:
    gated = GatedStore(tmp_path / "audit.db")
    await gated.open()
    await gated.migrate()
    yield gated
    await gated.close()


async def _writer_with_a_batch_in_flight(store: GatedStore) -> AuditWriter:
    writer = AuditWriter(store, batch=2, interval=0.01)
    writer.start()
    for i in range(RECORDS):
        writer.add(AuditRecord(tenant="t", tool="chat", outcome="ok", correlation_id=f"c{i}"))
    await asyncio.wait_for(store.writing.wait(), 60)
    return writer


async def test_close_writes_the_batch_in_flight_and_the_rest(store: GatedStore) -> None:
    writer = await _writer_with_a_batch_in_flight(store)
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0)  # close runs up to its first wait: the background task is cancelled
    store.gate.set()
    await asyncio.wait_for(closing, 60)
    assert len(await store.list_audit()) == RECORDS


async def test_a_cancelled_close_still_writes_everything(store: GatedStore) -> None:
    writer = await _writer_with_a_batch_in_flight(store)
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0)
    closing.cancel()  # e.g. a shutdown that gave up waiting
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await closing

    async def all_written() -> bool:
        return len(await store.list_audit()) >= RECORDS

    await wait_until(all_written, f"all {RECORDS} records were written")
