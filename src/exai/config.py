"""One Settings object, read once at start from the environment, `.env` and an optional `exai.toml`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from exai.config_problems import ConfigError, read_config_file
from exai.provider_specs import DEFAULT_CUSTOM_CONTEXT_WINDOW, PROVIDER_SPECS, ProviderSpec

MAX_REQUEST_BODY_BYTES = 4 * 2**20
"""The largest request body the MCP SDK takes (its DEFAULT_MAX_REQUEST_BODY_SIZE, not imported here: `exai --help`
does not load the SDK)."""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_base_url(value: str | None) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/") if value else value


SettingsT = TypeVar("SettingsT", bound=BaseSettings)
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
"""A list written as comma-separated text in the environment (`a,b,c`), or as a list in exai.toml."""
BaseUrl = Annotated[str | None, AfterValidator(_check_base_url)]
TenantLimits = Annotated[dict[str, dict[str, int]], NoDecode]


class Limits(BaseModel):
    """One tenant's limits. Its defaults are the defaults of EXAI_RATE_LIMIT_*; EXAI_TENANT_LIMITS overrides them
    per tenant with these names."""

    requests_per_minute: int = Field(default=120, ge=1)
    concurrent: int = Field(default=8, ge=1)
    tokens_per_day: int = Field(default=5_000_000, ge=1)
    task_requests_per_minute: int = Field(default=1200, ge=1)  # above 32 tasks polled every 2 s (960)
    """`tasks/get`, `tasks/result`, `tasks/list`, `tasks/cancel`, `tasks/update`: store reads, in a window of their own
    (a Tasks client polls `tasks/get` every 2 s per task: 600 a minute leaves room for 20 tasks polled at once)."""
    stored_chars_per_day: int = Field(default=100_000_000, ge=1)
    """Characters a tenant's calls may leave in the store in a day (the turns and workflow steps they add to threads,
    and the results of recorded calls, kept for `collect` and `tasks/result`): what the store holds for a tenant grows
    by at most about this a day."""


TENANT_LIMIT_KEYS = tuple(Limits.model_fields)
_DEFAULT_LIMITS = Limits()
DEFAULT_MAX_PROMPT_CHARS = 100_000
"""EXAI_MAX_PROMPT_CHARS by default; also the limit of any other text field of a tool's arguments."""
RENAMED = {
    # old variable: the setting that replaced it (the old name still works, with a warning naming the new one)
    "EXAI_RETRY_BASE_DELAY": "retry_base_delay_seconds",
    "EXAI_RETRY_MAX_DELAY": "retry_max_delay_seconds",
    "EXAI_MAX_FILES_BYTES": "max_file_bytes_per_call",
}
CONNECTION_HEADROOM = 256
"""Connections beyond the admitted calls by default: health checks, scrapes, idle keep-alive and session streams."""
ADDRESS_RESERVE = CONNECTION_HEADROOM // 2
"""Connections one client address may never take by default (EXAI_MAX_CONNECTIONS_PER_ADDRESS): kept for the others."""


def _renamed(field: str) -> AliasChoices:
    """The variables of a renamed setting: its own first, then the old names it still answers to."""
    return AliasChoices(f"EXAI_{field.upper()}", *(old for old, new in RENAMED.items() if new == field))


def _provider_fields(spec: ProviderSpec) -> dict[str, Any]:
    """The four settings of one provider, named after it and read from the variables its spec names."""
    return {
        f"{spec.name}_api_key": (SecretStr | None, Field(default=None, validation_alias=AliasChoices(*spec.key_env))),
        f"{spec.name}_base_url": (BaseUrl, Field(default=None, validation_alias=AliasChoices(*spec.url_envs))),
        f"{spec.name}_allowed_models": (CommaList, Field(default=[], validation_alias=spec.allowed_env)),
        f"{spec.name}_denied_models": (CommaList, Field(default=[], validation_alias=spec.denied_env)),
    }


