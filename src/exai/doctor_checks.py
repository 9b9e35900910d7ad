"""`exai doctor`'s checks of what the daemon depends on besides the providers: the store, Redis, the JWKS and the
file roots. Each check is one line: what was checked, what was found, and the fix when it failed.

They reach what the daemon would reach at start, so a first run learns of a database that is down or a JWKS URL
that answers HTML before a client does. The store is opened as at start (which may create the SQLite file or the
configured schema) but not migrated.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx2

from exai.app import Services
from exai.storage.opening import reason, where


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _redis_where(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"Redis at {parts.path}"
    return f"Redis at {parts.hostname}:{parts.port or 6379}{parts.path or ''}"


async def check_store(services: Services, timeout: float) -> Check:
    settings = services.settings
    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    location = where(database_url, str(settings.data_dir))
    try:
        async with asyncio.timeout(timeout + 10):
            await services.store.open()
            await services.store.ping()
    except Exception as exc:  # every failure is a line, never a crash
        fix = (
            "make EXAI_DATA_DIR writable (or set EXAI_DATABASE_URL)"
            if location.startswith("SQLite")
            else "start PostgreSQL there, or correct EXAI_DATABASE_URL"
        )
        return Check("store", False, f"{location}: {reason(exc)}", fix)
    return Check("store", True, f"{location} answers")


async def check_redis(services: Services, timeout: float) -> Check:
    settings = services.settings
    if services.redis is None or settings.redis_url is None:
        return Check("redis", True, "not configured (EXAI_REDIS_URL): limits are counted per process")
    location = _redis_where(settings.redis_url.get_secret_value())
    try:
        async with asyncio.timeout(timeout):
            await services.redis.ping()
    except Exception as exc:
        return Check("redis", False, f"{location}: {reason(exc)}", "start Redis there, or correct EXAI_REDIS_URL")
    return Check("redis", True, f"{location} answers")


async def check_jwks(services: Services, timeout: float) -> Check | None:
    url = services.settings.jwt_jwks_url
    if not url:
        return None
    fix = 'correct EXAI_JWT_JWKS_URL: it must serve a JSON Web Key Set ({"keys": [...]})'
    try:
        async with httpx2.AsyncClient(timeout=timeout) as http:
            answer = await http.get(url)
        answer.raise_for_status()
        keys = answer.json().get("keys")
    except Exception as exc:
        return Check("jwks", False, f"{url}: {reason(exc)}", fix)
    if not isinstance(keys, list) or not keys:
        return Check("jwks", False, f"{url}: no keys in the answer", fix)
    return Check("jwks", True, f"{url}: {len(keys)} keys")


def check_file_roots(services: Services) -> list[Check]:
    roots = services.settings.file_roots
    if roots is None:
        return [Check("file roots", True, "not set: `serve` reads no files; `stdio` reads the client's directory")]
    if not roots:
        return [Check("file roots", True, "none: tools read no files")]
    checks = []
    for root in map(Path, roots):
        if not root.is_dir():
            checks.append(Check("file root", False, f"{root}: not a directory", "correct EXAI_FILE_ROOTS"))
        elif not os.access(root, os.R_OK | os.X_OK):
            checks.append(Check("file root", False, f"{root}: not readable", "let the daemon's user read it"))
        else:
            checks.append(Check("file root", True, f"{root}: readable"))
    return checks


async def run_checks(services: Services, timeout: float) -> list[Check]:
    store, redis, jwks = await asyncio.gather(
        check_store(services, timeout), check_redis(services, timeout), check_jwks(services, timeout)
    )
    return [store, redis, *([jwks] if jwks else []), *check_file_roots(services)]
