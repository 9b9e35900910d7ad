"""Each tenant's share of a provider's concurrency slots, so one tenant cannot take them all.

A tool call holds one slot of the tenant's concurrency but may ask several models (consensus asks up to eight at
once, workflows ask an expert): without a share, one tenant's few calls could fill every upstream slot of a provider
and queue everybody else's calls behind them. A tenant waits for its own share first, then for the provider's slot,
so what it queues never holds a slot another tenant could use. Per replica, like the provider slots themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class _Share:
    slots: asyncio.Semaphore
    users: int = 0  # holders and waiters: the entry goes when the last one leaves, so idle tenants cost nothing


class TenantShares:
    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._shares: dict[tuple[str, str], _Share] = {}

    async def acquire(self, provider: str, tenant: str) -> None:
        """Wait for one of `tenant`'s slots at `provider`; cancelling the wait takes nothing."""
        key = (provider, tenant)
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = _Share(asyncio.Semaphore(self.per_tenant))
        share.users += 1
        try:
            await share.slots.acquire()
        except BaseException:
            self._leave(key, share)
            raise

    def release(self, provider: str, tenant: str) -> None:
        key = (provider, tenant)
        share = self._shares[key]
        share.slots.release()
        self._leave(key, share)

    def _leave(self, key: tuple[str, str], share: _Share) -> None:
        share.users -= 1
        if share.users == 0:
            del self._shares[key]
