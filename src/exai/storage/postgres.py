"""PostgreSQL storage (psycopg 3, async, pooled): several daemons share threads through it.

Behind a connection pooler in transaction mode (PgBouncer, Supabase) a connection carries no session state from
one transaction to the next, so nothing here relies on any: every table name is schema-qualified (no
`search_path`), and prepared statements are off.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from exai.storage.base import (
    AUDIT_FIELDS,
    THREAD_COLUMNS,
    THREAD_UPDATE,
    TURN_COLUMNS,
    AuditRecord,
    ThreadConflict,
    ThreadRecord,
    TurnRecord,
    audit_filter,
    thread_update_values,
    thread_values,
    turn_values,
)
from exai.storage.migrations import MIGRATIONS

_POSTGRES_UPDATE = ", ".join(f"{column} = %s" for column in THREAD_UPDATE.split(", "))

_MIGRATION_LOCK = 0x4558_4149  # advisory lock id: one daemon migrates at a time
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
POOL_WAIT_SECONDS = 5.0  # a call waits this long for a connection, then fails as `storage` (not at 30 s)
_CONNECTION = {"autocommit": True, "prepare_threshold": None}  # no prepared statements: poolers may swap backends


class PostgresStore:
    name = "postgresql"

    def __init__(self, url: str, schema: str | None = None, max_connections: int = 10) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.url = url
        self.schema = schema
        self._prefix = f'"{schema}".' if schema else ""  # the name is checked above: quoting it is enough
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=POOL_WAIT_SECONDS,
            kwargs={**_CONNECTION, "row_factory": dict_row},
        )

    def _sql(self, statement: str) -> Any:
        """A statement with `{schema}` before each table name, qualified with this store's schema."""
        return statement.format(schema=self._prefix)

    async def open(self) -> None:
        # One connection first: a database that cannot be reached fails at once with the driver's reason, where the
        # pool would retry for its whole timeout and then say only that it timed out.
        async with await AsyncConnection.connect(self.url, connect_timeout=10, **_CONNECTION) as conn:
            if self.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await self._pool.open(wait=True, timeout=10)

    async def close(self) -> None:
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
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                self._sql(f"SELECT {THREAD_COLUMNS} FROM {{schema}}threads WHERE id = %s"), (thread_id,)
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            cursor = await conn.execute(
                self._sql(f"SELECT {TURN_COLUMNS} FROM {{schema}}turns WHERE thread_id = %s AND seq > %s ORDER BY seq"),
                (thread_id, after),
            )
            return ThreadRecord(**row), [TurnRecord(**turn) for turn in await cursor.fetchall()]

    async def append_turns(self, thread: ThreadRecord, turns: list[TurnRecord], *, expected_version: int) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            if expected_version == 0:
                await conn.execute(
                    self._sql(f"INSERT INTO {{schema}}threads ({THREAD_COLUMNS}) VALUES ({', '.join(['%s'] * 10)})"),
                    thread_values(thread, Jsonb),
                )
            else:
                updated = await conn.execute(
                    self._sql(f"UPDATE {{schema}}threads SET {_POSTGRES_UPDATE} WHERE id = %s AND version = %s"),
                    thread_update_values(thread, expected_version, Jsonb),
                )
                if updated.rowcount == 0:
                    exists = await conn.execute(self._sql("SELECT 1 FROM {schema}threads WHERE id = %s"), (thread.id,))
                    raise ThreadConflict(thread.id, gone=await exists.fetchone() is None)
            async with conn.cursor() as cur:
                await cur.executemany(
                    self._sql(
                        f"INSERT INTO {{schema}}turns (thread_id, {TURN_COLUMNS}) VALUES ({', '.join(['%s'] * 11)})"
                    ),
                    [turn_values(thread.id, t, Jsonb) for t in turns],
                )

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
            if audit_before is not None:
                removed += (
                    await conn.execute(self._sql("DELETE FROM {schema}audit WHERE time < %s"), (audit_before,))
                ).rowcount
            return removed
