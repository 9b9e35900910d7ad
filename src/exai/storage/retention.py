"""Retention in a running daemon: expired threads and old audit rows are purged every interval, not only at start."""

from __future__ import annotations

import time

from exai.background import BackgroundLoop
from exai.observability.logging import get_logger
from exai.storage.base import Store

log = get_logger(__name__)


class Purger:
    def __init__(self, store: Store, interval_seconds: float, audit_retention_seconds: float) -> None:
        self.store = store
        self.interval = interval_seconds
        self.audit_retention = audit_retention_seconds
        self._loop = BackgroundLoop("exai-purger", self.purge, interval_seconds, failed_event="storage_purge_failed")

    async def purge(self) -> int:
        """Delete what has expired now; return the rows removed."""
        now = time.time()
        removed = await self.store.purge(now, audit_before=now - self.audit_retention)
        if removed:
            log.info("storage_purged", rows=removed)
        return removed

    def start(self) -> None:
        """Purge every interval from now on (the store may be down for a while: the next interval tries again)."""
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
