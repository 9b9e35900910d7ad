"""Retention in a running daemon: expired threads and old audit rows are purged every interval, not only at start."""

from __future__ import annotations

import asyncio
import contextlib
import time

from exai.observability.logging import get_logger
from exai.storage.base import Store

log = get_logger(__name__)


class Purger:
    def __init__(self, store: Store, interval_seconds: float, audit_retention_seconds: float) -> None:
        self.store = store
        self.interval = interval_seconds
        self.audit_retention = audit_retention_seconds
        self._task: asyncio.Task[None] | None = None

    async def purge(self) -> int:
        """Delete what has expired now; return the rows removed."""
        now = time.time()
        removed = await self.store.purge(now, audit_before=now - self.audit_retention)
        if removed:
            log.info("storage_purged", rows=removed)
        return removed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="exai-purger")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.purge()
            except Exception:  # the store may be down for a while: try again next interval
                log.exception("storage_purge_failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
