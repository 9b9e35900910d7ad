"""Durable calls: every call that may ask a model is a row first, and runs detached from the request that made it.

The row (`CallRecord`) is committed before any upstream request: if the store cannot take it, the call is refused
with `storage` and nothing is spent. The work then runs as a task of this replica, not of the request, so a client
that stops waiting (a 60 s timeout, a task-aware client that polls, a lost connection that comes back) does not
throw a paid answer away: the exact `CallToolResult` is written to the row when the work ends, and any connection of
the same tenant, on any replica, can collect it.

This replica renews the leases of the calls it runs; a call whose replica died is found by its expired lease (by
any replica, or this one after a restart) and ends `failed` with a message that says the work was lost and how to
go on: it is never run again behind the tenant's back. A cancellation that reaches another replica flags the row;
the owner sees the flag within a second and cuts the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from exai.background import BackgroundLoop
from exai.config import Settings
from exai.errors import (
    CallCancelledError,
    CallLostError,
    NotFoundError,
    RateLimitError,
    StorageError,
)
from exai.observability.logging import get_logger
from exai.server.answers import outcome_result
from exai.server.results import error_result
from exai.storage.base import (
    TERMINAL,
    CallCounts,
    CallEnd,
    CallRecord,
    EndRefused,
    StorageObserver,
    Store,
    is_call_id,
    new_call_id,
)

log = get_logger(__name__)
CANCEL_POLL_SECONDS = 1.0
"""How often a replica running calls looks for cancellations that reached another replica."""
UNRECORDED_RETRY_SECONDS = 2.0
HELD_LOG_SECONDS = 60.0
"""While the store does not take the ends held, how often that is logged (with how many)."""
MAX_UNRECORDED = 10_000
"""Answers kept in memory while the store is down; past this, the newest are only returned to their callers."""
LOST_CODE = -32603
CANCEL_WAIT_SECONDS = 10.0
WAITS_PER_TASK = 2
"""A tenant may have this many waiting requests (`tasks/result`, `collect`) per task it may run."""
FINISH_WAIT_SECONDS = 10.0
"""How long a replica that stops waits for its calls to write how they ended (a store that hangs cannot hold it)."""


def replica_id() -> str:
    """This process: host, pid and a random suffix, so a restarted daemon never mistakes old calls for its own."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{new_call_id()[:6]}"


def result_payload(result: types.CallToolResult) -> dict[str, Any]:
    """The wire form of a result, exactly as the client receives it."""
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def replacement_end(end: CallEnd, reason: str) -> CallEnd:
    """What is written in place of an end the store refused for what it holds: the same status (a task that ended
    never changes status, and a held end may already have been served from memory), with a message saying so; a
    completed call's result becomes the error `storage/answer_not_kept`, for `tasks/result` and `collect`."""
    what = "its answer" if end.status == "completed" else f"how it ended ({end.status})"
    error = StorageError(
        f"This call ended, but the store refused to keep {what} ({reason}).",
        code="answer_not_kept",
        remedy="The request that waited for the call, if one still did, received its answer; otherwise make the "
        "call again.",
        retryable=False,
    )
    result = result_payload(error_result(error)) if end.status == "completed" else None
    return CallEnd(end.status, message=error.message, result=result)


def lost_message(call: CallRecord) -> str:
    how = (
        f"continue the thread with continuation_id {call.continuation_id}"
        if call.continuation_id
        else "call the tool again"
    )
    return (
        f"The daemon that ran this '{call.tool}' call stopped before the answer arrived, so the work was lost "
        f"(it is not run again automatically: that would pay twice). To go on, {how}."
    )


def lost_error(call: CallRecord) -> CallLostError:
    return CallLostError(lost_message(call), code="call_lost", remedy="Call again; nothing of it was recorded.")


def cancelled_error(call: CallRecord) -> CallCancelledError:
    return CallCancelledError(
        f"This '{call.tool}' call was cancelled before it finished.", code="cancelled", remedy="Call the tool again."
    )


