"""Per-tenant limits: requests per minute, concurrent calls, tokens per day, characters stored per day,
new MCP sessions per minute and task requests (`tasks/*`, which read the store) per minute.

With Redis every replica checks and counts in one atomic script, so N replicas admit the limit, not N times it.
A tenant's keys share the hash tag `{tenant}`, so the multi-key scripts also run on Redis Cluster.
Concurrency slots are leases with an expiry that is refreshed while the call runs: a replica that dies holding
one frees it within one TTL, and a call longer than the TTL (consensus asks several models) keeps its slot.
Without Redis the same rules run in process. When Redis fails, the configured mode decides: `open` falls back to
this replica's own counters ("degraded": each replica enforces the limits alone) and tries Redis again after a
pause; `closed` refuses. Either way the failure is counted (`failures`) and `degraded` stays
true until Redis answers again: never a silent switch to "unlimited".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from exai.config import Limits
from exai.errors import RateLimitError
from exai.observability.logging import get_logger
from exai.security import limit_scripts
from exai.uncancelled import to_the_end

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript
    from redis.exceptions import RedisError

log = get_logger(__name__)
WINDOW = 60.0
DAY = 86400
REDIS_RETRY_SECONDS = 5.0
STORED_FLUSH_CHARS = 65_536
"""Characters counted after their calls settled that a replica gathers per tenant before sending them to Redis."""


@dataclass(frozen=True)
class TokenReservation:
    """Tokens counted against one day's budget before a model call, and where they were counted."""

    tenant: str
    tokens: int
    day: int
    local: bool = True


@dataclass
class Lease:
    tenant: str
    id: str
    local: bool = False
    """True when the slot is held in this process (no Redis, or Redis was down when it was taken)."""
    prepaid: TokenReservation | None = None
    """Tokens reserved with the slot, in the same round trip (`acquire(prepay=...)`), when they fit the budget."""


Correction = tuple[TokenReservation, int]
"""A reservation and what the model calls it covered used: settled by replacing the one with the other."""


class RateLimiter(Protocol):
    failures: int
    degraded: bool

    prepay_sizes: dict[tuple[str, str], int]
    """What each tenant's last call of each tool reserved in all: the prepayment its next call of the tool asks for
    with its slot (see `call_tokens.remember_prepay`)."""

    async def acquire(
        self, tenant: str, prepay: int = 0, spends_tokens: bool = True, writes_threads: bool = True
    ) -> Lease:
        """A slot of the tenant's limits and, if `prepay` tokens fit today's budget, those too (else none). A call
        that `spends_tokens` (asks a model) is refused once the day's budget is spent; one that does not (`threads`,
        `version`: how a tenant gets back a paid answer) is not. A call that `writes_threads` is refused once the
        day's stored text is spent."""
        ...

    async def release(self, lease: Lease, corrections: Sequence[Correction] = (), stored_chars: int = 0) -> None:
        """Give the slot back, settle the call's reservations and count the characters it stored today:
        with Redis, one round trip for all. It finishes even when its caller is cancelled (`uncancelled.to_the_end`)."""
        ...

    async def reserve_tokens(self, tenant: str, tokens: int) -> TokenReservation:
        """Count `tokens` against today's budget before a model call, or refuse when they would exceed it."""
        ...

    async def settle(self, reservation: TokenReservation, used: int) -> None:
        """Replace what was reserved by what the call used, in the counter (and day) the reservation went to."""
        ...

    def count_stored_later(self, tenant: str, chars: int) -> None:
        """Count characters stored after the call settled (an answer's kept result) against today's stored text:
        with Redis, gathered per tenant and sent with the tenant's next release, or on their own once
        `STORED_FLUSH_CHARS` are waiting, not a round trip each."""
        ...

    async def close(self) -> None:
        """Send what is waiting to be counted (see `count_stored_later`)."""
        ...

    async def open_session(self, tenant: str) -> None: ...

    async def task_request(self, tenant: str) -> None:
        """Count one `tasks/*` request (it reads the store) against the tenant's own window for them."""
        ...


