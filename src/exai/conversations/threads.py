"""Conversation threads: start, continue (per tenant, with TTL and turn limits) and record turns.

The rules live here, once, for every store: turn numbering, the tools list, the state version and how
concurrent writers merge. A write is a compare-and-set on the thread's version; when another call committed
first, the thread is read again and this call's turns and state change are applied to the fresh thread, a
bounded number of times. An acknowledged write is therefore never overwritten by a stale one.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from exai.conversations.state import StateChange, ThreadState
from exai.conversations.tokens import count_tokens_async
from exai.conversations.turn_memory import TurnMemory
from exai.errors import Category, ExaiError, InvalidInput, NotFoundError, StorageError
from exai.observability.logging import get_logger
from exai.providers.types import GenerateResponse
from exai.storage.base import StorageObserver, Store, ThreadConflict, ThreadRecord, TurnRecord

log = get_logger(__name__)

START_OVER = "Call the tool again without continuation_id to start a new thread; the `threads` tool lists yours."
WRITE_ATTEMPTS = 20  # compare-and-set attempts before a write is refused as a conflict
RETRY_DELAY_CAP = 0.1


class ThreadBusyError(ExaiError):
    """Other calls kept changing the thread; nothing of this call was kept."""

    category = Category.TOOL
    http_status = 409
    default_retryable = True
    severity = "warning"


@dataclass
class Thread:
    record: ThreadRecord
    turns: list[TurnRecord] = field(default_factory=list)
    state: ThreadState = field(default_factory=ThreadState)

    @property
    def id(self) -> str:
        return self.record.id


class Conversations:
    def __init__(
        self,
        store: Store,
        ttl_seconds: float,
        max_turns: int,
        on_storage: StorageObserver | None = None,
        memory: TurnMemory | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.max_turns = max_turns
        self.on_storage = on_storage
        self.memory = memory or TurnMemory(0)

    @asynccontextmanager
    async def _timed(self, operation: str) -> AsyncIterator[None]:
        started, ok = time.perf_counter(), False
        try:
            yield
            ok = True
        except ExaiError:
            raise
        except Exception as exc:  # whatever the store raised (a pool timeout, a lost connection, a locked file)
            log.exception("storage_failed", operation=operation)  # the cause, for the operator (secrets redacted)
            raise StorageError(
                f"The conversation store failed ({type(exc).__name__} during {operation}); nothing was recorded.",
                code="storage_unavailable",
                remedy="Try again shortly; if it persists, check the database (`exai doctor`, /readyz).",
            ) from exc
        finally:
            if self.on_storage is not None:
                self.on_storage(operation, time.perf_counter() - started, ok)

    async def start(self, tenant: str, title: str) -> Thread:
        now = time.time()
        record = ThreadRecord(
            tenant=tenant, title=_title(title), created_at=now, updated_at=now, expires_at=now + self.ttl
        )
        return Thread(record, [])  # stored with its first turns, in one transaction

    async def read(self, continuation_id: str, tenant: str) -> Thread:
        """The caller's thread with its turns, to show or continue; unknown, foreign and expired ids are errors."""
        if not is_thread_id(continuation_id):
            raise InvalidInput(
                f"continuation_id '{continuation_id[:60]}' is not a thread id.",
                code="invalid_continuation_id",
                remedy=START_OVER,
                details={"field": "continuation_id"},
            )
        found = await self._read(continuation_id)
        if found is None or found.record.tenant != tenant:
            raise _not_found(continuation_id)
        if found.record.expires_at < time.time():
            raise NotFoundError(
                f"Thread {continuation_id} expired (threads live {self.ttl / 3600:g} h after their last turn).",
                code="thread_expired",
                remedy=START_OVER,
                details={"field": "continuation_id"},
            )
        self.memory.keep(found.id, found.turns)
        return found

    async def _read(self, thread_id: str) -> Thread | None:
        """The thread as committed: its row, and of its turns only those from the last one this replica holds on.
        That last turn is compared with the store's: a history the store no longer has (a database restored, or
        failed over to a standby that missed the last commits, after which new turns took the same numbers) is
        dropped and the whole thread read again, never mixed with the store's."""
        known = self.memory.known(thread_id)
        async with self._timed("read_thread"):
            found = await self.store.read_thread(thread_id, after=max(0, len(known) - 1))
            if found is not None and known and not _continues(known, *found):
                log.warning("thread_memory_disagrees", thread_id=thread_id, held_turns=len(known))
                self.memory.forget(thread_id)
                known = ()
                found = await self.store.read_thread(thread_id)
        if found is None:
            self.memory.forget(thread_id)
            return None
        record, turns = found
        return _thread(record, [*known[:-1], *turns])

    async def open(self, continuation_id: str, tenant: str, adding: int = 1) -> Thread:
        """The caller's thread to continue: as `read`, and refused when it has no room for `adding` more turns."""
        thread = await self.read(continuation_id, tenant)
        self.check_room(thread, adding)
        return thread

    async def open_or_start(self, continuation_id: str | None, tenant: str, title: str, adding: int = 1) -> Thread:
        """The thread to continue (with room for `adding` turns, checked before any model is paid for), or a new one."""
        if continuation_id:
            return await self.open(continuation_id, tenant, adding)
        return await self.start(tenant, title)

    def check_room(self, thread: Thread, adding: int) -> None:
        """Refuse a write that would take the thread past its turn limit (call it before asking a model)."""
        if thread.record.turn_count + adding > self.max_turns:
            raise InvalidInput(
                f"Thread {thread.id} has {thread.record.turn_count} of its {self.max_turns} turns; "
                f"this call would add {adding}.",
                code="thread_full",
                remedy="Start a new thread (call without continuation_id), summarising what matters from this one.",
                details={"field": "continuation_id"},
            )

    async def record(
        self,
        thread: Thread,
        turns: list[TurnRecord],
        tool: str,
        change: StateChange | None = None,
        before_write: Callable[[int], None] | None = None,
    ) -> ThreadRecord:
        """Commit the turns (and the state change) on top of whatever is committed now.

        Only after this returns may the response be sent. On a concurrent write the thread is read again and the
        same turns and change are applied to it; after `WRITE_ATTEMPTS` the call is refused (retryable).
        Each turn's tokens are counted here, once, so later prompts never count the history again.
        `before_write` is told, once, just before the first write, how many characters it adds to the thread: its
        turns' text and file names, and what the state change adds to the thread's workflow steps."""
        turns = [
            t if t.tokens is not None else t.model_copy(update={"tokens": await count_tokens_async(t.content)})
            for t in turns
        ]
        for attempt in range(WRITE_ATTEMPTS):
            self.check_room(thread, len(turns))
            state = thread.state.model_copy(deep=True)
            if change is not None:
                change(state, thread.record)
            record, numbered = _next(thread.record, turns, tool, state, expires_at=time.time() + self.ttl)
            if before_write is not None:
                grown = state.stored_chars - thread.state.stored_chars if change is not None else 0
                before_write(sum(len(t.content) + sum(map(len, t.files)) for t in turns) + max(0, grown))
                before_write = None
            conflict: ThreadConflict | None = None
            async with self._timed("append_turns"):
                try:
                    await self.store.append_turns(record, numbered, expected_version=thread.record.version)
                except ThreadConflict as exc:
                    conflict = exc
            if conflict is None:
                continued = thread.record.version > 0  # a new thread is held once continued: most never are
                thread.record, thread.state = record, state
                thread.turns.extend(numbered)
                if continued:
                    self.memory.keep(thread.id, thread.turns)
                return record
            if conflict.gone:
                raise NotFoundError(
                    f"Thread {thread.id} was deleted while in use.", code="thread_not_found", remedy=START_OVER
                )
            await self._refresh(thread)
            await asyncio.sleep(random.uniform(0, min(RETRY_DELAY_CAP, 0.002 * 2**attempt)))
        raise ThreadBusyError(
            f"Thread {thread.id} kept changing under this call ({WRITE_ATTEMPTS} attempts); nothing was recorded.",
            code="conflict",
            remedy="Send the same call again; avoid many simultaneous calls on one thread.",
            details={"continuation_id": thread.id},
        )

    async def _refresh(self, thread: Thread) -> None:
        """Catch up with what other calls committed: the thread row and the turns added since."""
        async with self._timed("read_thread"):
            found = await self.store.read_thread(thread.id, after=thread.record.turn_count)
        if found is None:
            raise _not_found(thread.id)
        fresh = _thread(*found)
        thread.record, thread.state = fresh.record, fresh.state
        thread.turns.extend(fresh.turns)

    async def list(self, tenant: str, limit: int) -> list[ThreadRecord]:
        now = time.time()
        return [t for t in await self.store.list_threads(tenant, limit) if t.expires_at >= now]


