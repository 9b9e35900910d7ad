"""Conversation threads: start, continue (per tenant, with TTL and turn limits) and record turns."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from exai.observability.errors import NotFoundError, ValidationError
from exai.providers.types import GenerateResponse
from exai.storage.base import Store, ThreadConflict, ThreadRecord, TurnRecord

START_OVER = "Call the tool again without continuation_id to start a new thread; the `threads` tool lists yours."


@dataclass
class Thread:
    record: ThreadRecord
    turns: list[TurnRecord] = field(default_factory=list)
    is_new: bool = False

    @property
    def id(self) -> str:
        return self.record.id


StorageObserver = Callable[[str, float, bool], None]


class Conversations:
    def __init__(
        self, store: Store, ttl_seconds: float, max_turns: int, on_storage: StorageObserver | None = None
    ) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.max_turns = max_turns
        self.on_storage = on_storage

    @asynccontextmanager
    async def _timed(self, operation: str) -> AsyncIterator[None]:
        started, ok = time.perf_counter(), False
        try:
            yield
            ok = True
        finally:
            if self.on_storage is not None:
                self.on_storage(operation, time.perf_counter() - started, ok)

    async def start(self, tenant: str, title: str) -> Thread:
        now = time.time()
        record = ThreadRecord(
            tenant=tenant, title=_title(title), created_at=now, updated_at=now, expires_at=now + self.ttl
        )
        return Thread(record, [], is_new=True)  # stored with its first turns, in one transaction

    async def open(self, continuation_id: str, tenant: str) -> Thread:
        """The caller's thread; unknown, foreign and expired ids are all clear errors, never a new thread."""
        try:
            uuid.UUID(continuation_id)
        except ValueError:
            raise ValidationError(
                f"continuation_id '{continuation_id[:60]}' is not a thread id.",
                code="invalid_continuation_id",
                remedy=START_OVER,
                details={"field": "continuation_id"},
            ) from None
        async with self._timed("get_thread"):
            record = await self.store.get_thread(continuation_id)
        if record is None or record.tenant != tenant:
            raise NotFoundError(
                f"Thread {continuation_id} does not exist.",
                code="thread_not_found",
                remedy=START_OVER,
                details={"field": "continuation_id"},
            )
        if record.expires_at < time.time():
            raise NotFoundError(
                f"Thread {continuation_id} expired (threads live {self.ttl / 3600:g} h after their last turn).",
                code="thread_expired",
                remedy=START_OVER,
                details={"field": "continuation_id"},
            )
        if record.turn_count >= self.max_turns:
            raise ValidationError(
                f"Thread {continuation_id} reached its limit of {self.max_turns} turns.",
                code="thread_full",
                remedy="Start a new thread (call without continuation_id), summarising what matters from this one.",
                details={"field": "continuation_id"},
            )
        async with self._timed("get_turns"):
            turns = await self.store.get_turns(continuation_id)
        return Thread(record, turns)

    async def open_or_start(self, continuation_id: str | None, tenant: str, title: str) -> Thread:
        if continuation_id:
            return await self.open(continuation_id, tenant)
        return await self.start(tenant, title)

    async def record(
        self, thread: Thread, turns: list[TurnRecord], tool: str, state: dict[str, Any] | None = None
    ) -> ThreadRecord:
        """Commit the turns; only after this returns may the response be sent."""
        try:
            async with self._timed("append_turns"):
                record = await self.store.append_turns(
                    thread.id,
                    turns,
                    tool=tool,
                    state=state,
                    expires_at=time.time() + self.ttl,
                    create=thread.record if thread.is_new else None,
                )
        except ThreadConflict:
            raise NotFoundError(
                f"Thread {thread.id} was deleted while in use.", code="thread_not_found", remedy=START_OVER
            ) from None
        thread.record, thread.is_new = record, False
        thread.turns.extend(turns)
        return record

    async def list(self, tenant: str, limit: int) -> list[ThreadRecord]:
        now = time.time()
        return [t for t in await self.store.list_threads(tenant, limit) if t.expires_at >= now]


def answer_turn(tool: str, response: GenerateResponse) -> TurnRecord:
    """The turn that keeps a model's answer, with who gave it and what it cost."""
    return TurnRecord(
        role="assistant",
        content=response.text,
        tool=tool,
        model=response.model,
        provider=response.provider,
        usage={"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens},
    )


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line[:80] + ("…" if len(line) > 80 else "") or "(untitled)"