def _rejected(reason: str, limit: int, retry_after: float) -> RateLimitError:
    what = {
        "rpm": f"{limit} requests per minute",
        "concurrency": f"{limit} concurrent calls",
        "tokens": f"{limit:,} tokens per day",
        "stored_text": f"{limit:,} characters stored per day (thread turns, workflow steps and kept results)",
        "sessions": f"{limit} new MCP sessions per minute",
        "tasks": f"{limit} task requests (tasks/get, tasks/result, tasks/list, tasks/cancel, collect) per minute",
        "unavailable": "the limiter is unavailable",
    }[reason]
    reuse = {
        "sessions": "Reuse one MCP session for many calls instead of opening one per call. ",
        "tasks": "Poll less often (tasks/result and collect wait for the end in one request). ",
        "stored_text": "The day's count starts again at 00:00 UTC; the tools that write no thread (threads, version, "
        "listmodels, challenge, collect) still answer. ",
    }.get(reason, "")
    return RateLimitError(
        f"Rate limit reached: {what}.",
        code=f"rate_limited_{reason}",
        remedy=f"{reuse}Retry after {retry_after:.1f} s, or ask the operator to raise your limits.",
        details={"retry_after_seconds": round(retry_after, 2), "limit": reason},
    )


Window = Literal["sessions", "tasks"]
"""Per-minute windows of their own, apart from the tool calls': new MCP sessions and `tasks/*` requests."""


def window_limit(limits: Limits, window: Window) -> int:
    return limits.requests_per_minute if window == "sessions" else limits.task_requests_per_minute


def _trimmed(recent: deque[float], now: float) -> deque[float]:
    while recent and recent[0] <= now - WINDOW:
        recent.popleft()
    return recent


