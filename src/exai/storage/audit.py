"""Audit records written in the background: off the request path, but never lost on a clean shutdown.

A batch taken off the queue is written by a task of its own, awaited through `asyncio.shield`: cancelling the
writer (as `close` does) never cancels a write half-way, and `close` waits for it before writing the rest.
"""

from __future__ import annotations

import asyncio

from exai.background import BackgroundLoop
from exai.observability.events import CallEvent
from exai.observability.logging import get_logger
from exai.storage.base import AuditRecord, Store

log = get_logger(__name__)
CLOSE_ATTEMPTS = 3  # failed writes retried at close before what is left is reported lost


def call_audit_records(event: CallEvent) -> list[AuditRecord]:
    """One row per model call (so usage is kept per model), or one row for a call that asked no model."""
    common = {
        "time": event.finished_at,
        "tenant": event.tenant,
        "tool": event.tool,
        "latency_ms": round(event.latency_s * 1000, 2),
        "correlation_id": event.correlation_id,
        "thread_id": event.thread_id,
    }
    if not event.model_calls:
        return [AuditRecord(**common, outcome=event.outcome, error_category=event.error_category)]
    return [
        AuditRecord(
            **common,
            outcome=_outcome(call.failure, event.outcome),
            error_category=None if call.failure == "cancelled" else call.failure or event.error_category,
            model=call.model,
            provider=call.provider,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cost_usd=call.cost_usd,
        )
        for call in event.model_calls
    ]


def _outcome(failure: str | None, outcome: str) -> str:
    """A model call's outcome: the call's, unless it failed, or was cut by a cancellation (and charged)."""
    if failure == "cancelled":
        return "cancelled"
    return "error" if failure else outcome


class AuditWriter:
    def __init__(self, store: Store, batch: int = 200, interval: float = 0.5) -> None:
        self.store = store
        self.batch = batch
        self.interval = interval
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=100_000)
        self._loop = BackgroundLoop("exai-audit-writer", self._drain, interval, failed_event="audit_drain_failed")
        self._writing: asyncio.Task[bool] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._loop.start()

    def add(self, record: AuditRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("audit_queue_full", dropped=self.dropped)

    def add_call(self, event: CallEvent) -> None:
        for record in call_audit_records(event):
            self.add(record)

    def add_task_event(self, kind: str, tenant: str, tool: str, correlation_id: str) -> None:
        self.add(AuditRecord(tenant=tenant, tool=tool, outcome=f"task_{kind}", correlation_id=correlation_id))

    async def _write(self, records: list[AuditRecord]) -> bool:
        """Write one batch; on failure put it back for the next attempt."""
        try:
            await self.store.write_audit(records)
        except Exception:
            log.exception("audit_write_failed", records=len(records))
            for record in records:
                self.add(record)
            return False
        return True

    async def _drain(self) -> bool:
        """Write everything queued now, batch by batch; False when a write failed (its records are queued again)."""
        while not self._queue.empty():
            records = [self._queue.get_nowait() for _ in range(min(self.batch, self._queue.qsize()))]
            self._writing = asyncio.create_task(self._write(records), name="exai-audit-batch")
            if not await asyncio.shield(self._writing):
                return False
        return True

    async def close(self) -> None:
        """Stop the background task and write everything still queued or in flight, even if close is cancelled."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._finish(), name="exai-audit-close")
        await asyncio.shield(self._closing)

    async def _finish(self) -> None:
        await self._loop.close()
        if self._writing is not None:
            await self._writing  # a batch the cancelled task left in flight
        for _ in range(CLOSE_ATTEMPTS):
            if await self._drain():
                return
        log.error("audit_records_lost", records=self._queue.qsize())
