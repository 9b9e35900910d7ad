"""Per-tenant limits: requests per minute, concurrent calls and tokens per day.

With Redis every replica checks and counts in one atomic script, so N replicas admit the limit, not N times it.
Concurrency slots are leases with an expiry, so a replica that dies holding one cannot block a tenant forever.
Without Redis the same rules run in process. When Redis fails, the configured mode decides (fail open with an
error log and a counted alert event, or fail closed): never a silent switch to per-process counting.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal, Protocol

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from exai.observability.errors import RateLimitError
from exai.observability.logging import get_logger

log = get_logger(__name__)
WINDOW = 60.0
DAY = 86400


class Limits(BaseModel):
    requests_per_minute: int = Field(default=120, ge=1)
    concurrent: int = Field(default=8, ge=1)
    tokens_per_day: int = Field(default=5_000_000, ge=1)


@dataclass
class Lease:
    tenant: str
    id: str
    enforced: bool = True


class RateLimiter(Protocol):
    failures: int

    async def acquire(self, tenant: str) -> Lease: ...

    async def release(self, lease: Lease) -> None: ...

    async def add_tokens(self, tenant: str, tokens: int) -> None: ...


def _rejected(reason: str, limit: int, retry_after: float) -> RateLimitError:
    what = {
        "rpm": f"{limit} requests per minute",
        "concurrency": f"{limit} concurrent calls",
        "tokens": f"{limit:,} tokens per day",
        "unavailable": "the limiter is unavailable",
    }[reason]
    return RateLimitError(
        f"Rate limit reached: {what}.",
        code=f"rate_limited_{reason}",
        remedy=f"Retry after {retry_after:.1f} s, or ask the operator to raise your limits.",
        details={"retry_after_seconds": round(retry_after, 2), "limit": reason},
    )


class LocalLimiter:
    """Limits for one process (no Redis configured)."""

    def __init__(self, defaults: Limits, overrides: dict[str, Limits]) -> None:
        self.defaults, self.overrides = defaults, overrides
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._active: dict[str, set[str]] = defaultdict(set)
        self._tokens: dict[tuple[str, int], int] = defaultdict(int)
        self.failures = 0

    def limits(self, tenant: str) -> Limits:
        return self.overrides.get(tenant, self.defaults)

    async def acquire(self, tenant: str) -> Lease:
        limits, now = self.limits(tenant), time.time()
        recent = self._recent[tenant]
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        if self._tokens[(tenant, int(now // DAY))] >= limits.tokens_per_day:
            raise _rejected("tokens", limits.tokens_per_day, DAY - now % DAY)
        if len(recent) >= limits.requests_per_minute:
            raise _rejected("rpm", limits.requests_per_minute, recent[0] + WINDOW - now)
        if len(self._active[tenant]) >= limits.concurrent:
            raise _rejected("concurrency", limits.concurrent, 1.0)
        recent.append(now)
        lease = Lease(tenant, uuid.uuid4().hex)
        self._active[tenant].add(lease.id)
        return lease

    async def release(self, lease: Lease) -> None:
        self._active[lease.tenant].discard(lease.id)

    async def add_tokens(self, tenant: str, tokens: int) -> None:
        self._tokens[(tenant, int(time.time() // DAY))] += tokens


_ACQUIRE = """
local rpm_key, slots_key, tokens_key = KEYS[1], KEYS[2], KEYS[3]
local now, rpm, concurrent, tokens_per_day = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, lease_ttl, request_id = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local used = tonumber(redis.call('GET', tokens_key) or '0')
if used >= tokens_per_day then return {'tokens', tostring(86400 - (now % 86400))} end
redis.call('ZREMRANGEBYSCORE', rpm_key, '-inf', now - 60)
if redis.call('ZCARD', rpm_key) >= rpm then
  local oldest = redis.call('ZRANGE', rpm_key, 0, 0, 'WITHSCORES')
  return {'rpm', tostring(tonumber(oldest[2]) + 60 - now)}
end
redis.call('ZREMRANGEBYSCORE', slots_key, '-inf', now)
if redis.call('ZCARD', slots_key) >= concurrent then return {'concurrency', '1'} end
redis.call('ZADD', rpm_key, now, request_id)
redis.call('EXPIRE', rpm_key, 120)
redis.call('ZADD', slots_key, now + lease_ttl, lease)
redis.call('EXPIRE', slots_key, lease_ttl + 60)
return {'ok', '0'}
"""


class RedisLimiter:
    """Limits shared by every replica through Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        defaults: Limits,
        overrides: dict[str, Limits],
        on_failure: Literal["open", "closed"],
        lease_ttl: float,
    ) -> None:
        self.redis, self.defaults, self.overrides = redis, defaults, overrides
        self.on_failure, self.lease_ttl = on_failure, lease_ttl
        self._acquire = redis.register_script(_ACQUIRE)
        self.failures = 0

    def limits(self, tenant: str) -> Limits:
        return self.overrides.get(tenant, self.defaults)

    def _keys(self, tenant: str, now: float) -> list[str]:
        return [f"exai:rl:{tenant}:rpm", f"exai:rl:{tenant}:slots", f"exai:rl:{tenant}:tokens:{int(now // DAY)}"]

    async def acquire(self, tenant: str) -> Lease:
        limits, now, lease = self.limits(tenant), time.time(), Lease(tenant, uuid.uuid4().hex)
        try:
            verdict, wait = await self._acquire(
                keys=self._keys(tenant, now),
                args=[
                    now,
                    limits.requests_per_minute,
                    limits.concurrent,
                    limits.tokens_per_day,
                    lease.id,
                    self.lease_ttl,
                    uuid.uuid4().hex,
                ],
            )
        except RedisError as exc:
            self.failures += 1
            log.error("rate_limiter_unavailable", mode=self.on_failure, error=str(exc))
            if self.on_failure == "closed":
                raise _rejected("unavailable", 0, 5.0) from None
            return Lease(tenant, lease.id, enforced=False)
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        if verdict != "ok":
            limit = {
                "rpm": limits.requests_per_minute,
                "concurrency": limits.concurrent,
                "tokens": limits.tokens_per_day,
            }[verdict]
            raise _rejected(verdict, limit, max(0.0, float(wait)))
        return lease

    async def release(self, lease: Lease) -> None:
        if not lease.enforced:
            return
        try:
            await self.redis.zrem(f"exai:rl:{lease.tenant}:slots", lease.id)
        except RedisError as exc:  # the lease expires by itself
            self.failures += 1
            log.error("rate_limiter_release_failed", error=str(exc))

    async def add_tokens(self, tenant: str, tokens: int) -> None:
        if tokens <= 0:
            return
        key = self._keys(tenant, time.time())[2]
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.incrby(key, tokens).expire(key, DAY * 2).execute()
        except RedisError as exc:
            self.failures += 1
            log.error("rate_limiter_unavailable", error=str(exc))
