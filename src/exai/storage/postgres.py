"""PostgreSQL storage (psycopg 3, async, pooled): several daemons share threads through it.

Prepared statements are off so connection poolers in transaction mode (Supabase, pgbouncer) work.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from exai.storage.base import AuditRecord, ThreadConflict, ThreadRecord, TurnRecord, audit_filter
from exai.storage.migrations import MIGRATIONS

_THREAD_COLUMNS = "id, tenant, title, created_at, updated_at, expires_at, turn_count, tools, state"
_AUDIT_FIELDS = tuple(AuditRecord.model_fields)
_MIGRATION_LOCK = 0x4558_4149  # advisory lock id: one daemon migrates at a time
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresStore:
    name = "postgresql"

    def __init__(self, url: str, schema: str | None = None, max_connections: int = 10) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.url = url
        self.schema = schema
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            open=False,
            configure=self._configure,
            kwargs={"autocommit": True, "prepare_threshold": None, "row_factory": dict_row},
        )

    async def _configure(self, conn: AsyncConnection[Any]) -> None:
        if self.schema:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    async def open(self) -> None:
        if self.schema:
            async with await AsyncConnection.connect(self.url, autocommit=True) as conn:
                await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        await self._pool.open(wait=True, timeout=10)

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await (await conn.execute("SELECT MAX(version) AS v FROM schema_version")).fetchone()
            current = (row or {}).get("v") or 0
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.postgres:
                    await conn.execute(statement)  # type: ignore[arg-type]
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (migration.version,))
                current = migration.version
            return current

    async def ping(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(f"SELECT {_THREAD_COLUMNS} FROM threads WHERE id = %s", (thread_id,))
            row = await cursor.fetchone()
        return ThreadRecord(**row) if row else None

    async def get_turns(self, thread_id: str) -> list[TurnRecord]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT seq, role, content, tool, model, provider, files, usage, created_at FROM turns "
                "WHERE thread_id = %s ORDER BY seq",
                (thread_id,),
            )
            return [TurnRecord(**row) for row in await cursor.fetchall()]

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
        async with self._pool.connection() as conn, conn.transaction():
            if create is not None:
                await conn.execute(
                    f"INSERT INTO threads ({_THREAD_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        create.id,
                        create.tenant,
                        create.title,
                        create.created_at,
                        create.updated_at,
                        create.expires_at,
                        create.turn_count,
                        Jsonb(create.tools),
                        Jsonb(create.state),
                    ),
                )
            cursor = await conn.execute(f"SELECT {_THREAD_COLUMNS} FROM threads WHERE id = %s FOR UPDATE", (thread_id,))
            row = await cursor.fetchone()
            if row is None:
                raise ThreadConflict(thread_id)
            thread = ThreadRecord(**row)
            for offset, turn in enumerate(turns, start=1):
                turn.seq = thread.turn_count + offset
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO turns (thread_id, seq, role, content, tool, model, provider, files, usage, "
                    "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            thread_id,
                            t.seq,
                            t.role,
                            t.content,
                            t.tool,
                            t.model,
                            t.provider,
                            Jsonb(t.files),
                            Jsonb(t.usage),
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
            await conn.execute(
                "UPDATE threads SET turn_count = %s, tools = %s, state = %s, updated_at = %s, expires_at = %s "
                "WHERE id = %s",
                (
                    thread.turn_count,
                    Jsonb(thread.tools),
                    Jsonb(thread.state),
                    thread.updated_at,
                    thread.expires_at,
                    thread_id,
                ),
            )
        return thread

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE tenant = %s ORDER BY updated_at DESC LIMIT %s",
                (tenant, limit),
            )
            return [ThreadRecord(**row) for row in await cursor.fetchall()]

    async def write_audit(self, records: list[AuditRecord]) -> None:
        if not records:
            return
        columns = ", ".join(_AUDIT_FIELDS)
        marks = ", ".join("%s" for _ in _AUDIT_FIELDS)
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO audit ({columns}) VALUES ({marks})",  # type: ignore[arg-type]
                [tuple(getattr(r, f) for f in _AUDIT_FIELDS) for r in records],
            )

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        where, params = audit_filter(tenant, tool, since, "%s")
        query = f"SELECT {', '.join(_AUDIT_FIELDS)} FROM audit WHERE {where} ORDER BY time DESC LIMIT %s"
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, (*params, limit))  # type: ignore[arg-type]
            return [AuditRecord(**row) for row in await cursor.fetchall()]

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        async with self._pool.connection() as conn:
            removed = (await conn.execute("DELETE FROM threads WHERE expires_at < %s", (now,))).rowcount
            if audit_before is not None:
                removed += (await conn.execute("DELETE FROM audit WHERE time < %s", (audit_before,))).rowcount
            return removed