class ReadsExaiSources(BaseSettings):
    """Settings read from arguments, the environment, `.env`, then the TOML file (see `_sources`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return _sources(
            settings_cls,
            init_settings,
            UnderOwnNames(settings_cls, env_settings),
            UnderOwnNames(settings_cls, dotenv_settings),
        )


class UnderOwnNames(PydanticBaseSettingsSource):
    """The environment (or `.env`) read only under the names the settings document: one with names of its own
    (OPENAI_API_KEY, CUSTOM_MODELS, a renamed setting's old name) is never also read from `EXAI_<field name>`, which
    pydantic-settings adds for such fields because `populate_by_name` is on (for the TOML file's keys). The warning
    about an unknown `EXAI_` variable then tells the truth: it is ignored."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.inner = inner
        self.named = {name for name, field in settings_cls.model_fields.items() if field.validation_alias is not None}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: `__call__` reads every field through the inner source

    def __call__(self) -> dict[str, Any]:
        return {key: value for key, value in self.inner().items() if key not in self.named}


ProviderSettings: type[BaseSettings] = create_model(
    "ProviderSettings",
    __base__=ReadsExaiSources,
    **{name: field for spec in PROVIDER_SPECS.values() for name, field in _provider_fields(spec).items()},
)
"""Every provider's settings, derived from the specs: a new OpenAI-compatible vendor is one entry of data."""


class ProviderConfig:
    """What the settings say about one provider."""

    def __init__(
        self, spec: ProviderSpec, api_key: SecretStr | None, base_url: str | None, allowed: list[str], denied: list[str]
    ) -> None:
        self.spec = spec
        # A key pasted with a trailing newline or spaces (a secret file, an .env line) is the key without them.
        self.api_key = api_key.get_secret_value().strip() or None if api_key else None
        self.base_url = base_url or spec.default_base_url
        self.allowed = {m.lower() for m in allowed}
        self.denied = {m.lower() for m in denied}

    @property
    def enabled(self) -> bool:
        if self.spec.key_required:
            return bool(self.api_key)
        return bool(self.base_url)

    def allows(self, *names: str) -> bool:
        lowered = {n.lower() for n in names}
        if lowered & self.denied:
            return False
        return not self.allowed or bool(lowered & self.allowed)


class Settings(ProviderSettings):
    model_config = SettingsConfigDict(
        env_prefix="EXAI_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    otel_exporter: Literal["off", "console", "otlp"] = "off"
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)
    drain_notice_seconds: float = Field(default=3.0, ge=0)  # /readyz answers 503 this long before the port closes
    allowed_hosts: CommaList = Field(default_factory=list)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0)
    http_body_timeout_seconds: float = Field(default=30.0, gt=0)
    # an idle kept-alive connection is closed after this long: well past clients' own idle limits (httpx, which the
    # MCP SDK uses, reuses a connection idle < 5 s), so the client closes first and never sends on one we close
    http_keep_alive_seconds: int = Field(default=75, ge=1)
    max_calls_in_flight: int = Field(default=1024, ge=1)  # per replica, calls that ask a model (server/admission.py)
    max_calls_waiting: int = Field(default=1024, ge=0)
    admission_queue_seconds: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=0, ge=0)  # 0: room for every admitted call, plus CONNECTION_HEADROOM
    max_connections_per_address: int = Field(default=0, ge=0)  # 0: all but ADDRESS_RESERVE, never below admission
    disabled_tools: CommaList = Field(default_factory=list)
    max_prompt_chars: int = Field(default=DEFAULT_MAX_PROMPT_CHARS, gt=0)

    # Authentication (HTTP) and limits
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    tenant_claim: str = "sub"
    api_keys: CommaList = Field(default_factory=list)
    public_url: str | None = None
    rate_limit_rpm: int = Field(default=_DEFAULT_LIMITS.requests_per_minute, ge=1)
    rate_limit_concurrency: int = Field(default=_DEFAULT_LIMITS.concurrent, ge=1)
    rate_limit_tokens_per_day: int = Field(default=_DEFAULT_LIMITS.tokens_per_day, ge=1)
    rate_limit_task_rpm: int = Field(default=_DEFAULT_LIMITS.task_requests_per_minute, ge=1)
    rate_limit_stored_chars_per_day: int = Field(default=_DEFAULT_LIMITS.stored_chars_per_day, ge=1)
    tenant_limits: TenantLimits = Field(default_factory=dict)
    rate_limit_on_redis_error: Literal["open", "closed"] = "open"
    max_sessions_per_tenant: int = Field(default=64, ge=1)
    # Request bodies held at once (server/request_body.py): never below one body of the largest size the SDK takes.
    body_bytes_per_tenant: int = Field(default=16 * 2**20, ge=MAX_REQUEST_BODY_BYTES)
    body_bytes_total: int = Field(default=64 * 2**20, ge=MAX_REQUEST_BODY_BYTES)
    stateless_http: bool = False  # no MCP sessions: every replica answers every request (see server/stateless.py)
    session_idle_seconds: float = Field(default=600.0, gt=0)
    authorization_server_url: str | None = None

    # Alerts
    alert_webhook_url: SecretStr | None = None
    alert_window_seconds: float = Field(default=300.0, gt=0)
    alert_provider_error_rate: float = Field(default=0.5, gt=0, le=1)
    alert_p95_latency_seconds: float = Field(default=30.0, gt=0)
    alert_auth_failures: int = Field(default=20, ge=1)
    alert_rate_limit_rejections: int = Field(default=50, ge=1)

    # Storage and conversations
    data_dir: Path = Field(default_factory=lambda: _default_data_dir())
    database_url: SecretStr | None = None
    database_schema: str | None = None
    database_pool_size: int = Field(default=20, ge=1)  # PostgreSQL connections per replica
    database_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    redis_url: SecretStr | None = None
    redis_pool_size: int = Field(default=100, ge=1)  # Redis connections per replica
    redis_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    thread_ttl_hours: float = Field(default=72.0, gt=0)
    max_turns_per_thread: int = Field(default=50, ge=2)
    thread_memory_mb: int = Field(default=32, ge=0)  # recently used threads' turns held per replica; 0: none
    audit_retention_days: float = Field(default=30.0, gt=0)
    purge_interval_seconds: float = Field(default=3600.0, gt=0)  # expired threads and old audit rows
    memory_trim_seconds: float = Field(default=60.0, ge=0)  # freed heap memory handed back this often; 0: never

    # Long calls: call records, MCP Tasks, answers collected later
    client_wait_seconds: float = Field(default=45.0, ge=0)  # a call still running then answers "pending"; 0: never
    task_after_seconds: float = Field(default=2.0, ge=0)  # a 2026-07-28 Tasks client gets a task after this long
    task_ttl_seconds: float = Field(default=86400.0, gt=0)  # how long a call's answer can be collected
    call_lease_seconds: float = Field(default=30.0, ge=3)  # a call whose replica stops renewing is lost after this
    max_tasks_per_tenant: int = Field(default=32, ge=1)  # working tasks a tenant may have at once

    # Tools and files
    tool_profile: Literal["lean", "standard", "full"] = "standard"
    file_roots: CommaList | None = None
    max_file_bytes: int = Field(default=512_000, gt=0)
    max_file_bytes_per_call: int = Field(default=2_000_000, gt=0, validation_alias=_renamed("max_file_bytes_per_call"))

    # Routing and resilience
    default_model: str = "auto"
    fallback_chain: CommaList = Field(default_factory=list)
    fallback_from_explicit_model: bool = False
    call_deadline_seconds: float = Field(default=600.0, gt=0)  # the vendors' own SDKs wait 10 minutes too
    attempt_timeout_seconds: float = Field(default=45.0, gt=0)
    # A thinking model's silence before its first word; below the deadline, so a hung one leaves time to fall back.
    thinking_timeout_seconds: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_base_delay_seconds: float = Field(default=0.5, ge=0, validation_alias=_renamed("retry_base_delay_seconds"))
    retry_max_delay_seconds: float = Field(default=8.0, ge=0, validation_alias=_renamed("retry_max_delay_seconds"))
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    provider_concurrency: int = Field(default=64, ge=1)
    provider_concurrency_per_tenant: int = Field(default=16, ge=1)  # one tenant's share of a provider's slots
    models_file: Path | None = None

    # Providers: the four settings of each are in ProviderSettings; these are Custom's own.
    custom_models: CommaList = Field(default=[], validation_alias="CUSTOM_MODELS")
    custom_context_window: int = Field(
        default=DEFAULT_CUSTOM_CONTEXT_WINDOW, gt=0, validation_alias="CUSTOM_CONTEXT_WINDOW"
    )
    # Asking vendors which models they serve (background only; see providers/listings.py)
    model_listing_timeout_seconds: float = Field(default=10.0, gt=0)
    model_listing_max_bytes: int = Field(default=4_000_000, ge=1024)
    model_listing_interval_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("max_connections")
    @classmethod
    def _check_connection_cap(cls, value: int, info: ValidationInfo) -> int:
        """The connection cap may never refuse a call that admission control would take."""
        admitted = int(info.data.get("max_calls_in_flight", 0)) + int(info.data.get("max_calls_waiting", 0))
        if value == 0:
            return admitted + CONNECTION_HEADROOM
        if value < admitted:
            raise ValueError(
                f"is {value}, below the {admitted} calls admission control admits "
                "(EXAI_MAX_CALLS_IN_FLIGHT + EXAI_MAX_CALLS_WAITING)"
            )
        return value

    @field_validator("max_connections_per_address")
    @classmethod
    def _address_share(cls, value: int, info: ValidationInfo) -> int:
        """By default one address may hold every connection but the last ADDRESS_RESERVE, so it can never take them
        all; yet never fewer than admission control admits, so a reverse proxy (one address for all its clients)
        can still carry every call the replica takes."""
        cap = int(info.data.get("max_connections", 0))
        if value:
            return min(value, cap) if cap else value
        admitted = int(info.data.get("max_calls_in_flight", 0)) + int(info.data.get("max_calls_waiting", 0))
        return max(cap - ADDRESS_RESERVE, min(admitted, cap))

    @field_validator("jwt_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None  # `EXAI_JWT_SECRET=`, as .env.example has it: no secret, like an empty provider key
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        url = value.get_secret_value() if value else ""
        if url and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("is not a sqlite:/// or postgresql:// URL")
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        if path == ":memory:":
            raise ValueError("names an in-memory database, which would lose every thread and answer at each restart")
        if path is not None and not path.startswith(("/", "./", "../")):
            # As in SQLAlchemy, three slashes then a path is relative to the working directory: written for an
            # absolute path (sqlite:///tmp/x.db), each directory a client starts the server in got a database of
            # its own, and threads seemed lost. Said outright, or refused.
            raise ValueError(
                f"names the relative path {path!r} (after sqlite:/// a path is relative to the working directory); "
                f"for /{path} write sqlite:////{path}, for a path relative to where the server starts write "
                f"sqlite:///./{path}"
            )
        return value

    @field_validator("redis_url", "alert_webhook_url", "jwt_jwks_url")
    @classmethod
    def _check_service_url(cls, value: str | SecretStr | None, info: ValidationInfo) -> str | SecretStr | None:
        schemes = ("redis://", "rediss://", "unix://") if info.field_name == "redis_url" else ("http://", "https://")
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text and not text.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)}")
        return value

    @field_validator("tenant_limits", mode="before")
    @classmethod
    def _parse_tenant_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise ValueError("must be an object of tenant names to limits")
        for tenant, limits in value.items():
            if not isinstance(limits, dict):
                raise ValueError(f"the limits of tenant '{tenant}' must be an object")
            unknown = sorted(set(limits) - set(TENANT_LIMIT_KEYS))
            if unknown:
                raise ValueError(f"tenant '{tenant}' has unknown limit(s) {', '.join(map(repr, unknown))}")
            for key, number in limits.items():
                if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                    raise ValueError(f"limit '{key}' of tenant '{tenant}' must be a whole number of at least 1")
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: list[str]) -> list[str]:
        if value:
            from exai.security.auth import parse_api_keys  # only daemons with keys pay for the JWT stack

            for number, entry in enumerate(value, start=1):
                try:
                    parse_api_keys([entry])
                except ValueError:
                    raise ValueError(f"entry {number} is not sha256hex:tenant:scope+scope") from None
        return value

    @field_validator("jwt_public_key")
    @classmethod
    def _check_public_key(cls, value: str | None) -> str | None:
        if value and not value.lstrip().startswith("-----BEGIN") and not Path(value).is_file():
            raise ValueError("is neither a PEM key nor the path of a readable file")
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url or self.api_keys)

    def provider(self, name: str) -> ProviderConfig:
        return ProviderConfig(
            PROVIDER_SPECS[name],
            getattr(self, f"{name}_api_key"),
            getattr(self, f"{name}_base_url"),
            getattr(self, f"{name}_allowed_models"),
            getattr(self, f"{name}_denied_models"),
        )

    def providers(self) -> dict[str, ProviderConfig]:
        return {name: self.provider(name) for name in PROVIDER_SPECS}


