"""SQLite storage: one file, WAL mode, every write committed before the call returns.

Reads, audit batches, purges and migrations run on one dedicated thread, one whole operation (a transaction) per
hop, so the event loop never waits on them. A thread's new turns are committed on the event loop itself, on a
connection of its own that never waits for a lock: the write takes tens of microseconds, while the hop to the
store's thread and back cost ~1.6 ms per call in the daemon (exai_storage_latency_seconds, 2-core machine under
load: the thread waits for the interpreter lock while the loop keeps serving). When another connection holds the
write lock, the write is handed to the store's thread, which waits for it. That connection never checkpoints the
WAL either (the store's thread does, after audit batches), so no file sync happens on the loop.
`synchronous=NORMAL` in WAL mode keeps every committed transaction across a killed process (the WAL is in the
OS's hands once `COMMIT` returns); only a power loss could take the last ones.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from exai.storage.base import (
    AUDIT_FIELDS,
    CALL_COLUMNS,
    THREAD_COLUMNS,
    THREAD_UPDATE,
    TURN_COLUMNS,
    AuditRecord,
    CallCounts,
    CallEnd,
    CallRecord,
    EndRefused,
    ThreadConflict,
    ThreadRecord,
    TurnRecord,
    audit_filter,
    call_values,
    thread_update_values,
    thread_values,
    turn_values,
)
from exai.storage.migrations import MIGRATIONS

WAL_SIZE_LIMIT = 64 * 1024 * 1024


def _json(value: Any) -> str:
    """As stored: UTF-8 text as it is (escaped, an emoji took 12 bytes instead of 4); escaped only when the value
    holds what UTF-8 cannot carry (a lone surrogate from an upstream's JSON)."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


_REFUSED_ERRORS = (sqlite3.DataError, sqlite3.IntegrityError, OverflowError)
"""What a write fails with for the data it holds (too big for SQLite or for its C interface, a constraint), not for
the database's state: the same write again fails again."""

_SQLITE_UPDATE = ", ".join(f"{column} = ?" for column in THREAD_UPDATE.split(", "))

T = TypeVar("T")


def _thread(row: Any) -> ThreadRecord:
    record = dict(zip(THREAD_COLUMNS.split(", "), row, strict=True))
    return ThreadRecord(**{**record, "tools": json.loads(record["tools"]), "state": json.loads(record["state"])})


def _turn(row: Any) -> TurnRecord:
    record = dict(zip(TURN_COLUMNS.split(", "), row, strict=True))
    return TurnRecord(**{**record, "files": json.loads(record["files"]), "usage": json.loads(record["usage"])})


def _call(row: Any) -> CallRecord:
    record = dict(zip(CALL_COLUMNS.split(", "), row, strict=True))
    for column in ("result", "error"):
        if record[column] is not None:
            record[column] = json.loads(record[column])
    return CallRecord(**record)


def _insert_call(db: sqlite3.Connection, call: CallRecord) -> None:
    with _transaction(db, immediate=True):
        db.execute(f"INSERT INTO calls ({CALL_COLUMNS}) VALUES ({', '.join('?' * 16)})", call_values(call, _json))


def _finish_call(db: sqlite3.Connection, call_id: str, end: CallEnd, now: float, owner: str | None) -> bool:
    with _transaction(db, immediate=True):
        return _finish_call_in(db, call_id, end, now, owner)


def _finish_call_in(db: sqlite3.Connection, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
    return (
        db.execute(
            "UPDATE calls SET status = ?, status_message = ?, result = ?, error = ?, updated_at = ? "
            "WHERE id = ? AND (status = 'working' OR (status = 'failed' AND owner = ? AND result IS NULL))",
            (
                end.status,
                end.message,
                None if end.result is None else _json(end.result),
                None if end.error is None else _json(end.error),
                now,
                call_id,
                owner,
            ),
        ).rowcount
        == 1
    )


def _write(db: sqlite3.Connection, thread: ThreadRecord, turns: list[TurnRecord], expected_version: int) -> None:
    """Insert the new thread, or update it if it is still at `expected_version`; then add its turns."""
    if expected_version == 0:
        db.execute(
            f"INSERT INTO threads ({THREAD_COLUMNS}) VALUES ({', '.join('?' * 10)})", thread_values(thread, _json)
        )
    else:
        updated = db.execute(
            f"UPDATE threads SET {_SQLITE_UPDATE} WHERE id = ? AND version = ?",
            thread_update_values(thread, expected_version, _json),
        ).rowcount
        if updated == 0:
            exists = db.execute("SELECT 1 FROM threads WHERE id = ?", (thread.id,)).fetchone()
            raise ThreadConflict(thread.id, gone=exists is None)
    db.executemany(
        f"INSERT INTO turns (thread_id, {TURN_COLUMNS}) VALUES ({', '.join('?' * 11)})",
        [turn_values(thread.id, t, _json) for t in turns],
    )


def _append(db: sqlite3.Connection, thread: ThreadRecord, turns: list[TurnRecord], expected_version: int) -> None:
    with _transaction(db, immediate=True):
        _write(db, thread, turns, expected_version)


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "foreign_keys=ON",
        f"busy_timeout={busy_timeout_ms}",
        f"journal_size_limit={WAL_SIZE_LIMIT}",  # a checkpoint cuts the WAL back to this, whatever it grew to
    ):
        db.execute(f"PRAGMA {pragma}")
    return db


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # an extended code (e.g. BUSY_SNAPSHOT): its low byte is the kind
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None  # the event loop's: turn commits, never waits for a lock
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
            self._db = _connect(self.path, busy_timeout_ms=5000)
            self._writer = _connect(self.path, busy_timeout_ms=0)
            self._writer.execute("PRAGMA wal_autocheckpoint=0")

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
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
            lambda db: db.execute(f"SELECT {THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)).fetchone()
        )
        return _thread(row) if row else None

    async def get_turns(self, thread_id: str, after: int = 0) -> list[TurnRecord]:
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT {TURN_COLUMNS} FROM turns WHERE thread_id = ? AND seq > ? ORDER BY seq", (thread_id, after)
            ).fetchall()
        )
        return [_turn(row) for row in rows]

    async def read_thread(self, thread_id: str, after: int = 0) -> tuple[ThreadRecord, list[TurnRecord]] | None:
        def read(db: sqlite3.Connection) -> tuple[Any, list[Any]] | None:
            with _transaction(db):  # one snapshot: the row and the turns agree
                row = db.execute(f"SELECT {THREAD_COLUMNS} FROM threads WHERE id = ?", (thread_id,)).fetchone()
                if row is None:
                    return None
                turns = db.execute(
                    f"SELECT {TURN_COLUMNS} FROM turns WHERE thread_id = ? AND seq > ? ORDER BY seq", (thread_id, after)
                ).fetchall()
                return row, turns

        found = await self._run(read)
        return (_thread(found[0]), [_turn(row) for row in found[1]]) if found else None

    async def _on_loop(self, write: Callable[[sqlite3.Connection], T]) -> T:
        """A short write committed on the event loop's own connection; handed to the store's thread (which waits
        for the lock) when another connection holds it."""
        if self._writer is None:
            raise RuntimeError("SQLiteStore used before open()")
        try:
            return write(self._writer)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        return await self._run(write)

    async def append_turns(self, thread: ThreadRecord, turns: list[TurnRecord], *, expected_version: int) -> None:
        await self._on_loop(lambda db: _append(db, thread, turns, expected_version))

    async def create_call(self, call: CallRecord) -> None:
        await self._on_loop(lambda db: _insert_call(db, call))

    async def finish_call(self, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
        try:
            return await self._on_loop(lambda db: _finish_call(db, call_id, end, now, owner))
        except _REFUSED_ERRORS as exc:
            raise EndRefused(type(exc).__name__, str(exc)) from exc

    async def get_call(self, call_id: str) -> CallRecord | None:
        row = await self._run(
            lambda db: db.execute(f"SELECT {CALL_COLUMNS} FROM calls WHERE id = ?", (call_id,)).fetchone()
        )
        return _call(row) if row else None

    async def list_calls(self, tenant: str, limit: int, before: float | None = None) -> list[CallRecord]:
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT {CALL_COLUMNS} FROM calls WHERE tenant = ? AND task AND created_at < ? "
                "ORDER BY created_at DESC LIMIT ?",
                (tenant, float("inf") if before is None else before, limit),
            ).fetchall()
        )
        return [_call(row) for row in rows]

    async def request_cancel(self, call_id: str, now: float) -> None:
        def flag(db: sqlite3.Connection) -> None:
            with _transaction(db, immediate=True):
                db.execute(
                    "UPDATE calls SET cancel_requested = TRUE, updated_at = ? WHERE id = ? AND status = 'working'",
                    (now, call_id),
                )

        await self._run(flag)

    async def renew_calls(self, call_ids: Collection[str], lease_until: float) -> list[str]:
        ids = json.dumps(list(call_ids))

        def renew(db: sqlite3.Connection) -> list[str]:
            with _transaction(db, immediate=True):
                db.execute(
                    "UPDATE calls SET lease_until = ? WHERE id IN (SELECT value FROM json_each(?)) "
                    "AND status = 'working'",
                    (lease_until, ids),
                )
                rows = db.execute(
                    "SELECT id FROM calls WHERE id IN (SELECT value FROM json_each(?)) AND status = 'working' "
                    "AND cancel_requested",
                    (ids,),
                ).fetchall()
            return [row[0] for row in rows]

        return await self._run(renew)

    async def expire_calls(self, now: float, end: CallEnd, running: Collection[str] = ()) -> list[CallRecord]:
        ids = json.dumps(list(running))

        def expire(db: sqlite3.Connection) -> list[CallRecord]:
            with _transaction(db, immediate=True):
                rows = db.execute(
                    f"SELECT {CALL_COLUMNS} FROM calls WHERE status = 'working' AND lease_until < ? "
                    "AND id NOT IN (SELECT value FROM json_each(?))",
                    (now, ids),
                ).fetchall()
                for row in rows:
                    _finish_call_in(db, row[0], end, now)
            return [_call(row) for row in rows]

        return await self._run(expire)

    async def count_calls(self, now: float) -> CallCounts:
        def count(db: sqlite3.Connection) -> CallCounts:
            rows = db.execute(
                "SELECT status, COUNT(*), MIN(created_at) FROM calls WHERE expires_at >= ? GROUP BY status", (now,)
            ).fetchall()
            oldest = next((row[2] for row in rows if row[0] == "working"), None)
            return CallCounts({row[0]: row[1] for row in rows}, oldest)

        return await self._run(count)

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]:
        rows = await self._run(
            lambda db: db.execute(
                f"SELECT {THREAD_COLUMNS} FROM threads WHERE tenant = ? ORDER BY updated_at DESC LIMIT ?",
                (tenant, limit),
            ).fetchall()
        )
        return [_thread(row) for row in rows]

    async def write_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        columns = ", ".join(AUDIT_FIELDS)
        marks = ", ".join("?" for _ in AUDIT_FIELDS)

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(
                    f"INSERT INTO audit ({columns}) VALUES ({marks})",
                    [tuple(getattr(r, f) for f in AUDIT_FIELDS) for r in records],
                )

        await self._run(write)

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        where, params = audit_filter(tenant, tool, since, "?")
        query = f"SELECT {', '.join(AUDIT_FIELDS)} FROM audit WHERE {where} ORDER BY time DESC LIMIT ?"
        rows = await self._run(lambda db: db.execute(query, (*params, limit)).fetchall())
        return [AuditRecord(**dict(zip(AUDIT_FIELDS, row, strict=True))) for row in rows]

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        def purge(db: sqlite3.Connection) -> int:
            with _transaction(db):
                removed = db.execute("DELETE FROM threads WHERE expires_at < ?", (now,)).rowcount
                removed += db.execute("DELETE FROM calls WHERE expires_at < ? AND status != 'working'", (now,)).rowcount
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
