"""The composition root: builds every service once from the settings and hands them down."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis

from exai.config import Settings
from exai.conversations.threads import Conversations
from exai.conversations.tokens import warm_up
from exai.observability.stats import CallStats
from exai.providers.anthropic import AnthropicProvider
from exai.providers.base import Provider
from exai.providers.catalogue import Catalogue
from exai.providers.openai_compatible import OpenAICompatibleProvider
from exai.providers.router import Router
from exai.security.files import FileAccess
from exai.storage.audit import AuditWriter
from exai.storage.base import Store
from exai.storage.cache import CachedStore
from exai.storage.postgres import PostgresStore
from exai.storage.sqlite import SQLiteStore
from exai.tools import enabled_tools
from exai.tools.base import Tool

WIRES = {"openai": OpenAICompatibleProvider, "anthropic": AnthropicProvider}
Transport = Literal["stdio", "http", "memory"]


def build_store(settings: Settings) -> Store:
    url = settings.database_url or f"sqlite:///{settings.data_dir / 'exai.db'}"
    store: Store
    if url.startswith("sqlite:///"):
        store = SQLiteStore(Path(url.removeprefix("sqlite:///")))
    else:
        store = PostgresStore(url, schema=settings.database_schema)
    if settings.redis_url:
        store = CachedStore(store, aioredis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2))
    return store


@dataclass
class Services:
    settings: Settings
    catalogue: Catalogue
    router: Router
    stats: CallStats
    tools: list[Tool[Any, Any]]
    store: Store
    conversations: Conversations
    files: FileAccess
    audit: AuditWriter
    transport: Transport

    @classmethod
    def build(cls, settings: Settings, transport: Transport = "memory") -> Services:
        catalogue = Catalogue.load(settings.models_file, settings.custom_models)
        configs = settings.providers()
        providers: dict[str, Provider] = {}
        for name, config in configs.items():
            if config.enabled and config.base_url:
                providers[name] = WIRES[config.spec.wire](name, config.base_url, config.api_key)
        router = Router(settings, catalogue, providers, configs)
        store = build_store(settings)
        roots = settings.file_roots
        if roots is None:  # over stdio the client's working directory; a shared daemon reads nothing by default
            roots = [] if transport == "http" else [str(Path.cwd())]
        return cls(
            settings=settings,
            catalogue=catalogue,
            router=router,
            stats=CallStats(),
            tools=enabled_tools(settings.tool_profile, settings.disabled_tools),
            store=store,
            conversations=Conversations(store, settings.thread_ttl_hours * 3600, settings.max_turns_per_thread),
            files=FileAccess([Path(r) for r in roots], settings.max_file_bytes, settings.max_files_bytes),
            audit=AuditWriter(store),
            transport=transport,
        )

    async def start(self) -> None:
        """Open the store, apply migrations, load the tokenizer and start background writers."""
        await self.store.open()
        await self.store.migrate()
        retention = self.settings.audit_retention_days * 86400
        await self.store.purge(time.time(), audit_before=time.time() - retention)
        warm_up()
        self.audit.start()

    async def close(self) -> None:
        await self.audit.close()
        await self.router.close()
        await self.store.close()
