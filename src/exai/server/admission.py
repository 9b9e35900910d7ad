"""Admission control: a per-replica bound on the calls that run and wait, refused at once (and cheaply) beyond it.

Without it, an overload is discovered late: calls pile up on the provider slots, the database pool and the
event loop until they fail at their deadlines, many after their prompt already reached (and was paid to) the
upstream. Here at most EXAI_MAX_CALLS_IN_FLIGHT calls that ask a model run at once on this replica; up to
EXAI_MAX_CALLS_WAITING more wait, first come first served, for at most EXAI_ADMISSION_QUEUE_SECONDS; any other is
refused at once with an `overloaded` error carrying `retry_in_seconds`, before any storage or upstream work.
Tools that ask no model are cheap and never queued, so `status` answers during an overload.

It also knows when the replica is draining (after SIGTERM: /readyz answers 503), and cuts the calls still running
when the grace period ends with a typed `unavailable` error that tells the caller to retry elsewhere.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from exai.errors import OverloadedError, UnavailableError

RETRY_IN_SECONDS = 1.0
"""What a refused caller is told to wait: calls on a loaded replica finish (and free room) within about that."""


class Admission:
    """The calls running and waiting on this replica, and the bound on both."""

    def __init__(self, capacity: int, queue: int, queue_seconds: float) -> None:
        self.capacity, self.queue, self.queue_seconds = capacity, queue, queue_seconds
        self.running = 0
        self.draining = False
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._calls: set[anyio.CancelScope] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def saturation(self) -> float:
        """How full the replica is, 0..1: 1 means the next call that asks a model is refused."""
        return min(1.0, (self.running + self.waiting) / (self.capacity + self.queue))

    @asynccontextmanager
    async def slot(self, queued: bool = True) -> AsyncIterator[None]:
        """Hold a place among the running calls for the body, or raise `OverloadedError` (`queued=False`: no limit).

        A body still running when the shutdown cuts the calls (`cut`) ends with `UnavailableError`.
        """
        with anyio.CancelScope() as scope:
            self._calls.add(scope)
            try:
                if not queued:
                    yield
                else:
                    await self._enter()
                    try:
                        yield
                    finally:
                        self._leave()
            finally:
                self._calls.discard(scope)
        if scope.cancelled_caught:
            raise UnavailableError(
                "This server is shutting down and could not finish the call within its grace period.",
                code="shutting_down",
                remedy=f"Send the call again in {RETRY_IN_SECONDS:g} s (nothing retries it for you): another "
                "replica, or this one once restarted, takes it.",
                details={"retry_in_seconds": RETRY_IN_SECONDS},
            )

    def cut(self) -> int:
        """End every call still running (the grace period is over); how many there were."""
        for scope in self._calls:
            scope.cancel()
        return len(self._calls)

    async def _enter(self) -> None:
        if self.running < self.capacity and not self._waiting:
            self.running += 1
            return
        if len(self._waiting) >= self.queue:
            raise self._refusal(f"{self.running} calls are running and {self.waiting} waiting, the most it admits")
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            async with asyncio.timeout(self.queue_seconds):
                await turn
        except BaseException as exc:
            if turn.done() and not turn.cancelled():  # handed a place just as the wait ended
                if isinstance(exc, TimeoutError):
                    return
                self._leave()
                raise
            if isinstance(exc, TimeoutError):
                raise self._refusal(f"no call finished within {self.queue_seconds:g} s of waiting") from None
            raise
        finally:
            if turn in self._waiting:
                self._waiting.remove(turn)

    def _leave(self) -> None:
        """Hand the place to the longest-waiting call, or free it."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1

    def _refusal(self, why: str) -> OverloadedError:
        return OverloadedError(
            f"This server is at capacity: {why}. Nothing was sent to a model.",
            code="overloaded",
            remedy=f"Retry in {RETRY_IN_SECONDS:g} s (another replica may take it at once); the operator can raise "
            "EXAI_MAX_CALLS_IN_FLIGHT or add replicas.",
            details={"retry_in_seconds": RETRY_IN_SECONDS},
        )
