"""PostgreSQL storage (psycopg 3, async, pooled): several daemons share threads through it.

Behind a connection pooler in transaction mode (PgBouncer, Supabase) a connection carries no session state from
one transaction to the next, so nothing here relies on any: every table name is schema-qualified (no
`search_path`), and prepared statements are off.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

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
from exai.storage.batching import WriteBatcher
from exai.storage.migrations import MIGRATIONS

_POSTGRES_UPDATE = ", ".join(f"{column} = %s" for column in THREAD_UPDATE.split(", "))

_MIGRATION_LOCK = 0x4558_4149  # advisory lock id: one daemon migrates at a time
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
POOL_WAIT_SECONDS = 5.0  # a call waits this long for a connection, then fails as `storage` (not at 30 s)


def _row(*placeholders: str) -> str:
    return "(" + ", ".join(placeholders) + ")"


def _typed(*types: str) -> str:
    """A row of placeholders, each cast: where nothing else types a VALUES list (a CTE, or a SELECT from it)."""
    return _row(*(f"%s::{kind}" for kind in types))


_TURN_ROW = _row(*["%s"] * 11)  # typed by the INSERT's columns
_THREAD_ROW = _row(*["%s"] * 10)
_TURN_TYPES = ("integer", "text", "text", "text", "text", "text", "jsonb", "jsonb", "double precision", "integer")
_TYPED_TURN_ROW = _typed("text", *_TURN_TYPES)
"""A turn's values (its thread's id, then TURN_COLUMNS) in a VALUES list that an INSERT does not type."""
_THREAD_UPDATE_ROW = _typed(
    "text", "double precision", "double precision", "integer", "jsonb", "jsonb", "integer", "text", "integer"
)
"""`thread_update_values`: THREAD_UPDATE, then the id and the version the row must still have."""
_SET_APPENDED = ", ".join(f"{column} = appended.{column}" for column in THREAD_UPDATE.split(", "))
_CALL_ROW = _typed(*["text"] * 6, *["double precision"] * 4, "boolean", "boolean", "text", "text", "jsonb", "jsonb")
_END_ROW = _typed("text", "text", "jsonb", "jsonb", "double precision", "text", "text")


ENDS_PER_STATEMENT = 1_000
"""Call ends written by one statement (7 parameters each, of PostgreSQL's 65,535); more go in several."""


def _ends_written(count: int) -> str:
    """How `count` calls ended, each written only over a working row (or over the row of a call this replica found
    lost while it still held the answer: the answer wins); the ids written come back."""
    return (
        "UPDATE {schema}calls AS stored SET status = ended.status, status_message = ended.message, "
        "result = ended.result, error = ended.error, updated_at = ended.at "
        f"FROM (VALUES {', '.join([_END_ROW] * count)}) AS ended (status, message, result, error, at, id, owner) "
        "WHERE stored.id = ended.id AND (stored.status = 'working' "
        "OR (stored.status = 'failed' AND stored.owner = ended.owner AND stored.result IS NULL)) RETURNING stored.id"
    )


Appended = Literal["added", "changed", "gone"]


_ONE_ITEMS_FAULT = ("22", "23", "40", "54")
"""SQLSTATE classes one item of a batch can cause: data exception, integrity constraint violation, transaction
rollback (a deadlock or serialization failure: rows locked in another order by another writer), program limit
exceeded."""


def refused_for_content(exc: Exception) -> bool:
    """Whether a batch may have failed for what one of its items holds, so that writing each alone isolates it:
    an error of those SQLSTATE classes, or one raised before anything was sent (data the driver cannot send, an
    error of ours while building the statement). Not a lost connection, a pool timeout, a read-only standby or a
    missing table: those fail every item alike."""
    if not isinstance(exc, psycopg.Error):
        return True
    if exc.sqlstate is None:  # the driver's own: its connection (operational), or the data it was given
        return not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return exc.sqlstate[:2] in _ONE_ITEMS_FAULT


_REFUSED_CLASSES = ("22", "23", "54")
"""SQLSTATE classes of what a write holds, not of the database's state: data exception, integrity constraint
violation, program limit exceeded."""


def refused_for_good(exc: Exception) -> bool:
    """Whether PostgreSQL refused a write, sent alone, for what it holds, so that sending it again cannot succeed: an
    error of `_REFUSED_CLASSES`, or data the driver itself cannot send (its `DataError`, with no SQLSTATE). Nothing
    else: a transport fault, a closed store or an error of ours may pass next time, and an end given up for good is
    an answer thrown away."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        return exc.sqlstate[:2] in _REFUSED_CLASSES
    return isinstance(exc, psycopg.DataError)


def as_end_refused(exc: psycopg.Error) -> EndRefused:
    """The refusal with its SQLSTATE (or the driver error's type) for the tenant, and PostgreSQL's primary message
    for the log (it may quote a few bytes of the data)."""
    if exc.sqlstate:
        return EndRefused(f"SQLSTATE {exc.sqlstate}", exc.diag.message_primary or type(exc).__name__)
    return EndRefused(type(exc).__name__, str(exc))


_BATCHING: dict[str, Any] = {"limit": 4, "one_item_may_be_at_fault": refused_for_content}
"""Four batched writes of one kind on their way at once: calls up to four at a time write alone, as before, and a
slow statement holds up no other write while three more can go."""
_THREAD_FIELDS = THREAD_COLUMNS.split(", ")
_TURN_FIELDS = TURN_COLUMNS.split(", ")
_THREAD_JSON = ("tools", "state")
"""The thread's JSON columns: sent and decoded once, on the first line, not again on every turn's."""
_THREAD_AND_TURNS = (
    "SELECT "
    + ", ".join(
        f"CASE WHEN turn.seq IS NULL OR turn.seq = %(after)s + 1 THEN thread.{c} END AS {c}"
        if c in _THREAD_JSON
        else f"thread.{c}"
        for c in _THREAD_FIELDS
    )
    + f", {', '.join(f'turn.{c} AS turn_{c}' for c in _TURN_FIELDS)} "
    "FROM {schema}threads AS thread LEFT JOIN {schema}turns AS turn "
    "ON turn.thread_id = thread.id AND turn.seq > %(after)s AND turn.seq <= thread.turn_count "
    "WHERE thread.id = %(id)s ORDER BY turn.seq"
)
"""A thread's row with its turns after a given one and up to the row's turn count (a turn committed after the
row was read is left for the next read, as `conversations.threads` expects); the row's columns repeat on each
turn's line, but for its JSON, which the first line alone carries."""
AUTOCOMMIT = True
PREPARE_THRESHOLD = None  # no prepared statements: poolers may swap backends


def _flat(rows: Iterable[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(value for row in rows for value in row)


class PostgresStore:
    name = "postgresql"

    def __init__(
        self, url: str, schema: str | None = None, max_connections: int = 20, wait_seconds: float = POOL_WAIT_SECONDS
    ) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.url = url
        self.schema = schema
        self._prefix = f'"{schema}".' if schema else ""  # the name is checked above: quoting it is enough
        self._pool = AsyncConnectionPool[AsyncConnection[DictRow]](
            url,
            connection_class=AsyncConnection[DictRow],
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=wait_seconds,
            kwargs={"autocommit": AUTOCOMMIT, "prepare_threshold": PREPARE_THRESHOLD, "row_factory": dict_row},
        )
        self._new_calls = WriteBatcher(self._insert_calls, **_BATCHING)
        self._ends = WriteBatcher(self._write_ends, key=lambda end: end[0], **_BATCHING)
        self._new_threads = WriteBatcher(
            self._insert_threads, max_batch=16, size=lambda item: 10 + 11 * len(item[1]), **_BATCHING
        )
        self._appends = WriteBatcher(
            self._append_to_threads,
            max_batch=16,
            key=lambda item: item[0].id,
            size=lambda item: 9 + 11 * len(item[1]),
            **_BATCHING,
        )

    def _sql(self, statement: str) -> Any:
        """A statement with `{schema}` before each table name, qualified with this store's schema."""
        return statement.format(schema=self._prefix)

    async def open(self) -> None:
        # One connection first: a database that cannot be reached fails at once with the driver's reason, where the
        # pool would retry for its whole timeout and then say only that it timed out.
        async with await AsyncConnection.connect(
            self.url, connect_timeout=10, autocommit=AUTOCOMMIT, prepare_threshold=PREPARE_THRESHOLD
        ) as conn:
            if self.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await self._pool.open(wait=True, timeout=10)

    async def close(self) -> None:
        for batcher in (self._new_calls, self._ends, self._new_threads, self._appends):
            await batcher.close()
        await self._pool.close()

    async def migrate(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                self._sql("CREATE TABLE IF NOT EXISTS {schema}schema_version (version INTEGER NOT NULL)")
            )
            row = await (
                await conn.execute(self._sql("SELECT MAX(version) AS v FROM {schema}schema_version"))
            ).fetchone()
            current = (row or {}).get("v") or 0
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.postgres:
                    await conn.execute(self._sql(statement))
                await conn.execute(
                    self._sql("INSERT INTO {schema}schema_version (version) VALUES (%s)"), (migration.version,)
                )
                current = migration.version
            return current

    async def ping(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self._sql(f"SELECT {THREAD_COLUMNS} FROM {{schema}}threads WHERE id = %s"), (thread_id,)
            )
            row = await cursor.fetchone()
        return ThreadRecord(**row) if row else None

    async def get_turns(self, thread_id: str, after: int = 0) -> list[TurnRecord]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self._sql(f"SELECT {TURN_COLUMNS} FROM {{schema}}turns WHERE thread_id = %s AND seq > %s ORDER BY seq"),
                (thread_id, after),
            )
            return [TurnRecord(**row) for row in await cursor.fetchall()]

    async def read_thread(self, thread_id: str, after: int = 0) -> tuple[ThreadRecord, list[TurnRecord]] | None:
        """The row and its turns after `after`, in one statement (one snapshot, one round trip: in a transaction
        the same two reads took four); the first line carries the whole row, and a thread with no new turns is one
        line without a turn."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self._sql(_THREAD_AND_TURNS), {"after": after, "id": thread_id})
            rows = await cursor.fetchall()
        if not rows:
            return None
        record = ThreadRecord(**{column: rows[0][column] for column in _THREAD_FIELDS})
        turns = [
            TurnRecord(**{column: row[f"turn_{column}"] for column in _TURN_FIELDS})
            for row in rows
            if row["turn_seq"] is not None
        ]
        return record, turns

    async def append_turns(self, thread: ThreadRecord, turns: list[TurnRecord], *, expected_version: int) -> None:
        """The thread row and its turns in one statement, batched with other threads' appends: one round trip and
        one commit (a transaction around separate statements took four, which cost more than the WAL flush)."""
        if expected_version == 0:
            await self._new_threads.write((thread, turns))
            return
        appended = await self._appends.write((thread, turns, expected_version))
        if appended != "added":
            raise ThreadConflict(thread.id, gone=appended == "gone")

    async def _insert_threads(self, threads: list[tuple[ThreadRecord, list[TurnRecord]]]) -> list[None]:
        statement = f"INSERT INTO {{schema}}threads ({THREAD_COLUMNS}) VALUES {', '.join([_THREAD_ROW] * len(threads))}"
        turns = [turn_values(thread.id, turn, Jsonb) for thread, added in threads for turn in added]
        if turns:
            statement = (
                f"WITH thread AS ({statement}) INSERT INTO {{schema}}turns (thread_id, {TURN_COLUMNS}) "
                f"VALUES {', '.join([_TURN_ROW] * len(turns))}"
            )
        params = (*_flat(thread_values(thread, Jsonb) for thread, _ in threads), *_flat(turns))
        async with self._pool.connection() as conn:
            await conn.execute(self._sql(statement), params)
        return [None] * len(threads)

    async def _append_to_threads(self, appends: list[tuple[ThreadRecord, list[TurnRecord], int]]) -> list[Appended]:
        """Versioned appends: each thread's turns are inserted only if its update found the row at the expected
        version, and the answer says, per thread, which happened (a thread appears once per batch)."""
        ordered = sorted(appends, key=lambda append: append[0].id)  # rows locked in one order by every writer
        turns = [turn_values(thread.id, turn, Jsonb) for thread, added, _ in ordered for turn in added]
        added = (
            f", added AS (INSERT INTO {{schema}}turns (thread_id, {TURN_COLUMNS}) SELECT turn.* "
            f"FROM (VALUES {', '.join([_TYPED_TURN_ROW] * len(turns))}) AS turn (thread_id, {TURN_COLUMNS}) "
            "WHERE turn.thread_id IN (SELECT id FROM bumped))"
            if turns
            else ""
        )
        statement = (
            f"WITH appended ({THREAD_UPDATE}, id, expected) AS "
            f"(VALUES {', '.join([_THREAD_UPDATE_ROW] * len(ordered))}), "
            f"bumped AS (UPDATE {{schema}}threads AS thread SET {_SET_APPENDED} FROM appended "
            f"WHERE thread.id = appended.id AND thread.version = appended.expected RETURNING thread.id){added} "
            "SELECT appended.id, appended.id IN (SELECT id FROM bumped) AS bumped, "
            "EXISTS (SELECT 1 FROM {schema}threads AS thread WHERE thread.id = appended.id) AS present FROM appended"
        )
        params = (*_flat(thread_update_values(thread, version, Jsonb) for thread, _, version in ordered), *_flat(turns))
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(self._sql(statement), params)).fetchall()
        found: dict[str, Appended] = {
            row["id"]: "added" if row["bumped"] else "changed" if row["present"] else "gone" for row in rows
        }
        return [found.get(thread.id, "gone") for thread, _, _ in appends]

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self._sql(
                    f"SELECT {THREAD_COLUMNS} FROM {{schema}}threads WHERE tenant = %s "
                    "ORDER BY updated_at DESC LIMIT %s"
                ),
                (tenant, limit),
            )
            return [ThreadRecord(**row) for row in await cursor.fetchall()]

    async def write_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        columns = ", ".join(AUDIT_FIELDS)
        marks = ", ".join("%s" for _ in AUDIT_FIELDS)
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                self._sql(f"INSERT INTO {{schema}}audit ({columns}) VALUES ({marks})"),
                [tuple(getattr(r, f) for f in AUDIT_FIELDS) for r in records],
            )

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        where, params = audit_filter(tenant, tool, since, "%s")
        query = f"SELECT {', '.join(AUDIT_FIELDS)} FROM {{schema}}audit WHERE {where} ORDER BY time DESC LIMIT %s"
        async with self._pool.connection() as conn:
            cursor = await conn.execute(self._sql(query), (*params, limit))
            return [AuditRecord(**row) for row in await cursor.fetchall()]

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            removed = (
                await conn.execute(self._sql("DELETE FROM {schema}threads WHERE expires_at < %s"), (now,))
            ).rowcount
            removed += (
                await conn.execute(
                    self._sql("DELETE FROM {schema}calls WHERE expires_at < %s AND status != 'working'"), (now,)
                )
            ).rowcount
            if audit_before is not None:
                removed += (
                    await conn.execute(self._sql("DELETE FROM {schema}audit WHERE time < %s"), (audit_before,))
                ).rowcount
            return removed

    async def create_call(self, call: CallRecord) -> None:
        """Committed without waiting for the WAL flush (batched with other calls' records): the row is visible to
        every replica at once (a task can be read as soon as it is returned), and what must survive a crash is the
        finished call (`finish_call` waits for the flush as usual). A database crash in the ~0.6 s before the flush
        would forget a working call, whose client then gets "unknown task" instead of "lost"."""
        await self._new_calls.write(call)

    async def _insert_calls(self, calls: list[CallRecord]) -> list[None]:
        async with self._pool.connection() as conn:
            await conn.execute(
                self._sql(
                    f"INSERT INTO {{schema}}calls ({CALL_COLUMNS}) SELECT call.* "
                    "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS unflushed, "
                    f"(VALUES {', '.join([_CALL_ROW] * len(calls))}) AS call"
                ),
                _flat(call_values(call, Jsonb) for call in calls),
            )
        return [None] * len(calls)

    @staticmethod
    def _end_values(call_id: str, end: CallEnd, now: float, owner: str | None = None) -> tuple[Any, ...]:
        result, error = (None if v is None else Jsonb(v) for v in (end.result, end.error))
        return (end.status, end.message, result, error, now, call_id, owner)

    async def finish_call(self, call_id: str, end: CallEnd, now: float, owner: str | None = None) -> bool:
        try:
            return await self._ends.write((call_id, end, now, owner))
        except psycopg.Error as exc:
            if refused_for_good(exc):
                raise as_end_refused(exc) from exc
            raise

    async def _write_ends(self, ends: list[tuple[str, CallEnd, float, str | None]]) -> list[bool]:
        async with self._pool.connection() as conn:
            written = await self._end_calls(conn, [self._end_values(*end) for end in ends])
        return [end[0] in written for end in ends]

    async def _end_calls(self, conn: AsyncConnection[DictRow], ends: list[tuple[Any, ...]]) -> set[str]:
        """Write `_end_values` rows, in order of their ids (every writer locks rows in one order: no deadlock
        between batches), at most ENDS_PER_STATEMENT to a statement; the ids written."""
        ends = sorted(ends, key=lambda values: values[5])
        written: set[str] = set()
        for first in range(0, len(ends), ENDS_PER_STATEMENT):
            chunk = ends[first : first + ENDS_PER_STATEMENT]
            cursor = await conn.execute(self._sql(_ends_written(len(chunk))), _flat(chunk))
            written.update(row["id"] for row in await cursor.fetchall())
        return written

    async def get_call(self, call_id: str) -> CallRecord | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self._sql(f"SELECT {CALL_COLUMNS} FROM {{schema}}calls WHERE id = %s"), (call_id,)
            )
            row = await cursor.fetchone()
        return CallRecord(**row) if row else None

    async def list_calls(self, tenant: str, limit: int, before: float | None = None) -> list[CallRecord]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self._sql(
                    f"SELECT {CALL_COLUMNS} FROM {{schema}}calls WHERE tenant = %s AND task AND created_at < %s "
                    "ORDER BY created_at DESC LIMIT %s"
                ),
                (tenant, float("inf") if before is None else before, limit),
            )
            return [CallRecord(**row) for row in await cursor.fetchall()]

    async def request_cancel(self, call_id: str, now: float) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                self._sql(
                    "UPDATE {schema}calls SET cancel_requested = TRUE, updated_at = %s "
                    "WHERE id = %s AND status = 'working'"
                ),
                (now, call_id),
            )

    async def renew_calls(self, call_ids: Collection[str], lease_until: float) -> list[str]:
        """Rows another statement holds (a call's end being written) are skipped, not waited for: they are ending,
        and waiting on them in another order than a batch of ends locks them in could deadlock with it."""
        if not call_ids:
            return []
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self._sql(
                    "UPDATE {schema}calls SET lease_until = %s WHERE id IN (SELECT id FROM {schema}calls "
                    "WHERE id = ANY(%s) AND status = 'working' ORDER BY id FOR UPDATE SKIP LOCKED) "
                    "RETURNING id, cancel_requested"
                ),
                (lease_until, list(call_ids)),
            )
            return [row["id"] for row in await cursor.fetchall() if row["cancel_requested"]]

    async def expire_calls(self, now: float, end: CallEnd, running: Collection[str] = ()) -> list[CallRecord]:
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                self._sql(
                    f"SELECT {CALL_COLUMNS} FROM {{schema}}calls WHERE status = 'working' AND lease_until < %s "
                    "AND NOT (id = ANY(%s)) ORDER BY id FOR UPDATE SKIP LOCKED"
                ),
                (now, list(running)),
            )
            lost = [CallRecord(**row) for row in await cursor.fetchall()]
            await self._end_calls(conn, [self._end_values(call.id, end, now) for call in lost])
            return lost

    async def count_calls(self, now: float) -> CallCounts:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                self._sql(
                    "SELECT status, COUNT(*) AS n, MIN(created_at) AS oldest FROM {schema}calls "
                    "WHERE expires_at >= %s GROUP BY status"
                ),
                (now,),
            )
            rows = await cursor.fetchall()
        oldest = next((row["oldest"] for row in rows if row["status"] == "working"), None)
        return CallCounts({row["status"]: row["n"] for row in rows}, oldest)