def jsonrpc_error(call: CallRecord) -> dict[str, Any]:
    """The JSON-RPC error of a call that could not finish (a failed task)."""
    error = lost_error(call)
    return {"code": LOST_CODE, "message": error.message, "data": error.to_dict()}


def not_found(call_id: str) -> NotFoundError:
    return NotFoundError(
        f"No call or task '{ascii(call_id[:80])[1:-1]}' is known to this server for you (it may have expired).",
        code="unknown_task",
        remedy="Check the id; answers are kept for EXAI_TASK_TTL_SECONDS after the call starts.",
    )


Body = Callable[[Callable[[], Awaitable[None]]], Awaitable[types.CallToolResult]]
"""A call's work: it receives `begin`, which writes the call's record, and must await it before spending."""


@dataclass
class Execution:
    """A call running detached from the request that started it."""

    recorded: asyncio.Future[CallRecord]
    task: asyncio.Task[types.CallToolResult]
    answer: asyncio.Future[types.CallToolResult]
    """The recorded call's result, set as soon as the work returns it: the waiting request sends it while the
    task writes it to the call's row (a caller never waits for the record of an answer it already holds)."""
    answered: Callable[[], bool] = lambda: False
    """Whether the work holds a complete, paid answer and is only finishing (see `cancel`)."""

    def cancel(self) -> bool:
        """Cut the work, unless its answer has arrived: then the call completes with it (kept, and charged, as the
        upstream answered it in full), instead of being recorded cancelled with a paid answer dropped."""
        if self.answered() or self.answer.done():
            return False
        return self.task.cancel()

    async def settled(self, seconds: float) -> bool:
        """Wait up to `seconds` for the answer (or the end of the work); whether `outcome` can be read now."""
        if not self.answer.done() and not self.task.done():
            await asyncio.wait({self.answer, self.task}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        return self.answer.done() or self.task.done()

    async def record(self) -> CallRecord | None:
        """The call's record once written; None when the work ended before it (refused, or the store failed)."""
        either: set[asyncio.Future[Any]] = {self.recorded, self.task}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        return self.recorded.result() if self.recorded.done() and not self.recorded.cancelled() else None

    def outcome(self) -> types.CallToolResult:
        """The answer, or the ended work's result; a call cancelled from elsewhere (a task cancel) says so."""
        if self.answer.done():
            return self.answer.result()
        if self.task.cancelled():
            call = self.recorded.result()
            return error_result(cancelled_error(call))
        return self.task.result()


class CallRunner:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        on_task_event: Callable[[str, CallRecord], None] | None = None,
        on_counts: Callable[[CallCounts], None] | None = None,
        on_storage: StorageObserver | None = None,
    ) -> None:
        self.store = store
        self.owner = replica_id()
        self.lease = settings.call_lease_seconds
        self.ttl = settings.task_ttl_seconds
        self.max_tasks = settings.max_tasks_per_tenant
        self.max_waits = WAITS_PER_TASK * settings.max_tasks_per_tenant
        self.on_task_event = on_task_event or (lambda kind, call: None)
        self.on_counts = on_counts or (lambda counts: None)
        self.on_storage = on_storage or (lambda operation, seconds, ok: None)
        self.counts = CallCounts({}, None)
        self._running: dict[str, Execution] = {}
        self._working_tasks: dict[str, int] = {}  # tenant -> working task calls on this replica
        self._waits: dict[str, int] = {}  # tenant -> `tasks/result` and `collect` requests waiting on this replica
        self._unrecorded: dict[str, CallEnd] = {}
        self._creating: set[str] = set()  # records on their way to the store
        self._upkeep = BackgroundLoop(
            "exai-call-records",
            self._maintain,
            self._maintenance_wait,
            at_once=True,
            failed_event="call_records_maintenance_failed",
        )
        self._last_sweep = 0.0
        self._closing = False
        self._round = asyncio.Lock()  # one round of writing held ends at a time
        self._told_held = 0.0  # when the ends still held were last logged

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._upkeep.start()

    async def finish_running(self, seconds: float) -> None:
        """Give the calls still running (no request waits for them any more) up to `seconds` to finish and record
        their answers; `close` then records the rest as lost."""
        running = [execution.task for execution in self._running.values()]
        if running:
            log.info("finishing_detached_calls", calls=len(running), grace_seconds=seconds)
            await asyncio.wait(running, timeout=seconds)

    async def close(self) -> None:
        """Stop looking after calls; those still running are cut and recorded as lost (failed), so whoever
        collects them learns that the daemon stopped, not that someone cancelled them."""
        self._closing = True
        running, cut = [], 0
        for execution in self._running.values():
            running.append(execution.task)
            if not execution.answer.done():  # one whose answer went out is only writing it down: let it
                cut += execution.task.cancel()
        if cut:  # what was spent on them is lost: the operator hears of it, not only whoever collects them
            log.warning(
                "calls_cut_at_shutdown",
                calls=cut,
                remedy="each ends as call_lost for its caller; for a daemon (exai serve), a longer "
                "EXAI_SHUTDOWN_GRACE_SECONDS lets such calls finish before it stops",
            )
        if running:
            _, late = await asyncio.wait(running, timeout=FINISH_WAIT_SECONDS)
            if late:  # the store hangs: their rows end as lost, after their lease
                log.warning("calls_not_recorded_at_shutdown", calls=len(late), waited_seconds=FINISH_WAIT_SECONDS)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        try:  # a round under way finishes first (a write torn midway would be written twice), unless the store hangs
            await asyncio.wait_for(self._round.acquire(), FINISH_WAIT_SECONDS)
            waited = True
        except TimeoutError:
            waited = False
        try:
            await self._upkeep.close()
            with contextlib.suppress(TimeoutError):  # every end held, not one first: nothing is tried after this
                await asyncio.wait_for(self._write_held(list(self._unrecorded.items())), FINISH_WAIT_SECONDS)
        finally:
            if waited:
                self._round.release()
        if self._unrecorded:  # their rows end as lost after their lease
            log.error("call_ends_lost_at_shutdown", calls=len(self._unrecorded))

    async def _maintain(self) -> None:
        """Renew leases and watch for cancellations (every second while calls run), end calls whose replica died
        and refresh the counts (every third of a lease), and retry results the store did not take."""
        now = time.time()
        if held := self._held():  # an answer the store has not taken yet keeps its lease too
            for call_id in await self.store.renew_calls(held, now + self.lease):
                self._cancel_local(call_id)
        if self._unrecorded:  # before any sweep: a kept answer must land before its row could expire
            async with self._round:
                await self._record_unrecorded()
        if now - self._last_sweep >= self.lease / 3:
            self._last_sweep = now
            await self.expire_lost(now)
            self.counts = await self.store.count_calls(now)
            self.on_counts(self.counts)

    def _held(self) -> list[str]:
        """The calls this replica answers for: running, holding an answer the store has not taken, or whose record
        is on its way (a slow write may land after its first lease ran out)."""
        return [*self._running, *self._unrecorded, *self._creating]

    def _maintenance_wait(self) -> float:
        return CANCEL_POLL_SECONDS if self._running else min(self.lease / 3, UNRECORDED_RETRY_SECONDS)

    async def expire_lost(self, now: float | None = None) -> list[CallRecord]:
        """End every call whose replica stopped renewing its lease: failed, saying the work was lost."""
        now = time.time() if now is None else now
        end = CallEnd("failed", message="The daemon running this call stopped; the work was lost.")
        lost = await self.store.expire_calls(now, end, self._held())
        for call in lost:
            if call.id in self._running:  # cannot happen while this replica renews; be safe
                continue
            log.warning("call_lost", call_id=call.id, tool=call.tool, tenant=call.tenant, owner=call.owner)
            self.on_task_event("lost", call)
        return lost

    # -- starting and running ------------------------------------------------------------------------------------

    def launch(
        self,
        body: Body,
        *,
        tenant: str,
        tool: str,
        correlation_id: str,
        continuation_id: str | None,
        task: bool,
        ttl_seconds: float | None = None,
        answered: Callable[[], bool] | None = None,
    ) -> Execution:
        """Run `body` detached; its record is written when the body awaits `begin` (storage first). `answered` says
        when the work holds a complete answer and only finishes: a cancellation then lets it complete."""
        loop = asyncio.get_running_loop()
        recorded: asyncio.Future[CallRecord] = loop.create_future()
        answer: asyncio.Future[types.CallToolResult] = loop.create_future()
        ttl = min(self.ttl, ttl_seconds) if ttl_seconds else self.ttl
        counted = False  # this call holds one of the tenant's working tasks

        def uncount() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._forget_task(tenant)

        async def begin() -> None:
            nonlocal counted
            if task and self._working_tasks.get(tenant, 0) >= self.max_tasks:  # counted before any await below
                raise RateLimitError(
                    f"You have {self.max_tasks} tasks working already (EXAI_MAX_TASKS_PER_TENANT).",
                    code="too_many_tasks",
                    remedy="Collect or cancel a task first, or wait for one to finish.",
                    details={"retry_in_seconds": 5.0},
                )
            if task:
                self._working_tasks[tenant] = self._working_tasks.get(tenant, 0) + 1
                counted = True
            now = time.time()
            call = CallRecord(
                tenant=tenant,
                tool=tool,
                owner=self.owner,
                lease_until=now + self.lease,
                created_at=now,
                updated_at=now,
                expires_at=now + ttl,
                task=task,
                correlation_id=correlation_id,
                continuation_id=continuation_id,
            )
            started = time.perf_counter()
            creating = asyncio.ensure_future(self.store.create_call(call))  # its own task: a cancel cannot tear it
            self._creating.add(call.id)
            creating.add_done_callback(lambda _: self._creating.discard(call.id))
            try:
                await asyncio.shield(creating)
            except asyncio.CancelledError:
                uncount()
                await self._cancelled_while_recorded(call, creating)
                raise
            except Exception as exc:
                self.on_storage("create_call", time.perf_counter() - started, False)
                uncount()
                log.exception("storage_failed", operation="create_call", tool=tool)  # the cause, secrets redacted
                raise StorageError(
                    "The call could not be recorded (the store is unavailable), so no model was asked.",
                    code="storage_unavailable",
                    remedy="Try again shortly; nothing was spent. If it persists, check the database "
                    "(`exai doctor`, /readyz).",
                ) from exc
            self.on_storage("create_call", time.perf_counter() - started, True)
            self._running[call.id] = execution
            if task:
                self.on_task_event("created", call)
            recorded.set_result(call)

        async def work() -> types.CallToolResult:
            try:
                return await run()
            finally:
                uncount()
                if recorded.done():
                    self._running.pop(recorded.result().id, None)

        async def run() -> types.CallToolResult:
            try:
                result = await body(begin)
            except asyncio.CancelledError:
                if recorded.done():
                    end = (
                        CallEnd("failed", message="The daemon stopped before the answer arrived.")
                        if self._closing
                        else CallEnd("cancelled", message="Cancelled.")
                    )
                    await asyncio.shield(self._end(recorded.result(), end))  # a second cancel cannot tear it
                raise
            except BaseException:
                if recorded.done():  # whatever broke the work, the row must not stay working
                    failure = CallEnd("failed", message="The call failed inside this server; nothing was kept.")
                    await asyncio.shield(self._end(recorded.result(), failure))
                raise
            if not recorded.done():
                return result
            answer.set_result(result)  # the waiting request answers now, while the row is written
            uncount()  # no longer working for the tenant: its next task may start
            await asyncio.shield(self._end(recorded.result(), CallEnd("completed", result=result_payload(result))))
            return result

        execution = Execution(recorded, loop.create_task(work()), answer, answered or (lambda: False))
        return execution

    async def _cancelled_while_recorded(self, call: CallRecord, creating: asyncio.Future[None]) -> None:
        """A call cancelled while its record was being written: once the row is in (a write sent with others goes
        on), it is ended as cancelled; it would otherwise stay working, renewed by this replica as its own, for ever.
        Nothing was spent. A second cancellation stops the wait; the row then ends as lost after its lease (a replica
        renews only the calls it runs)."""
        try:
            await asyncio.shield(creating)
        except Exception:
            return  # not recorded: nothing to end
        await asyncio.shield(self._end(call, CallEnd("cancelled", message="Cancelled before any model was asked.")))

    def _forget_task(self, tenant: str) -> None:
        left = self._working_tasks.get(tenant, 1) - 1
        if left > 0:
            self._working_tasks[tenant] = left
        else:
            self._working_tasks.pop(tenant, None)

    async def _end(self, call: CallRecord, end: CallEnd) -> None:
        """Write how the call ended; what the store would not take is kept here and retried."""
        started = time.perf_counter()
        try:
            kept = await self._write_end(call.id, end)
        except Exception:
            kept = False
            log.exception("storage_failed", operation="finish_call", call_id=call.id)  # kept here, retried
        self.on_storage("finish_call", time.perf_counter() - started, kept)

    async def _write_end(self, call_id: str, end: CallEnd, *, late: bool = False, replacing: bool = False) -> bool:
        """Write how the call ended; whether the store took it as given. An end the store does not take is kept
        (`_unrecorded`) for the next round and the error raised. An end it refuses for what it holds would be
        refused on every round and keep its call working for ever: `replacement_end` goes in its place (False: the
        answer was not kept), and is given up if the store refuses that too."""
        try:
            written = await self.store.finish_call(call_id, end, time.time(), self.owner)
        except EndRefused as refused:
            if replacing:  # not the answer's content, then: the row's (a trigger, a constraint)
                self._unrecorded.pop(call_id, None)
                log.error("call_end_given_up", call_id=call_id, reason=refused.reason, detail=refused.detail)
                return False
            log.error(
                "call_end_refused", call_id=call_id, status=end.status, reason=refused.reason, detail=refused.detail
            )
            await self._write_end(call_id, replacement_end(end, refused.reason), replacing=True)
            return False
        except Exception:
            if call_id in self._unrecorded or len(self._unrecorded) < MAX_UNRECORDED:
                self._unrecorded[call_id] = end
            raise
        self._unrecorded.pop(call_id, None)
        if not written:
            log.warning("call_already_ended", call_id=call_id, status=end.status)  # e.g. cancelled first
        elif late:
            log.info("call_result_recorded_late", call_id=call_id)
        return True

    async def _record_unrecorded(self) -> None:
        """Write the ends the store did not take. One goes first: while the store is still down a round costs one
        failed write, not one per end (each waiting out the store's timeout, and holding up the reads queued
        behind it). Once it is written the rest go at once, and a store that batches writes sends them together
        (64 ends were 64 statements, one after another). One that failed goes to the back: an end the store
        cannot take for a reason of its own (too large for a statement timeout, say) holds up no other."""
        if not self._unrecorded:
            return
        first, end = next(iter(self._unrecorded.items()))
        try:
            await self._write_end(first, end, late=True)
        except Exception as exc:
            if first in self._unrecorded:
                self._unrecorded[first] = self._unrecorded.pop(first)
            if time.monotonic() - self._told_held >= HELD_LOG_SECONDS:
                self._told_held = time.monotonic()
                log.warning("call_ends_held", calls=len(self._unrecorded), error=f"{type(exc).__name__}: {exc}"[:300])
            return
        await self._write_held(list(self._unrecorded.items()))

    async def _write_held(self, held: list[tuple[str, CallEnd]]) -> None:
        await asyncio.gather(
            *(self._write_end(call_id, end, late=True) for call_id, end in held), return_exceptions=True
        )

    # -- reading, waiting, cancelling ------------------------------------------------------------------------------

    async def get(self, call_id: str, tenant: str, tools: Collection[str] | None = None) -> CallRecord:
        """The tenant's call; another tenant's call is exactly as unknown as one that does not exist. With `tools`
        (those the caller's token may call), a call made by another tool is as unknown too: reading or cancelling
        a call needs a scope that allows the tool that made it."""
        if not is_call_id(call_id):
            raise not_found(call_id)
        started = time.perf_counter()
        try:
            call = await self.store.get_call(call_id)
        except Exception as exc:
            self.on_storage("read_call", time.perf_counter() - started, False)
            log.exception("storage_failed", operation="read_call")  # the cause, secrets redacted
            raise StorageError(
                "The call records could not be read (the store is unavailable).",
                code="storage_unavailable",
                remedy="Try again shortly; the answer is kept.",
            ) from exc
        self.on_storage("read_call", time.perf_counter() - started, True)
        if call is None or call.tenant != tenant or (tools is not None and call.tool not in tools):
            raise not_found(call_id)
        if call.id in self._unrecorded and call.status == "working":  # finished here; the store is behind
            end = self._unrecorded[call.id]
            call = call.model_copy(
                update={"status": end.status, "status_message": end.message, "result": end.result, "error": end.error}
            )
        return call

    async def wait(self, call_id: str, tenant: str, seconds: float) -> CallRecord:
        """The call once it has ended, or as it is after `seconds` (still working). A tenant's waits at once are
        capped: each holds a request open, and a client could otherwise open them without end."""
        if self._waits.get(tenant, 0) >= self.max_waits:
            raise RateLimitError(
                f"You have {self.max_waits} requests waiting for answers already (twice EXAI_MAX_TASKS_PER_TENANT).",
                code="too_many_waits",
                remedy="Wait for one of them to return before asking again.",
                details={"retry_in_seconds": 5.0},
            )
        self._waits[tenant] = self._waits.get(tenant, 0) + 1
        try:
            return await self._wait(call_id, tenant, seconds)
        finally:
            self._waits[tenant] -= 1
            if not self._waits[tenant]:
                del self._waits[tenant]

    async def _wait(self, call_id: str, tenant: str, seconds: float) -> CallRecord:
        deadline = time.monotonic() + seconds
        call = await self.get(call_id, tenant)  # the tenant first: another's id is unknown at once, never waited on
        local = self._running.get(call_id)
        if local is not None and call.status not in TERMINAL:
            await asyncio.wait({local.task}, timeout=max(0.0, seconds))
            call = await self.get(call_id, tenant)
        while call.status not in TERMINAL and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.5, left))
            call = await self.get(call_id, tenant)
        return call

    async def cancel(self, call_id: str, tenant: str) -> CallRecord:
        """Ask for the call to stop: at once when it runs here, through its row when it runs elsewhere."""
        call = await self.get(call_id, tenant)
        if call.status in TERMINAL:
            return call
        local = self._running.get(call_id)
        if local is None:
            await self.store.request_cancel(call_id, time.time())
        elif not local.cancel():  # its answer has arrived: it completes with it
            return call
        self.on_task_event("cancelled", call)
        return call

    async def cancel_and_wait(self, call_id: str, tenant: str) -> CallRecord:
        """Cancel, then the call as it ended (a call on another replica stops within about a second: its owner
        polls for cancellations), or as it is after CANCEL_WAIT_SECONDS when its owner does not answer. Never
        refused for the tenant's cap of waiting requests (it cancelled, then reported the cap as if nothing had
        happened): it ends work instead of asking for more, and its wait is short."""
        await self.cancel(call_id, tenant)
        return await self._wait(call_id, tenant, CANCEL_WAIT_SECONDS)

    def _cancel_local(self, call_id: str) -> None:
        execution = self._running.get(call_id)
        if execution is not None:
            execution.cancel()

    def outcome(self, call: CallRecord) -> types.CallToolResult:
        """An ended call's result as the caller gets it: its own result, or the error that ended it."""
        return outcome_result(call, lost_error(call), cancelled_error(call))

    def collected(self, call: CallRecord) -> None:
        self.on_task_event("collected", call)

    def is_local(self, call_id: str) -> bool:
        return call_id in self._running

    @property
    def running(self) -> int:
        return len(self._running)