class BridgeSettings(ReadsExaiSources):
    """The stdio bridge's own settings (`exai stdio --connect URL`): the daemon's token is never a server setting."""

    model_config = SettingsConfigDict(env_prefix="EXAI_", env_file=".env", extra="ignore", populate_by_name=True)

    token: SecretStr | None = None
    bridge_connect_timeout_seconds: float = Field(default=30.0, gt=0)
    bridge_allow_plain_http: bool = False  # send EXAI_TOKEN over http:// to a host that is not loopback


SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (Settings, BridgeSettings)
"""Every setting is a field of one of these; the README's settings table lists them all."""


def _sources(
    settings_cls: type[BaseSettings], *sources: PydanticBaseSettingsSource
) -> tuple[PydanticBaseSettingsSource, ...]:
    """Arguments, the environment, `.env`, then the TOML file (its keys may be field or variable names)."""
    from exai.config_checks import field_of, file_keys  # they need the settings classes of this module

    config_file = read_config_file(file_keys())
    values = {field_of(key) or key: value for key, value in (config_file.values if config_file else {}).items()}
    return (*sources, InitSettingsSource(settings_cls, values))


def secret(value: SecretStr | None) -> str | None:
    """The plain text of a secret setting, read only where it is used (never logged or shown)."""
    return value.get_secret_value() if value is not None else None


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "exai"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings once; every problem names where the user wrote it and how to fix it.

    Values that contradict each other (an attempt timeout beyond the call's deadline, ...) are problems too."""
    from exai.config_checks import contradictions, load

    settings = load(Settings, overrides)
    problems = contradictions(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def load_bridge_settings(**overrides: Any) -> BridgeSettings:
    from exai.config_checks import load

    return load(BridgeSettings, overrides)
