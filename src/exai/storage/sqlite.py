"""SQLite storage: one file, WAL mode, every write committed before the call returns.

All database work runs on one dedicated thread, one whole operation (a transaction) per hop, so the event loop
never blocks and operations never interleave. `synchronous=NORMAL` in WAL mode keeps every committed transaction
across a killed process (the WAL is in the OS's hands once `COMMIT` returns); only a power loss could take the
last ones.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from exai.storage.base import AuditRecord, ThreadConflict, ThreadRecord, TurnRecord, audit_filter
from exai.storage.migrations import MIGRATIONS

T = TypeVar("T")
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


def _insert_thread(db: sqlite3.Connection, thread: ThreadRecord) -> None:
    db.execute(
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


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exai-sqlite")

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise RuntimeError("SQLiteStore used before open()")
            return operation(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
                db.execute(f"PRAGMA {pragma}")
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(lambda db: db.close())
            self._db = None
        self._executor.shutdown(wait=False)

    async def migrate(self) -> int:
        def migrate(db: sqlite3.Connection) -> int:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                with _transaction(db):
                    for statement in migration.sqlite:
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (migration.version,))
                current = migration.version
            return current

        return await self._run(migrate)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        row = await self._run(
            lambda db: db.execute(f"SELECT {_THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)).fetchone()
        )
        return _thread(row) if row else None

    async def get_turns(self, thread_id: str) -> list[TurnRecord]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT seq, role, content, tool, model, provider, files, usage, created_at FROM turns "
                "WHERE thread_id = ? ORDER BY seq",
                (thread_id,),
            ).fetchall()
        )
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
        self,
        thread_id: str,
        turns: list[TurnRecord],
        *,
        tool: str,
        state: dict[str, Any] | None,
        expires_at: float,
        create: ThreadRecord | None = None,
    ) -> ThreadRecord:
        def append(db: sqlite3.Connection) -> ThreadRecord:
            with _transaction(db, immediate=True):
                if create is not None:
                    _insert_thread(db, create)
                row = db.execute(f"SELECT {_THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)).fetchone()
                if row is None:
                    raise ThreadConflict(thread_id)
                thread = _thread(row)
                for offset, turn in enumerate(turns, start=1):
                    turn.seq = thread.turn_count + offset
                db.executemany(
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
                db.execute(
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
            return thread

        return await self._run(append)

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]:
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE tenant = ? ORDER BY updated_at DESC LIMIT ?",
                (tenant, limit),
            ).fetchall()
        )
        return [_thread(row) for row in rows]

    async def write_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        columns = ", ".join(_AUDIT_FIELDS)
        marks = ", ".join("?" for _ in _AUDIT_FIELDS)

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(
                    f"INSERT INTO audit ({columns}) VALUES ({marks})",
                    [tuple(getattr(r, f) for f in _AUDIT_FIELDS) for r in records],
                )

        await self._run(write)

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        where, params = audit_filter(tenant, tool, since, "?")
        query = f"SELECT {', '.join(_AUDIT_FIELDS)} FROM audit WHERE {where} ORDER BY time DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(query, (*params, limit)).fetchall())
        return [AuditRecord(**dict(zip(_AUDIT_FIELDS, row, strict=True))) for row in rows]

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        def purge(db: sqlite3.Connection) -> int:
            with _transaction(db):
                removed = db.execute("DELETE FROM threads WHERE expires_at < ?", (now,)).rowcount
                if audit_before is not None:
                    removed += db.execute("DELETE FROM audit WHERE time < ?", (audit_before,)).rowcount
            return removed

        return await self._run(purge)


class _transaction:
    """BEGIN ... COMMIT, or ROLLBACK when the body raises."""

    def __init__(self, db: sqlite3.Connection, immediate: bool = False) -> None:
        self.db, self.begin = db, "BEGIN IMMEDIATE" if immediate else "BEGIN"

    def __enter__(self) -> None:
        self.db.execute(self.begin)

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