def is_thread_id(value: str) -> bool:
    """Whether `value` could name a thread (a UUID, as `start` makes them; `uuid.UUID` alone takes any number of
    hyphens)."""
    if len(value) > 45:  # the longest spelling of a UUID: urn:uuid:<36>
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _continues(known: tuple[TurnRecord, ...], record: ThreadRecord, turns: list[TurnRecord]) -> bool:
    """Whether turns read from the last held one on extend what is held: the row counts at least as many turns, and
    the store's turn of that number is the one held (same time and text)."""
    if not turns or record.turn_count < len(known):
        return False
    held, stored = known[-1], turns[0]
    same_time = abs(held.created_at - stored.created_at) < 1e-6  # a float through a database's text form
    return held.seq == stored.seq and same_time and held.content == stored.content


def _thread(record: ThreadRecord, turns: list[TurnRecord]) -> Thread:
    """A thread as read: turns a later commit added between the two reads are left for the next read."""
    kept = [t for t in turns if t.seq <= record.turn_count]
    return Thread(record, kept, state=ThreadState.model_validate(record.state))


def _next(
    current: ThreadRecord, turns: list[TurnRecord], tool: str, state: ThreadState, expires_at: float
) -> tuple[ThreadRecord, list[TurnRecord]]:
    """The thread after appending `turns` by `tool`, and the turns numbered after the existing ones."""
    numbered = [t.model_copy(update={"seq": current.turn_count + i}) for i, t in enumerate(turns, start=1)]
    record = current.model_copy(
        update={
            "turn_count": current.turn_count + len(turns),
            "tools": current.tools if tool in current.tools else [*current.tools, tool],
            "state": state.model_dump(mode="json"),
            "updated_at": max((t.created_at for t in turns), default=current.updated_at),
            "expires_at": expires_at,
            "version": current.version + 1,
        }
    )
    return record, numbered


def _not_found(thread_id: str) -> NotFoundError:
    return NotFoundError(
        f"Thread {thread_id} does not exist.",
        code="thread_not_found",
        remedy=START_OVER,
        details={"field": "continuation_id"},
    )


def answer_turn(tool: str, response: GenerateResponse) -> TurnRecord:
    """The turn that keeps a model's answer, with who gave it and what it cost."""
    return TurnRecord(
        role="assistant",
        content=response.text,
        tool=tool,
        model=response.model,
        provider=response.provider,
        usage={"input_tokens": response.usage.input_tokens, "output_tokens": response.usage.output_tokens}
        | ({"truncated": 1} if response.truncated else {}),  # the answer was cut at the output limit
    )


def truncation_notice(response: GenerateResponse) -> str:
    """The one line a tool adds to a cut answer, so a reader of the text alone knows."""
    return (
        f"[truncated: {response.model} stopped at its output limit (finish_reason: {response.finish_reason}); "
        "raise max_output_tokens or continue the thread]"
    )


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line[:80] + ("…" if len(line) > 80 else "") or "(untitled)"
