"""The composition root: builds every service once from the settings and hands them down."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from exai.config import Limits, Settings, secret
from exai.conversations.threads import Conversations
from exai.conversations.tokens import warm_up
from exai.conversations.turn_memory import TurnMemory
from exai.errors import ExaiError
from exai.heap import HeapTrimmer
from exai.observability.alerts import AlertManager, AlertThresholds
from exai.observability.events import Events
from exai.observability.health import Health
from exai.observability.logging import get_logger, register_secret
from exai.observability.loop_lag import LoopLagProbe
from exai.observability.metrics import Metrics
from exai.observability.stats import Stats
from exai.providers.base import Provider
from exai.providers.catalogue import Catalogue
from exai.providers.lazy import LazyProvider, import_later
from exai.providers.listings import VendorListings
from exai.providers.rediscovery import CustomModelDiscovery
from exai.providers.router import Router
from exai.security.auth import JWTVerifier, parse_api_keys
from exai.security.files import FileAccess
from exai.security.limits import LocalLimiter, RateLimiter, RedisLimiter
from exai.server.admission import Admission
from exai.server.call_records import CallRunner
from exai.storage.audit import AuditWriter
from exai.storage.base import Store
from exai.storage.opening import open_store
from exai.storage.retention import Purger
from exai.storage.sqlite import SQLiteStore
from exai.tools import enabled_tools
from exai.tools.base import Tool, ToolServices, ToolSettings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

Transport = Literal["stdio", "http", "memory"]
log = get_logger(__name__)


def register_secrets(settings: Settings) -> None:
    """Keep every secret setting (keys, JWT secret, database, Redis and webhook URLs) out of the logs."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())


def build_store(settings: Settings) -> Store:
    url = secret(settings.database_url) or f"sqlite:///{settings.data_dir / 'exai.db'}"
    store: Store
    if url.startswith("sqlite:///"):
        store = SQLiteStore(Path(url.removeprefix("sqlite:///")))
    else:
        from exai.storage.postgres import PostgresStore  # psycopg is loaded only for PostgreSQL

        store = PostgresStore(
            url,
            schema=settings.database_schema,
            max_connections=settings.database_pool_size,
            wait_seconds=settings.database_pool_timeout_seconds,
        )
    redis = build_redis(settings)
    if redis is not None:
        from exai.storage.cache import CachedStore

        store = CachedStore(store, redis)
    return store


def build_redis(settings: Settings) -> aioredis.Redis | None:
    url = secret(settings.redis_url)
    if not url:
        return None
    import redis.asyncio as aioredis  # the client is loaded only when Redis is configured

    # A bounded pool: a burst of calls waits briefly for a connection instead of opening (and failing) hundreds.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_pool_timeout_seconds,
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    return aioredis.Redis.from_pool(pool)


def build_verifier(settings: Settings) -> JWTVerifier | None:
    if not settings.auth_enabled:
        return None
    public_key = settings.jwt_public_key
    if public_key and not public_key.lstrip().startswith("-----BEGIN"):
        public_key = Path(public_key).read_text()
    return JWTVerifier(
        secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
        public_key=public_key,
        jwks_url=settings.jwt_jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        tenant_claim=settings.tenant_claim,
        api_keys=parse_api_keys(settings.api_keys),
    )


LIMIT_SETTINGS = frozenset(
    {
        "rate_limit_rpm",
        "rate_limit_concurrency",
        "rate_limit_tokens_per_day",
        "rate_limit_task_rpm",
        "rate_limit_stored_chars_per_day",
        "tenant_limits",
    }
)


