"""A Redis read-through cache in front of a store, shared by every replica.

Hot threads and their turns are served from Redis. Entries carry the thread's turn count as a version and are
only ever replaced by a newer version (an atomic script), so a replica that read an old thread just before
another one committed can never put the old thread back. After a write the writer stores the new version.
A Redis failure never fails a call: the store answers and the failure is logged.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exai.observability.logging import get_logger
from exai.storage.base import AuditRecord, Store, ThreadRecord, TurnRecord

log = get_logger(__name__)
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = cjson.decode(current)['v']
  if version and version > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class CachedStore:
    def __init__(self, store: Store, redis: aioredis.Redis, ttl_seconds: int = 600) -> None:
        self.inner = store
        self.redis = redis
        self.ttl = ttl_seconds
        self.name = f"{store.name}+redis"
        self._set_if_newer = redis.register_script(_SET_IF_NEWER)

    async def _get(self, key: str) -> Any:
        try:
            raw = await self.redis.get(key)
        except RedisError as exc:
            log.warning("redis_unavailable", operation="get", error=str(exc))
            return None
        return json.loads(raw) if raw else None

    async def _set(self, key: str, version: int, value: Any) -> None:
        try:
            await self._set_if_newer(keys=[key], args=[version, json.dumps({"v": version, "data": value}), self.ttl])
        except RedisError as exc:
            log.warning("redis_unavailable", operation="set", error=str(exc))

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()
        await self.redis.aclose()

    async def migrate(self) -> int:
        return await self.inner.migrate()

    async def ping(self) -> None:
        await self.inner.ping()

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        cached = await self._get(f"exai:thread:{thread_id}")
        if cached is not None:
            record = ThreadRecord.model_validate(cached["data"])
            if record.expires_at >= time.time():  # an expired thread may already be purged from the database
                return record
        thread = await self.inner.get_thread(thread_id)
        if thread is not None:
            await self._set(f"exai:thread:{thread_id}", thread.turn_count, thread.model_dump())
        return thread

    async def get_turns(self, thread_id: str) -> list[TurnRecord]:
        cached = await self._get(f"exai:turns:{thread_id}")
        if cached is not None:
            return [TurnRecord.model_validate(t) for t in cached["data"]]
        turns = await self.inner.get_turns(thread_id)
        await self._set(f"exai:turns:{thread_id}", len(turns), [t.model_dump() for t in turns])
        return turns

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
        thread = await self.inner.append_turns(
            thread_id, turns, tool=tool, state=state, expires_at=expires_at, create=create
        )
        await self._set(f"exai:thread:{thread_id}", thread.turn_count, thread.model_dump())
        all_turns = await self.inner.get_turns(thread_id)
        await self._set(f"exai:turns:{thread_id}", len(all_turns), [t.model_dump() for t in all_turns])
        return thread

    async def list_threads(self, tenant: str, limit: int) -> list[ThreadRecord]:
        return await self.inner.list_threads(tenant, limit)

    async def write_audit(self, records: list[AuditRecord]) -> None:
        await self.inner.write_audit(records)

    async def list_audit(
        self, *, tenant: str | None = None, tool: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        return await self.inner.list_audit(tenant=tenant, tool=tool, since=since, limit=limit)

    async def purge(self, now: float, audit_before: float | None = None) -> int:
        return await self.inner.purge(now, audit_before)
