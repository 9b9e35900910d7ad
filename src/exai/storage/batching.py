"""Writes that reach the database while others are on their way go together: one statement, one commit.

The client's side of group commit. A write with room in flight goes at once, by itself, so calls one at a time
pay nothing more; writes that arrive while `limit` are in flight queue, and the first of those to end sends the
whole queue as one batch. Under load one round trip, one statement and one commit serve many calls where each
took its own: 32 calls at once on a 2-core machine cost the store's client and PostgreSQL about half the CPU per
call (`bench/call_record.py`).

Neighbours in a batch never fail for each other: a batch refused for what one item holds
(`one_item_may_be_at_fault`) is written again item by item, at once, so that item fails alone with its own error.
A batch that failed for every item alike (a database that cannot be reached) fails, with it, the writes queued
since before it was sent: they would each wait out the same failure in turn (those queued since get their own
attempt, so a write waits about two of the pool's waits at most, not one per batch ahead of it). A write whose
caller is cancelled while it queues is left out; one sent in a batch is not torn by its caller's cancellation. Items
with the same key (two appends to one thread) never share a batch: the later one waits for the next. An item's key
and size are read in its caller's task, before it queues: an item that cannot say them fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


@dataclass
class _Queued(Generic[Item, Outcome]):
    item: Item
    key: Hashable
    size: int
    since: float = field(default_factory=time.monotonic)
    waiter: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class StoreClosed(RuntimeError):
    """The store closed while a write waited for its batch, or was on its way (then it may have been kept)."""


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
        item's."""
        self._write_many = write_many
        self._limit = limit
        self._max_batch = max_batch
        self._key = key
        self._size = size or (lambda item: 1)
        self._max_size = max_size
        self._one_item_may_be_at_fault = one_item_may_be_at_fault
        self._queue: deque[_Queued[Item, Outcome]] = deque()
        self._in_flight = 0
        self._senders: set[asyncio.Task[None]] = set()

    async def write(self, item: Item) -> Outcome:
        queued = _Queued[Item, Outcome](item, self._key(item) if self._key else None, self._size(item))
        if self._in_flight < self._limit and not self._queue:
            self._in_flight += 1  # by itself, in the caller's task: no hand-off on an idle store
            try:  # a failure here fails no queued write: every one queued after this one was sent
                return (await self._write_many([item]))[0]
            finally:
                self._in_flight -= 1
                self._send_queued()
        self._queue.append(queued)
        self._send_queued()
        return await queued.waiter

    async def close(self) -> None:
        """Wait for the batches on their way (their callers wait for them too); a close that is itself cancelled
        leaves them to finish."""
        while self._senders:
            await asyncio.shield(asyncio.gather(*self._senders, return_exceptions=True))

    def _send_queued(self) -> None:
        if self._queue and self._in_flight < self._limit:
            self._in_flight += 1
            sender = asyncio.create_task(self._drain())
            self._senders.add(sender)
            sender.add_done_callback(self._sender_done)

    def _sender_done(self, sender: asyncio.Task[None]) -> None:
        """Counted here, not in the drain's `finally`: a task cancelled before it first ran never reaches that."""
        self._senders.discard(sender)
        self._in_flight -= 1
        if sender.cancelled():
            self._fail_queued(StoreClosed("the store closed before this write was sent"))
        else:
            self._send_queued()

    async def _drain(self) -> None:
        while batch := self._next_batch():
            await self._send(batch)

    def _next_batch(self) -> list[_Queued[Item, Outcome]]:
        batch: list[_Queued[Item, Outcome]] = []
        keys: set[Hashable] = set()
        later: list[_Queued[Item, Outcome]] = []
        size = 0
        while self._queue and len(batch) < self._max_batch:
            queued = self._queue[0]
            if batch and size + queued.size > self._max_size:
                break
            self._queue.popleft()
            if queued.waiter.done():  # its caller was cancelled while it queued
                continue
            if queued.key is not None and queued.key in keys:
                later.append(queued)
                continue
            keys.add(queued.key)
            batch.append(queued)
            size += queued.size
        self._queue.extendleft(reversed(later))
        return batch

    async def _send(self, batch: list[_Queued[Item, Outcome]]) -> None:
        try:
            outcomes = await self._outcomes([queued.item for queued in batch], time.monotonic())
        except asyncio.CancelledError:
            for queued in batch:
                if not queued.waiter.done():
                    queued.waiter.set_exception(StoreClosed("the store closed while this write was on its way"))
            raise
        for queued, outcome in zip(batch, outcomes, strict=True):
            if queued.waiter.done():
                continue
            if isinstance(outcome, BaseException):
                queued.waiter.set_exception(outcome)
            else:
                queued.waiter.set_result(outcome)

    async def _outcomes(self, items: list[Item], sent: float) -> list[Outcome | BaseException]:
        try:
            return list(await self._write_many(items))
        except Exception as exc:
            if len(items) > 1 and self._one_item_may_be_at_fault(exc):
                return await asyncio.gather(*(self._write_one(item) for item in items), return_exceptions=True)
            self._failed_for_all(exc, sent)
            return [exc] * len(items)

    async def _write_one(self, item: Item) -> Outcome:
        return (await self._write_many([item]))[0]

    def _failed_for_all(self, error: Exception, sent: float) -> None:
        """A write sent at `sent` failed, not for what it held: the writes queued since before then fail with it at
        once, having waited as long, instead of each waiting out the same failure (a pool's wait, a dead
        connection) one batch after another. Those queued since get their own attempt: a pool that was only busy
        may have a connection for them."""
        if not self._one_item_may_be_at_fault(error):
            self._fail_queued(error, since_before=sent)

    def _fail_queued(self, error: BaseException, since_before: float = float("inf")) -> None:
        kept: list[_Queued[Item, Outcome]] = []
        while self._queue:
            queued = self._queue.popleft()
            if queued.since > since_before:
                kept.append(queued)
            elif not queued.waiter.done():
                queued.waiter.set_exception(error)
        self._queue.extend(kept)