class LocalLimiter:
    """Limits for one process (no Redis configured, or Redis down in `open` mode)."""

    def __init__(self, defaults: Limits, overrides: dict[str, Limits]) -> None:
        self.defaults, self.overrides = defaults, overrides
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._windows: dict[tuple[str, Window], deque[float]] = defaultdict(deque)
        self._active: dict[str, set[str]] = defaultdict(set)
        self._tokens: dict[tuple[str, int], int] = defaultdict(int)
        self._stored_text: dict[str, tuple[int, int]] = {}
        """Per tenant, the day and its stored text (one entry a tenant: an earlier day's is replaced)."""
        self.failures = 0
        self.degraded = False
        self.prepay_sizes: dict[tuple[str, str], int] = {}

    def limits(self, tenant: str) -> Limits:
        return self.overrides.get(tenant, self.defaults)

    async def acquire(
        self, tenant: str, prepay: int = 0, spends_tokens: bool = True, writes_threads: bool = True
    ) -> Lease:
        limits, now = self.limits(tenant), time.time()
        recent = _trimmed(self._recent[tenant], now)
        day = int(now // DAY)
        if spends_tokens and self._tokens[(tenant, day)] >= limits.tokens_per_day:
            raise _rejected("tokens", limits.tokens_per_day, DAY - now % DAY)
        if writes_threads and self._stored_on(tenant, day) >= limits.stored_chars_per_day:
            raise _rejected("stored_text", limits.stored_chars_per_day, DAY - now % DAY)
        if len(recent) >= limits.requests_per_minute:
            raise _rejected("rpm", limits.requests_per_minute, recent[0] + WINDOW - now)
        if len(self._active[tenant]) >= limits.concurrent:
            raise _rejected("concurrency", limits.concurrent, 1.0)
        recent.append(now)
        lease = Lease(tenant, uuid.uuid4().hex, local=True)
        if prepay > 0 and self._tokens[(tenant, day)] + prepay <= limits.tokens_per_day:
            self._tokens[(tenant, day)] += prepay
            lease.prepaid = TokenReservation(tenant, prepay, day)
        self._active[tenant].add(lease.id)
        return lease

    async def release(self, lease: Lease, corrections: Sequence[Correction] = (), stored_chars: int = 0) -> None:
        self._active[lease.tenant].discard(lease.id)
        for reservation, used in corrections:
            await self.settle(reservation, used)
        self.add_stored_text(lease.tenant, stored_chars)

    def _stored_on(self, tenant: str, day: int) -> int:
        kept_day, count = self._stored_text.get(tenant, (day, 0))
        return count if kept_day == day else 0

    def add_stored_text(self, tenant: str, chars: int) -> None:
        """Count `chars` more stored for the tenant today."""
        day = int(time.time() // DAY)
        self._stored_text[tenant] = (day, self._stored_on(tenant, day) + chars)

    def count_stored_later(self, tenant: str, chars: int) -> None:
        self.add_stored_text(tenant, chars)

    def note_stored_text(self, tenant: str, day: int, total: int) -> None:
        """Remember a day's stored text as Redis last reported it, so a fallback during an outage starts from it."""
        if day >= self._stored_text.get(tenant, (day, 0))[0]:
            self._stored_text[tenant] = (day, max(self._stored_on(tenant, day), total))

    async def close(self) -> None:
        """Nothing is waiting: every count is made at once."""

    async def reserve_tokens(self, tenant: str, tokens: int) -> TokenReservation:
        limit, now = self.limits(tenant).tokens_per_day, time.time()
        key = (tenant, int(now // DAY))
        if self._tokens[key] + tokens > limit:
            raise _rejected("tokens", limit, DAY - now % DAY)
        self._tokens[key] += tokens
        return TokenReservation(tenant, tokens, key[1])

    async def settle(self, reservation: TokenReservation, used: int) -> None:
        key = (reservation.tenant, reservation.day)
        self._tokens[key] = max(0, self._tokens[key] + used - reservation.tokens)

    def note_used(self, tenant: str, used: int) -> None:
        """Remember today's count as Redis last reported it, so a fallback during an outage starts from it."""
        key = (tenant, int(time.time() // DAY))
        self._tokens[key] = max(self._tokens[key], used)

    async def open_session(self, tenant: str) -> None:
        await self.count(tenant, "sessions")

    async def task_request(self, tenant: str) -> None:
        await self.count(tenant, "tasks")

    async def count(self, tenant: str, window: Window) -> None:
        """One more request in the tenant's own per-minute `window`, or `RateLimitError` when it is full."""
        limit, now = window_limit(self.limits(tenant), window), time.time()
        recent = _trimmed(self._windows[(tenant, window)], now)
        if len(recent) >= limit:
            raise _rejected(window, limit, recent[0] + WINDOW - now)
        recent.append(now)


def tenant_keys(tenant: str) -> str:
    """The prefix of every key of one tenant; the braces make Redis Cluster keep them in one slot."""
    return f"exai:rl:{{{tenant}}}"


KEEPER_WAIT_SECONDS = 0.5
"""How long a release waits for a renewal of its lease already under way (a healthy Redis answers in a millisecond)."""


class RedisLimiter:
    """Limits shared by every replica through Redis, with a per-replica fallback while Redis is down."""

    def __init__(
        self,
        redis: aioredis.Redis,
        defaults: Limits,
        overrides: dict[str, Limits],
        when_redis_fails: Literal["open", "closed"],
        lease_ttl: float,
    ) -> None:
        from redis.exceptions import RedisError  # the Redis client loads only when Redis is configured

        self._redis_error = RedisError
        self.redis, self.defaults, self.overrides = redis, defaults, overrides
        self.when_redis_fails, self.lease_ttl = when_redis_fails, lease_ttl
        self._acquire = redis.register_script(limit_scripts.ACQUIRE)
        self._give_back = redis.register_script(limit_scripts.GIVE_BACK)
        self._release = redis.register_script(limit_scripts.RELEASE)
        self._count_in_window = redis.register_script(limit_scripts.COUNT_IN_WINDOW)
        self._reserve_tokens = redis.register_script(limit_scripts.RESERVE_TOKENS)
        self._settle_tokens = redis.register_script(limit_scripts.SETTLE_TOKENS)
        self.fallback = LocalLimiter(defaults, overrides)
        self.prepay_sizes = self.fallback.prepay_sizes
        self.failures = 0
        self.degraded = False
        self._retry_redis_at = 0.0
        self._keepers: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._stored_waiting: dict[str, int] = defaultdict(int)
        self._flushes: set[asyncio.Task[None]] = set()
        self.on_round_trip: Callable[[str, float], None] = lambda operation, seconds: None
        """Told how long each of the round trips below took (exai_limiter_latency_seconds)."""

    async def _run(self, operation: str, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """One of the limiter's scripts in Redis: one round trip, timed whether or not it succeeds."""
        started = time.perf_counter()
        try:
            return await script(keys=keys, args=args)
        finally:
            self.on_round_trip(operation, time.perf_counter() - started)

    def limits(self, tenant: str) -> Limits:
        return self.overrides.get(tenant, self.defaults)

    def _keys(self, tenant: str, now: float) -> list[str]:
        """The keys of ACQUIRE: the minute's calls, the slots, and the day's tokens and stored text."""
        prefix, day = tenant_keys(tenant), int(now // DAY)
        return [f"{prefix}:rpm", f"{prefix}:slots", f"{prefix}:tokens:{day}", f"{prefix}:stored_text:{day}"]

    def _redis_failed(self, operation: str, exc: RedisError) -> None:
        self.failures += 1
        self.degraded = True
        self._retry_redis_at = time.monotonic() + REDIS_RETRY_SECONDS
        log.error("rate_limiter_redis_error", operation=operation, mode=self.when_redis_fails, error=str(exc))

    def _redis_answered(self) -> None:
        if self.degraded:
            log.info("rate_limiter_redis_recovered")
        self.degraded = False

    def _redis_paused(self) -> bool:
        """While Redis is known to be down, try it again only every few seconds (no connect wait per call)."""
        return self.degraded and time.monotonic() < self._retry_redis_at

    def _refuse_if_closed(self) -> None:
        if self.when_redis_fails == "closed":
            raise _rejected("unavailable", 0, REDIS_RETRY_SECONDS)

    async def acquire(
        self, tenant: str, prepay: int = 0, spends_tokens: bool = True, writes_threads: bool = True
    ) -> Lease:
        if self._redis_paused():
            self._refuse_if_closed()
            return await self.fallback.acquire(tenant, prepay, spends_tokens, writes_threads)
        limits, now, lease = self.limits(tenant), time.time(), Lease(tenant, uuid.uuid4().hex)
        keys = self._keys(tenant, now)
        try:
            verdict, wait, prepaid, used, written = await self._run(
                "acquire",
                self._acquire,
                keys,
                [
                    now,
                    limits.requests_per_minute,
                    limits.concurrent,
                    limits.tokens_per_day,
                    lease.id,
                    self.lease_ttl,
                    uuid.uuid4().hex,
                    prepay,
                    int(spends_tokens),
                    limits.stored_chars_per_day if writes_threads else 0,
                ],
            )
        except self._redis_error as exc:
            self._redis_failed("acquire", exc)
            await to_the_end(self._give_back_quietly(keys[1:3], lease.id, prepay))  # the script may have run
            self._refuse_if_closed()
            return await self.fallback.acquire(tenant, prepay, spends_tokens, writes_threads)
        except BaseException:  # cancelled while the script may already have taken the slot: give it back
            await to_the_end(self._give_back_quietly(keys[1:3], lease.id, prepay))
            raise
        self._redis_answered()
        self.fallback.note_used(tenant, int(used))
        self.fallback.note_stored_text(tenant, int(now // DAY), int(written))
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        if verdict != "ok":
            limit = {
                "rpm": limits.requests_per_minute,
                "concurrency": limits.concurrent,
                "tokens": limits.tokens_per_day,
                "stored_text": limits.stored_chars_per_day,
            }[verdict]
            raise _rejected(verdict, limit, max(0.0, float(wait)))
        lease.id = f"{lease.id}:{int(prepaid)}"  # the slot's member in Redis names what was prepaid with it
        if int(prepaid):
            lease.prepaid = TokenReservation(tenant, int(prepaid), int(now // DAY), local=False)
        stop = asyncio.Event()
        self._keepers[lease.id] = (asyncio.create_task(self._keep_alive(lease, stop)), stop)
        return lease

    async def _give_back_quietly(self, keys: list[str], lease_id: str, prepay: int) -> None:
        with contextlib.suppress(self._redis_error):
            await self._give_back(keys=keys, args=[lease_id, prepay])

    async def _keep_alive(self, lease: Lease, stop: asyncio.Event) -> None:
        """Push the lease's expiry forward while the call runs, so no call outlives its slot. A lease that lapsed
        while Redis was unreachable (longer than its TTL) is added again: the call still runs and counts.

        It ends when `stop` is set, never in the middle of a renewal (`release` waits for it to end, so no renewal
        lands after the release): a cancellation there is not reliably delivered (the Redis client may swallow
        it), which left the release waiting for ever and the keeper renewing (found by an attack round)."""
        slots = self._keys(lease.tenant, 0)[1]
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.lease_ttl / 3)
            if stop.is_set():
                return
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(slots, {lease.id: time.time() + self.lease_ttl})
                    pipe.expire(slots, math.ceil(self.lease_ttl) + 60)
                    await pipe.execute()
            except self._redis_error as exc:
                self._redis_failed("refresh", exc)

    async def release(self, lease: Lease, corrections: Sequence[Correction] = (), stored_chars: int = 0) -> None:
        await to_the_end(self._give_slot_back(lease, corrections, stored_chars))  # a cancelled caller still does

    async def _give_slot_back(self, lease: Lease, corrections: Sequence[Correction], stored_chars: int) -> None:
        stored_chars += self._stored_waiting.pop(lease.tenant, 0)  # what waited goes with it, no round trip of its own
        shared: dict[int, int] = {}  # day: the correction of that day's shared count
        for reservation, used in corrections:
            if reservation.local:  # counted by this replica while Redis was down: corrected there
                await self.fallback.settle(reservation, used)
            else:
                shared[reservation.day] = shared.get(reservation.day, 0) + used - reservation.tokens
        if lease.local:
            await self.fallback.release(lease, stored_chars=stored_chars)
            for day, delta in shared.items():
                await self._correct(lease.tenant, day, delta)
            return
        if kept := self._keepers.pop(lease.id, None):
            keeper, stop = kept
            stop.set()
            # A renewal under way lands before the release; one Redis holds up (a timeout of its own) is not
            # waited for: landing late, it holds the slot one lease at most.
            await asyncio.wait({keeper}, timeout=KEEPER_WAIT_SECONDS)
        if self._redis_paused():  # known to be down: the lease expires within its TTL; the reservation stands
            self.fallback.add_stored_text(lease.tenant, stored_chars)  # counted where the next calls are checked
            return
        now = time.time()
        days = list(shared)
        keys = [self._keys(lease.tenant, 0)[1], *(self._keys(lease.tenant, day * DAY)[2] for day in days)]
        deltas = [shared[day] for day in days]
        if stored_chars:
            keys.append(self._keys(lease.tenant, now)[3])
            deltas.append(stored_chars)
        try:
            totals = await self._run("release", self._release, keys, [lease.id, *deltas])
        except self._redis_error as exc:  # the lease expires by itself within one TTL; the reservation stands
            self._redis_failed("release", exc)
            self.fallback.add_stored_text(lease.tenant, stored_chars)
            return
        today = int(now // DAY)
        for day, total in zip(days, totals[: len(days)], strict=True):
            if day == today:
                self.fallback.note_used(lease.tenant, int(total))
        if stored_chars:
            self.fallback.note_stored_text(lease.tenant, today, int(totals[-1]))

    async def reserve_tokens(self, tenant: str, tokens: int) -> TokenReservation:
        if self._redis_paused():
            self._refuse_if_closed()
            return await self.fallback.reserve_tokens(tenant, tokens)
        limit, now = self.limits(tenant).tokens_per_day, time.time()
        try:
            admitted, used = await self._run(
                "reserve_tokens", self._reserve_tokens, [self._keys(tenant, now)[2]], [tokens, limit]
            )
        except self._redis_error as exc:
            self._redis_failed("reserve_tokens", exc)
            self._refuse_if_closed()
            return await self.fallback.reserve_tokens(tenant, tokens)
        self._redis_answered()
        self.fallback.note_used(tenant, int(used))
        if not admitted:
            raise _rejected("tokens", limit, DAY - now % DAY)
        return TokenReservation(tenant, tokens, int(now // DAY), local=False)

    async def settle(self, reservation: TokenReservation, used: int) -> None:
        if reservation.local:  # counted by this replica while Redis was down: corrected there
            await self.fallback.settle(reservation, used)
            return
        await self._correct(reservation.tenant, reservation.day, used - reservation.tokens)

    async def _correct(self, tenant: str, day: int, delta: int) -> None:
        if self._redis_paused():  # known to be down: the correction is lost, the reservation stands
            return
        try:
            total = await self._run("settle", self._settle_tokens, [self._keys(tenant, day * DAY)[2]], [delta])
        except self._redis_error as exc:  # the correction is lost; the reservation stands
            self._redis_failed("settle", exc)
            return
        if day == int(time.time() // DAY):
            self.fallback.note_used(tenant, int(total))

    def count_stored_later(self, tenant: str, chars: int) -> None:
        if self._redis_paused():
            self.fallback.add_stored_text(tenant, chars)
            return
        self._stored_waiting[tenant] += chars
        if self._stored_waiting[tenant] >= STORED_FLUSH_CHARS:
            self._send_waiting(tenant)

    def _send_waiting(self, tenant: str) -> None:
        """Send what waits to be counted for `tenant` in a round trip of its own, in the background."""
        flush = asyncio.create_task(self._send_stored(tenant, self._stored_waiting.pop(tenant)))
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)

    async def _send_stored(self, tenant: str, chars: int) -> None:
        now = time.time()
        try:
            total = await self._run("stored_text", self._settle_tokens, [self._keys(tenant, now)[3]], [chars])
        except Exception as exc:  # counted here instead: the next calls are checked against it
            if isinstance(exc, self._redis_error):
                self._redis_failed("stored_text", exc)
            else:
                log.exception("stored_text_not_sent", tenant=tenant, chars=chars)
            self.fallback.add_stored_text(tenant, chars)
            return
        self.fallback.note_stored_text(tenant, int(now // DAY), int(total))

    async def close(self) -> None:
        for tenant in list(self._stored_waiting):
            self._send_waiting(tenant)
        if self._flushes:
            await asyncio.wait(self._flushes, timeout=REDIS_RETRY_SECONDS)

    async def open_session(self, tenant: str) -> None:
        await self.count(tenant, "sessions")

    async def task_request(self, tenant: str) -> None:
        await self.count(tenant, "tasks")

    async def count(self, tenant: str, window: Window) -> None:
        if self._redis_paused():
            self._refuse_if_closed()
            await self.fallback.count(tenant, window)
            return
        limit, now = window_limit(self.limits(tenant), window), time.time()
        try:
            verdict, wait = await self._run(
                "count", self._count_in_window, [f"{tenant_keys(tenant)}:{window}"], [now, limit, uuid.uuid4().hex]
            )
        except self._redis_error as exc:
            self._redis_failed(f"count_{window}", exc)
            self._refuse_if_closed()
            await self.fallback.count(tenant, window)
            return
        self._redis_answered()
        if (verdict.decode() if isinstance(verdict, bytes) else verdict) != "ok":
            raise _rejected(window, limit, max(0.0, float(wait)))