def build_limiter(settings: Settings, redis: aioredis.Redis | None) -> RateLimiter | None:
    """Per-tenant limits: always with auth; without it, for the one `local` tenant once any limit is set."""
    if not settings.auth_enabled and not LIMIT_SETTINGS & settings.model_fields_set:
        return None
    defaults = Limits(
        requests_per_minute=settings.rate_limit_rpm,
        concurrent=settings.rate_limit_concurrency,
        tokens_per_day=settings.rate_limit_tokens_per_day,
        task_requests_per_minute=settings.rate_limit_task_rpm,
        stored_chars_per_day=settings.rate_limit_stored_chars_per_day,
    )
    overrides = {tenant: defaults.model_copy(update=values) for tenant, values in settings.tenant_limits.items()}
    if redis is None:
        return LocalLimiter(defaults, overrides)
    return RedisLimiter(
        redis, defaults, overrides, settings.rate_limit_on_redis_error, lease_ttl=settings.call_lease_seconds
    )


def check_default_model(router: Router) -> None:
    """Log an error at start when EXAI_DEFAULT_MODEL names no model the router can use (once models are known)."""
    name = router.settings.default_model
    if name.lower() == "auto" or not router.providers:
        return
    try:
        router.resolve(name)
    except ExaiError as exc:
        log.error(
            "default_model_unusable",
            setting="EXAI_DEFAULT_MODEL",
            error=exc.message,
            remedy="set EXAI_DEFAULT_MODEL to a model `exai models` lists, or to auto; calls with model 'auto' fail",
        )


async def warn_if_redis_unreachable(redis: aioredis.Redis | None, on_error: str) -> None:
    """One warning at start when EXAI_REDIS_URL cannot be reached; the daemon starts anyway."""
    if redis is None:
        return
    try:
        await redis.ping()
    except Exception as exc:  # any failure to reach Redis is the same warning
        log.warning(
            "redis_unreachable",
            error=f"{type(exc).__name__}: {exc}"[:200],
            behaviour="each replica enforces the rate limits with its own counters until Redis answers"
            if on_error == "open"
            else "calls are refused until Redis answers (EXAI_RATE_LIMIT_ON_REDIS_ERROR=closed)",
            remedy="check EXAI_REDIS_URL and that Redis is running",
        )


