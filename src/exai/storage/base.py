"""The storage protocol and its records: threads, turns, audit entries and call records.

Two implementations speak it: SQLite (the default, one file) and PostgreSQL (shared by several daemons).
Stores are thin: they read, and they write a thread with its new turns atomically *if* the stored thread is still
at the version the writer read (compare-and-set). The rules (turn numbering, tools, limits, state merge) live in
`exai.conversations`. `append_turns` returns only after the transaction is committed.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field


def new_thread_id() -> str:
    return str(uuid.uuid4())


class ThreadRecord(BaseModel):
    id: str = Field(default_factory=new_thread_id)
    tenant: str
    title: str
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    expires_at: float
    turn_count: int = 0
    tools: list[str] = Field(default_factory=list)
    state: dict[str, Any] = Field(default_factory=dict)  # JSON owned by `exai.conversations.state`
    version: int = 0  # 0: not stored yet; every committed write adds one


class TurnRecord(BaseModel):
    role: str
    content: str
    tool: str
    model: str | None = None
    provider: str | None = None
    files: list[str] = Field(default_factory=list)
    usage: dict[str, int] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    seq: int = 0
    tokens: int | None = None  # of `content`, counted once when the turn is recorded (None: written before that)


class AuditRecord(BaseModel):
    time: float = Field(default_factory=time.time)
    tenant: str
    tool: str
    model: str | None = None
    provider: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    outcome: str
    error_category: str | None = None
    correlation_id: str
    thread_id: str | None = None


CallStatus = Literal["working", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


def new_call_id() -> str:
    """A call's id, also its task id: 128 random bits, so nobody can guess another tenant's."""
    return secrets.token_urlsafe(16)


_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_call_id(value: str) -> bool:
    """Whether `value` could be a call's id (what `new_call_id` makes); anything else names no call, and is not
    sent to the store (a NUL byte made PostgreSQL refuse the query, which read as an outage)."""
    return _CALL_ID.fullmatch(value) is not None


class CallRecord(BaseModel):
    """One call that may ask a model: written before any upstream request, finished with the exact result.

    `result` is the `CallToolResult` the caller gets (wire form); `error` the JSON-RPC error of a call that could
    not finish (its replica died). `owner` runs it and renews `lease_until` while it does; `cancel_requested` is
    set by whichever replica a cancellation reaches, and the owner watches for it.
    """

    id: str = Field(default_factory=new_call_id)
    tenant: str
    tool: str
    status: CallStatus = "working"
    status_message: str | None = None
    owner: str
    lease_until: float
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    expires_at: float
    task: bool = False  # the caller asked for (or was given) a task
    cancel_requested: bool = False
    correlation_id: str = ""
    continuation_id: str | None = None  # the thread the call continues, if any: where to go on after a loss
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def ttl_seconds(self) -> float:
        return self.expires_at - self.created_at


CALL_COLUMNS = (
    "id, tenant, tool, status, status_message, owner, lease_until, created_at, updated_at, expires_at, task, "
    "cancel_requested, correlation_id, continuation_id, result, error"
)


def call_values(call: CallRecord, encode: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A call row in CALL_COLUMNS order; `encode` turns a JSON field into the dialect's value (None stays None)."""
    return (
        call.id,
        call.tenant,
        call.tool,
        call.status,
        call.status_message,
        call.owner,
        call.lease_until,
        call.created_at,
        call.updated_at,
        call.expires_at,
        call.task,
        call.cancel_requested,
        call.correlation_id,
        call.continuation_id,
        None if call.result is None else encode(call.result),
        None if call.error is None else encode(call.error),
    )


@dataclass(frozen=True)
class CallEnd:
    """How a working call ended: its status, message and the result or JSON-RPC error the caller gets."""

    status: CallStatus
    message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class CallCounts:
    """Calls by status, and when the oldest working one started (None: none is working)."""

    by_status: dict[str, int]
    oldest_working: float | None


THREAD_COLUMNS = "id, tenant, title, created_at, updated_at, expires_at, turn_count, tools, state, version"
TURN_COLUMNS = "seq, role, content, tool, model, provider, files, usage, created_at, tokens"
AUDIT_FIELDS = tuple(AuditRecord.model_fields)
THREAD_UPDATE = "title, updated_at, expires_at, turn_count, tools, state, version"
"""What a versioned append rewrites of a thread row, in the order of `thread_update_values`."""


