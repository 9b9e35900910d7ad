"""Opening the store at start (`exai serve`, `stdio`, `db upgrade`, `audit`): a failure is one sentence and a fix.

A database that is down, a wrong password or an unwritable data directory is the most common first-hour problem;
it must read as such, not as a traceback through the connection pool.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from exai.errors import StorageError
from exai.storage.base import Store


def where(database_url: str | None, data_dir: str) -> str:
    """The store's location without credentials: `postgresql at host:port/db` or the SQLite file."""
    if not database_url or database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///") if database_url else f"{data_dir}/exai.db"
        return f"SQLite at {path}"
    try:
        parts = urlsplit(database_url)
        host = parts.hostname or "the local socket"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "PostgreSQL (EXAI_DATABASE_URL)"
    return f"PostgreSQL at {host}{port}{parts.path}"


def reason(exc: BaseException) -> str:
    """The first line of the error, which names the cause (refused, unknown database, authentication...)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


async def open_store(store: Store, database_url: str | None, data_dir: str) -> int:
    """Open the store and apply pending migrations; the schema version, or a StorageError that says what to do."""
    location = where(database_url, data_dir)
    try:
        await store.open()
        return await store.migrate()
    except StorageError:
        raise
    except Exception as exc:  # whatever the driver raised: connection refused, authentication, permissions, disk
        if location.startswith("SQLite"):
            remedy = "make EXAI_DATA_DIR writable (or set EXAI_DATABASE_URL); `exai doctor` checks it"
        else:
            remedy = "start PostgreSQL there, or correct EXAI_DATABASE_URL; `exai doctor` checks it"
        raise StorageError(
            f"Cannot open the store ({location}): {reason(exc)}", code="store_unreachable", remedy=remedy
        ) from None