@dataclass
class Services:
    settings: Settings
    catalogue: Catalogue
    router: Router
    stats: Stats
    health: Health
    tools: list[Tool[Any, Any]]
    store: Store
    conversations: Conversations
    files: FileAccess
    audit: AuditWriter
    purger: Purger
    transport: Transport
    metrics: Metrics
    alerts: AlertManager
    limiter: RateLimiter | None
    verifier: JWTVerifier | None
    events: Events
    discovery: CustomModelDiscovery
    listings: VendorListings
    redis: aioredis.Redis | None
    admission: Admission
    calls: CallRunner
    tool_services: ToolServices
    """What tools may use (the narrow part of these services handed to each call)."""
    loop_lag: LoopLagProbe
    heap: HeapTrimmer
    schema_version: int | None = None
    """The store's schema version once it is open (migrations applied)."""

    @classmethod
    def build(cls, settings: Settings, transport: Transport = "memory") -> Services:
        register_secrets(settings)
        configs = settings.providers()
        providers: dict[str, Provider] = {}
        for name, config in configs.items():
            if config.enabled and config.base_url:
                providers[name] = LazyProvider(name, config.spec.wire, config.base_url, config.api_key)
        catalogue = Catalogue.load(
            settings.models_file, settings.custom_models, settings.custom_context_window, configured=providers
        )
        one_tenant = transport == "stdio" or not settings.auth_enabled  # stdio has no tokens, whatever is set
        router = Router(settings, catalogue, providers, configs, one_tenant=one_tenant)
        redis = build_redis(settings)
        limiter = build_limiter(settings, redis)
        stats = Stats()
        health = Health(
            stats,
            router,
            limiter,
            settings.alert_window_seconds,
            settings.breaker_cooldown_seconds,
        )
        admission = Admission(
            settings.max_calls_in_flight, settings.max_calls_waiting, settings.admission_queue_seconds
        )
        metrics = Metrics(health.limiter, admission.saturation)
        alerts = AlertManager(
            AlertThresholds(
                window_seconds=settings.alert_window_seconds,
                provider_error_rate=settings.alert_provider_error_rate,
                p95_latency_seconds=settings.alert_p95_latency_seconds,
                auth_failures=settings.alert_auth_failures,
                rate_limit_rejections=settings.alert_rate_limit_rejections,
            ),
            secret(settings.alert_webhook_url),
            stats,
            health,
        )
        store = build_store(settings)
        audit = AuditWriter(store)
        events = Events(stats, metrics, audit)
        router.on_attempt = events.attempt_finished
        if isinstance(limiter, RedisLimiter):
            limiter.on_round_trip = events.limiter_round_trip
        verifier = build_verifier(settings)
        if verifier is not None:
            verifier.on_failure = events.auth_failed
        roots = settings.file_roots
        if roots is None:  # over stdio the client's working directory; a shared daemon reads nothing by default
            roots = [] if transport == "http" else [str(Path.cwd())]
        tools = enabled_tools(settings.tool_profile, settings.disabled_tools)
        metrics.know_tools(t.name for t in tools)
        conversations = Conversations(
            store,
            settings.thread_ttl_hours * 3600,
            settings.max_turns_per_thread,
            events.storage_finished,
            TurnMemory(int(settings.thread_memory_mb * 2**20)),
        )
        files = FileAccess([Path(r) for r in roots], settings.max_file_bytes, settings.max_file_bytes_per_call)
        calls = CallRunner(
            store,
            settings,
            on_task_event=lambda kind, call: events.task_event(
                kind, call.tenant, call.tool, call.id, call.correlation_id
            ),
            on_counts=lambda counts: events.task_counts(counts.by_status, counts.oldest_working),
            on_storage=events.storage_finished,
        )
        tool_services = ToolServices(
            router=router,
            conversations=conversations,
            files=files,
            limiter=limiter,
            calls=calls,
            stats=stats,
            health=health,
            tool_names=tuple(t.name for t in tools),
            settings=ToolSettings(
                max_prompt_chars=settings.max_prompt_chars,
                max_file_bytes_per_call=settings.max_file_bytes_per_call,
                client_wait_seconds=settings.client_wait_seconds,
            ),
        )
        return cls(
            settings=settings,
            catalogue=catalogue,
            router=router,
            stats=stats,
            health=health,
            tools=tools,
            store=store,
            conversations=conversations,
            files=files,
            audit=audit,
            purger=Purger(store, settings.purge_interval_seconds, settings.audit_retention_days * 86400),
            transport=transport,
            metrics=metrics,
            alerts=alerts,
            limiter=limiter,
            verifier=verifier,
            events=events,
            discovery=CustomModelDiscovery(settings, router, lambda: check_default_model(router)),
            listings=VendorListings(settings, router),
            redis=redis,
            admission=admission,
            calls=calls,
            tool_services=tool_services,
            loop_lag=LoopLagProbe(events.loop_lagged),
            heap=HeapTrimmer(settings.memory_trim_seconds),
        )

    async def start(self) -> None:
        """Open the store and apply migrations while Redis is checked; discover the custom endpoint's models and ask
        every vendor for its listing in the background (never on the start-up path); load the tokenizer and the
        provider SDKs in the background a moment later; start the background writers."""
        warm_up()
        import_later(p.wire for p in self.router.providers.values() if isinstance(p, LazyProvider))
        await asyncio.gather(
            self._open_store(),
            self.discovery.start(),  # returns at once
            warn_if_redis_unreachable(self.redis, self.settings.rate_limit_on_redis_error),
        )
        self.listings.start()
        self.audit.start()
        self.purger.start()
        self.alerts.start()
        self.calls.start()
        self.loop_lag.start()
        self.heap.start()

    async def _open_store(self) -> None:
        settings = self.settings
        self.schema_version = await open_store(self.store, secret(settings.database_url), str(settings.data_dir))
        await self.purger.purge()

    async def close(self) -> None:
        await self.heap.close()
        await self.loop_lag.close()
        await self.calls.close()
        if self.limiter is not None:
            await self.limiter.close()  # after the calls: what they stored is counted
        await self.discovery.close()
        await self.listings.close()
        await self.alerts.close()
        await self.purger.close()
        await self.audit.close()
        await self.router.close()
        await self.store.close()