def thread_values(thread: ThreadRecord, encode: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A thread row in THREAD_COLUMNS order; `encode` turns a JSON field into the dialect's value."""
    return (
        thread.id,
        thread.tenant,
        thread.title,
        thread.created_at,
        thread.updated_at,
        thread.expires_at,
        thread.turn_count,
        encode(thread.tools),
        encode(thread.state),
        thread.version,
    )


def thread_update_values(thread: ThreadRecord, expected_version: int, encode: Callable[[Any], Any]) -> tuple[Any, ...]:
    """THREAD_UPDATE's values, then the id and the version the row must still have."""
    values = thread_values(thread, encode)
    return (values[2], *values[4:], thread.id, expected_version)


def turn_values(thread_id: str, turn: TurnRecord, encode: Callable[[Any], Any]) -> tuple[Any, ...]:
    """A turn row: the thread id, then TURN_COLUMNS order."""
    return (
        thread_id,
        turn.seq,
        turn.role,
        turn.content,
        turn.tool,
        turn.model,
        turn.provider,
        encode(turn.files),
        encode(turn.usage),
        turn.created_at,
        turn.tokens,
    )


def audit_filter(tenant: str | None, tool: str | None, since: float | None, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause and parameters of an audit query; `mark` is the dialect's placeholder."""
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    for column, value in (("tenant", tenant), ("tool", tool)):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            params.append(value)
    if since is not None:
        clauses.append(f"time >= {mark}")
        params.append(since)
    return " AND ".join(clauses), params


class ThreadConflict(Exception):
    """The stored thread is no longer at the version the writer read (`gone`: it no longer exists)."""

    def __init__(self, thread_id: str, *, gone: bool) -> None:
        super().__init__(f"thread {thread_id} {'vanished' if gone else 'changed'} since it was read")
        self.thread_id = thread_id
        self.gone = gone


class EndRefused(Exception):
    """The store would not take how a call ended for what it holds (a data error, not an outage): writing the same
    end again cannot help. `reason` names the refusal without quoting anything (a SQLSTATE, an error's type), fit
    for the call's tenant; `detail` is the store's own words, for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


StorageObserver = Callable[[str, float, bool], None]
"""Told of each store operation a call waits for: its name (metrics.STORAGE_OPERATIONS), seconds, and whether it
succeeded."""


class Store(Protocol):
    """What the server needs from durable storage."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Apply pending schema migrations; return the schema version now in place."""
        ...

    async def ping(self) -> None: ...

    async def get_thread(self, thread_id: str) -> ThreadRecord | None: ...

    async def get_turns(self, thread_id: str, after: int = 0) -> list[TurnRecord]:
        """The thread's turns numbered above `after`, in order."""
        ...

    async def read_thread(self, thread_id: str, after: int = 0) -> tuple[ThreadRecord, list[TurnRecord]] | None:
        """The thread and its turns numbered above `after`, in one read (one hop, one snapshot where the store
        has them); None when the thread does not exist."""
        ...

    async def append_turns(self, thread: ThreadRecord, turns: list[TurnRecord], *, expected_version: int) -> None:
        """Write `thread` (as it is after this append) and its new, numbered `turns` in one committed transaction.

        Only if the stored thread is still at `expected_version` (0: the thread is new and is inserted);
        otherwise nothing is written and `ThreadConflict` is raised."""
        ...

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]: ...

    async def write_audit(self, records: list[AuditRecord]) -> None: ...

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]: ...

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        """Delete expired threads and call records (and audit entries older than `audit_before`); return rows
        removed."""
        ...

    async def create_call(self, call: CallRecord) -> None:
        """Insert a new call record, committed before this returns (no record, no upstream request)."""
        ...

    async def finish_call(self, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
        """End a call that is still working (or, for its `owner`, one a sweep ended as lost while the owner still
        held its answer: the answer wins); False when it had already ended otherwise. `EndRefused` when the store
        refuses what the end holds."""
        ...

    async def get_call(self, call_id: str) -> CallRecord | None: ...

    async def list_calls(self, tenant: str, limit: int, before: float | None = None) -> list[CallRecord]:
        """The tenant's calls that were tasks, newest first, created before `before` if given."""
        ...

    async def request_cancel(self, call_id: str, now: float) -> None:
        """Flag a working call for cancellation; its owner sees the flag when it next renews its leases."""
        ...

    async def renew_calls(self, call_ids: Collection[str], lease_until: float) -> list[str]:
        """Extend the leases of these working calls (those a replica runs, by id: a row of its own that it does not
        run expires like any other); return those flagged for cancellation."""
        ...

    async def expire_calls(self, now: float, end: CallEnd, running: Collection[str] = ()) -> list[CallRecord]:
        """End every working call whose lease ran out before `now` with `end`, except those in `running` (a replica
        never declares the calls it runs lost); return them as they were."""
        ...

    async def count_calls(self, now: float) -> CallCounts: ...
