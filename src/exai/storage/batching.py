"""Writes that reach the database while others are on their way go together: one statement, one commit.

The client's side of group commit. A write with room in flight goes at once, by itself, so calls one at a time
pay nothing more; writes that arrive while `limit` are in flight queue, and the first of those to end sends the
whole queue as one batch. Under load one round trip, one statement and one commit serve many calls where each
took its own: at 32 concurrent calls on a 2-core machine a call record cost the daemon and PostgreSQL about a
third of the CPU (`bench/call_record.py`).

Neighbours in a batch never fail for each other: a batch the database refuses for what it holds is written again
item by item, at once (an item it cannot store fails alone, with its own error); a write whose caller is cancelled
while it queues is left out, and one already sent is not torn by its caller's cancellation. Items with the same key
(two appends to one thread) never share a batch: the later one waits for the next.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class WriteBatcher(Generic[Item, Outcome]):
    def __init__(
        self,
        write_many: Callable[[list[Item]], Awaitable[list[Outcome]]],
        *,
        limit: int = 2,
        max_batch: int = 64,
        key: Callable[[Item], Hashable] | None = None,
        size: Callable[[Item], int] | None = None,
        max_size: int = 20_000,
        one_item_may_be_at_fault: Callable[[Exception], bool] = lambda exc: True,
    ) -> None:
        """`write_many` writes its items in one statement and returns one outcome per item, in order; `size` and
        `max_size` bound a batch by its statement's parameters as well as by `max_batch` items. A batch that
        failed is written again item by item only when `one_item_may_be_at_fault` says its error could be one
        item's (not, say, a database that cannot be reached: that fails every item alike)."""
        self._write_many = write_many
        self._limit = limit
        self._max_batch = max_batch
        self._key = key
        self._size = size or (lambda item: 1)
        self._max_size = max_size
        self._one_item_may_be_at_fault = one_item_may_be_at_fault
        self._queue: deque[tuple[Item, asyncio.Future[Outcome]]] = deque()
        self._in_flight = 0
        self._senders: set[asyncio.Task[None]] = set()

    async def write(self, item: Item) -> Outcome:
        if self._in_flight < self._limit and not self._queue:
            self._in_flight += 1  # by itself, in the caller's task: no hand-off on an idle store
            try:
                return (await self._write_many([item]))[0]
            finally:
                self._in_flight -= 1
                self._send_queued()
        waiter: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((item, waiter))
        self._send_queued()
        return await waiter

    async def close(self) -> None:
        """Wait for the batches on their way (their callers wait for them too)."""
        while self._senders:
            await asyncio.gather(*self._senders, return_exceptions=True)

    def _send_queued(self) -> None:
        if self._queue and self._in_flight < self._limit:
            self._in_flight += 1
            sender = asyncio.create_task(self._drain())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _drain(self) -> None:
        try:
            while batch := self._next_batch():
                await self._send(batch)
        finally:
            self._in_flight -= 1

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Outcome]]]:
        batch: list[tuple[Item, asyncio.Future[Outcome]]] = []
        keys: set[Hashable] = set()
        later: list[tuple[Item, asyncio.Future[Outcome]]] = []
        size = 0
        while self._queue and len(batch) < self._max_batch:
            item, waiter = self._queue[0]
            if batch and size + self._size(item) > self._max_size:
                break
            self._queue.popleft()
            if waiter.done():  # its caller was cancelled while it queued
                continue
            if self._key is not None:
                key = self._key(item)
                if key in keys:
                    later.append((item, waiter))
                    continue
                keys.add(key)
            batch.append((item, waiter))
            size += self._size(item)
        self._queue.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._outcomes([item for item, _ in batch])
        except BaseException:  # cancelled (the loop is closing): nobody may wait for ever
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(RuntimeError("the store closed before this write was sent"))
            raise
        for (_, waiter), outcome in zip(batch, outcomes, strict=True):
            if waiter.done():
                continue
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)

    async def _outcomes(self, items: list[Item]) -> list[Outcome | BaseException]:
        try:
            return list(await self._write_many(items))
        except Exception as exc:
            if len(items) == 1 or not self._one_item_may_be_at_fault(exc):
                return [exc] * len(items)
        # One item the database cannot take must not fail the others: each alone, all at once.
        return await asyncio.gather(*(self._write_one(item) for item in items), return_exceptions=True)

    async def _write_one(self, item: Item) -> Outcome:
        return (await self._write_many([item]))[0]
