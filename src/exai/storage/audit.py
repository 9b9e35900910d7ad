"""Audit records written in the background: off the request path, but never lost on a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib

from exai.observability.logging import get_logger
from exai.storage.base import AuditRecord, Store

log = get_logger(__name__)


class AuditWriter:
    def __init__(self, store: Store, batch: int = 200, interval: float = 0.5) -> None:
        self.store = store
        self.batch = batch
        self.interval = interval
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=100_000)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="exai-audit-writer")

    def add(self, record: AuditRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("audit_queue_full", dropped=self.dropped)

    async def _flush(self) -> None:
        records: list[AuditRecord] = []
        while not self._queue.empty() and len(records) < self.batch:
            records.append(self._queue.get_nowait())
        if not records:
            return
        try:
            await self.store.write_audit(records)
        except Exception:
            log.exception("audit_write_failed", records=len(records))
            for record in records:  # keep them for the next flush
                self.add(record)
            raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):
                while not self._queue.empty():
                    await self._flush()

    async def close(self) -> None:
        """Stop the background task and write whatever is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _ in range(100):
            if self._queue.empty():
                break
            try:
                await self._flush()
            except Exception:
                break
