"""The storage protocol and its records: threads, turns and audit entries.

Two implementations speak it: SQLite (the default, one file) and PostgreSQL (shared by several daemons).
`append_turns` is the write on the request path; it returns only after the transaction is committed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

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
    state: dict[str, Any] = Field(default_factory=dict)


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


def audit_filter(tenant: str | None, tool: str | None, since: float | None, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause and parameters of an audit query; `mark` is the dialect's placeholder."""
    clauses, params = ["1 = 1"], []
    for column, value in (("tenant", tenant), ("tool", tool)):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            params.append(value)
    if since is not None:
        clauses.append(f"time >= {mark}")
        params.append(since)
    return " AND ".join(clauses), params


class ThreadConflict(Exception):
    """The thread changed or vanished between read and write."""


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

    async def get_turns(self, thread_id: str) -> list[TurnRecord]: ...

    async def append_turns(
        self,
        thread_id: str,
        turns: list[TurnRecord],
        *,
        tool: str,
        state: dict[str, Any] | None,
        expires_at: float,
        create: ThreadRecord | None = None,
    ) -> ThreadRecord:
        """Add turns (numbered after the existing ones) and update the thread, in one committed transaction.

        With `create`, the thread itself is inserted in the same transaction (its first turns)."""
        ...

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]: ...

    async def write_audit(self, records: list[AuditRecord]) -> None: ...

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]: ...

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        """Delete expired threads (and audit entries older than `audit_before`); return rows removed."""
        ...
