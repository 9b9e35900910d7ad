"""SQLite storage: one file, WAL mode, every write committed before the call returns.

`synchronous=NORMAL` in WAL mode keeps every committed transaction across a killed process (the WAL is in the
OS's hands once `COMMIT` returns); only a power loss could take the last ones.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiosqlite

from exai.storage.base import AuditRecord, ThreadConflict, ThreadRecord, TurnRecord
from exai.storage.migrations import MIGRATIONS

_THREAD_COLUMNS = "id, tenant, title, created_at, updated_at, expires_at, turn_count, tools, state"
_AUDIT_FIELDS = tuple(AuditRecord.model_fields)


def _thread(row: Any) -> ThreadRecord:
    return ThreadRecord(
        id=row[0],
        tenant=row[1],
        title=row[2],
        created_at=row[3],
        updated_at=row[4],
        expires_at=row[5],
        turn_count=row[6],
        tools=json.loads(row[7]),
        state=json.loads(row[8]),
    )


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one connection: transactions must not interleave

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("SQLiteStore used before open()")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
            await self._db.execute(f"PRAGMA {pragma}")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def migrate(self) -> int:
        async with self._lock:
            await self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            async with self.db.execute("SELECT MAX(version) FROM schema_version") as cursor:
                current = (await cursor.fetchone())[0] or 0
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in migration.sqlite:
                        await self.db.execute(statement)
                    await self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))
                    await self.db.execute("COMMIT")
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise
                current = migration.version
            return current

    async def ping(self) -> None:
        async with self._lock, self.db.execute("SELECT 1") as cursor:
            await cursor.fetchone()

    async def create_thread(self, thread: ThreadRecord) -> None:
        async with self._lock:
            await self.db.execute(
                f"INSERT INTO threads ({_THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    thread.id,
                    thread.tenant,
                    thread.title,
                    thread.created_at,
                    thread.updated_at,
                    thread.expires_at,
                    thread.turn_count,
                    json.dumps(thread.tools),
                    json.dumps(thread.state),
                ),
            )

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        async with (
            self._lock,
            self.db.execute(f"SELECT {_THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)) as cursor,
        ):
            row = await cursor.fetchone()
        return _thread(row) if row else None

    async def get_turns(self, thread_id: str) -> list[TurnRecord]:
        async with (
            self._lock,
            self.db.execute(
                "SELECT seq, role, content, tool, model, provider, files, usage, created_at FROM turns "
                "WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [
            TurnRecord(
                seq=r[0],
                role=r[1],
                content=r[2],
                tool=r[3],
                model=r[4],
                provider=r[5],
                files=json.loads(r[6]),
                usage=json.loads(r[7]),
                created_at=r[8],
            )
            for r in rows
        ]

    async def append_turns(
        self, thread_id: str, turns: list[TurnRecord], *, tool: str, state: dict[str, Any] | None, expires_at: float
    ) -> ThreadRecord:
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                async with self.db.execute(
                    f"SELECT {_THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    raise ThreadConflict(thread_id)
                thread = _thread(row)
                for offset, turn in enumerate(turns, start=1):
                    turn.seq = thread.turn_count + offset
                await self.db.executemany(
                    "INSERT INTO turns (thread_id, seq, role, content, tool, model, provider, files, usage, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            thread_id,
                            t.seq,
                            t.role,
                            t.content,
                            t.tool,
                            t.model,
                            t.provider,
                            json.dumps(t.files),
                            json.dumps(t.usage),
                            t.created_at,
                        )
                        for t in turns
                    ],
                )
                thread.turn_count += len(turns)
                thread.tools = thread.tools if tool in thread.tools else [*thread.tools, tool]
                thread.state = state if state is not None else thread.state
                thread.updated_at = max((t.created_at for t in turns), default=thread.updated_at)
                thread.expires_at = expires_at
                await self.db.execute(
                    "UPDATE threads SET turn_count = ?, tools = ?, state = ?, updated_at = ?, expires_at = ? "
                    "WHERE id = ?",
                    (
                        thread.turn_count,
                        json.dumps(thread.tools),
                        json.dumps(thread.state),
                        thread.updated_at,
                        thread.expires_at,
                        thread_id,
                    ),
                )
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return thread

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]:
        async with (
            self._lock,
            self.db.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE tenant = ? ORDER BY updated_at DESC LIMIT ?",
                (tenant, limit),
            ) as cursor,
        ):
            return [_thread(row) for row in await cursor.fetchall()]

    async def write_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        columns = ", ".join(_AUDIT_FIELDS)
        marks = ", ".join("?" for _ in _AUDIT_FIELDS)
        async with self._lock:
            await self.db.execute("BEGIN")
            try:
                await self.db.executemany(
                    f"INSERT INTO audit ({columns}) VALUES ({marks})",
                    [tuple(getattr(r, f) for f in _AUDIT_FIELDS) for r in records],
                )
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        clauses, params = ["1 = 1"], []
        for column, value in (("tenant", tenant), ("tool", tool)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("time >= ?")
            params.append(since)
        query = f"SELECT {', '.join(_AUDIT_FIELDS)} FROM audit WHERE {' AND '.join(clauses)} ORDER BY time DESC LIMIT ?"
        async with self._lock, self.db.execute(query, (*params, limit)) as cursor:
            rows = await cursor.fetchall()
        return [AuditRecord(**dict(zip(_AUDIT_FIELDS, row, strict=True))) for row in rows]

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        async with self._lock:
            cursor = await self.db.execute("DELETE FROM threads WHERE expires_at < ?", (now,))
            removed = cursor.rowcount
            if audit_before is not None:
                cursor = await self.db.execute("DELETE FROM audit WHERE time < ?", (audit_before,))
                removed += cursor.rowcount
            return removed
