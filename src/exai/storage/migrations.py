"""Versioned schema migrations, one entry per version, written once for each SQL dialect.

PostgreSQL statements keep a `{schema}` placeholder that the store fills with its schema-qualified prefix: names are
qualified in every statement, because a session setting such as `search_path` does not survive a pooler in
transaction mode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


def _both(*statements: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Write a statement once with {json}, {real} and {serial} placeholders for the dialect types.

    Table names are written `{schema}name`: empty for SQLite, left for the PostgreSQL store to fill."""
    sqlite = tuple(
        s.format(json="TEXT", real="REAL", serial="INTEGER PRIMARY KEY AUTOINCREMENT", schema="") for s in statements
    )
    postgres = tuple(
        s.format(json="JSONB", real="DOUBLE PRECISION", serial="BIGSERIAL PRIMARY KEY", schema="{schema}")
        for s in statements
    )
    return sqlite, postgres


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        *_both(
            """CREATE TABLE {schema}threads (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            turn_count INTEGER NOT NULL DEFAULT 0,
            tools {json} NOT NULL,
            state {json} NOT NULL
        )""",
            "CREATE INDEX threads_tenant_updated ON {schema}threads (tenant, updated_at DESC)",
            "CREATE INDEX threads_expires ON {schema}threads (expires_at)",
            """CREATE TABLE {schema}turns (
            thread_id TEXT NOT NULL REFERENCES {schema}threads (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            tool TEXT NOT NULL,
            model TEXT,
            provider TEXT,
            files {json} NOT NULL,
            usage {json} NOT NULL,
            created_at {real} NOT NULL,
            PRIMARY KEY (thread_id, seq)
        )""",
            """CREATE TABLE {schema}audit (
            id {serial},
            time {real} NOT NULL,
            tenant TEXT NOT NULL,
            tool TEXT NOT NULL,
            model TEXT,
            provider TEXT,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cost_usd {real} NOT NULL,
            latency_ms {real} NOT NULL,
            outcome TEXT NOT NULL,
            error_category TEXT,
            correlation_id TEXT NOT NULL,
            thread_id TEXT
        )""",
            "CREATE INDEX audit_time ON {schema}audit (time)",
            "CREATE INDEX audit_tenant_time ON {schema}audit (tenant, time)",
            "CREATE INDEX audit_correlation ON {schema}audit (correlation_id)",
        ),
    ),
    Migration(2, *_both("ALTER TABLE {schema}threads ADD COLUMN version INTEGER NOT NULL DEFAULT 1")),
    Migration(3, *_both("ALTER TABLE {schema}turns ADD COLUMN tokens INTEGER")),
    Migration(
        4,
        *_both(
            """CREATE TABLE {schema}calls (
            id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            tool TEXT NOT NULL,
            status TEXT NOT NULL,
            status_message TEXT,
            owner TEXT NOT NULL,
            lease_until {real} NOT NULL,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            expires_at {real} NOT NULL,
            task BOOLEAN NOT NULL DEFAULT FALSE,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            correlation_id TEXT NOT NULL,
            continuation_id TEXT,
            result {json},
            error {json}
        )""",
            "CREATE INDEX calls_tenant_created ON {schema}calls (tenant, created_at DESC)",
            "CREATE INDEX calls_expires ON {schema}calls (expires_at)",
            "CREATE INDEX calls_working_owner ON {schema}calls (owner) WHERE status = 'working'",
            "CREATE INDEX calls_working_lease ON {schema}calls (lease_until) WHERE status = 'working'",
        ),
    ),
    # Leases are renewed by call id now: no statement looks working calls up by owner, and every record and end
    # paid for keeping this index.
    Migration(5, *_both("DROP INDEX IF EXISTS {schema}calls_working_owner")),
)

LATEST = MIGRATIONS[-1].version
