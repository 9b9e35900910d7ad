"""Reading the settings: where the user wrote each, what is wrong with it, and the warnings of start-up.

`config.py` says what the settings are. Here: the variables and `exai.toml` keys of each setting (old names of
renamed settings included), validation errors turned into problems that name the place to edit, and settings that
are valid one by one but not together: `contradictions` stops start-up (exit code 2, like any other configuration
mistake), each told as the variable the user wrote and how to fix it. `setting_warnings` is what start-up says and
goes on: unknown EXAI_* variables, old names of renamed settings, settings that mean nothing with the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import SettingsError

from exai.config import RENAMED, SETTINGS_CLASSES, Settings, SettingsT
from exai.config_problems import (
    ConfigError,
    ConfigProblem,
    read_config_file,
    unknown_variables,
    variable_places,
    where_set,
)
from exai.provider_specs import PROVIDER_SPECS

_URL_FIX = "write the whole URL with its scheme, e.g. http://127.0.0.1:11434/v1"
_FIXES = {
    "tenant_limits": "give each tenant whole numbers for requests_per_minute, concurrent, tokens_per_day, "
    "task_requests_per_minute or stored_chars_per_day, "
    'e.g. {"alice": {"requests_per_minute": 60, "concurrent": 4}}',
    "api_keys": "make each entry with `exai token apikey --tenant NAME` and join entries with commas",
    "database_url": "use sqlite:////absolute/path/exai.db (four slashes), sqlite:///./relative/exai.db or "
    "postgresql://user:password@host:5432/db",
    "redis_url": "use redis://host:6379/0, rediss://... or unix:///path/to/redis.sock",
    "alert_webhook_url": "use an http:// or https:// URL",
    "jwt_jwks_url": "use an http:// or https:// URL",
    "jwt_secret": "generate one with `openssl rand -hex 32`",
    "max_connections": "leave EXAI_MAX_CONNECTIONS unset (it follows admission), or raise it, or lower "
    "EXAI_MAX_CALLS_IN_FLIGHT / EXAI_MAX_CALLS_WAITING",
    "jwt_public_key": "paste the PEM text or give the path of a PEM file",
    **{f"{name}_base_url": _URL_FIX for name in PROVIDER_SPECS},
}


def _fields() -> dict[str, FieldInfo]:
    return {name: info for cls in SETTINGS_CLASSES for name, info in cls.model_fields.items()}


def env_names(field: str) -> list[str]:
    """The variables that set a field, the documented one first (then the old names it still answers to)."""
    alias = _fields()[field].validation_alias
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"EXAI_{field.upper()}"]


def _old_keys(field: str) -> list[str]:
    """The TOML keys of a renamed setting's old names (`retry_base_delay` for EXAI_RETRY_BASE_DELAY)."""
    return [old.removeprefix("EXAI_").lower() for old, new in RENAMED.items() if new == field]


def file_keys() -> list[str]:
    """Keys the TOML file accepts: field names and the variable names that set them, old names included."""
    return [key for field in _fields() for key in (field, *env_names(field), *_old_keys(field))]


def field_of(name: str) -> str | None:
    lowered = name.lower()
    for field in _fields():
        if lowered in (field, *(n.lower() for n in (*env_names(field), *_old_keys(field)))):
            return field
    return None


def unknown_variable_warnings() -> list[str]:
    """EXAI_* names in the environment or `.env` that no setting reads, and misspelt provider keys and URLs (a typo
    is otherwise silently ignored)."""
    dotenv = dotenv_values()
    warnings = unknown_variables((n for field in _fields() for n in env_names(field)), dotenv)
    values = {**dotenv, **os.environ}
    for name, place in variable_places(dotenv):
        if (meant := misspelt_provider_variable(name.upper(), values)) is not None:
            warnings.append(f"warning: {name} (in {place}) is not read by EX-AI; did you mean {meant}?")
    return warnings


_KEY_SPELLINGS = ("KEY", "APIKEY", "TOKEN", "API_TOKEN", "SECRET", "SECRET_KEY")
_URL_SPELLINGS = ("URL", "API_URL", "ENDPOINT", "HOST")


def misspelt_provider_variable(name: str, values: Mapping[str, str | None]) -> str | None:
    """The variable `name` was meant to be, when it is a provider's prefix and a usual wrong spelling of its key or
    URL (KIMI_KEY, CUSTOM_URL) and that provider is not set up in `values` (the environment and .env): a misspelt
    key leaves a provider out without a word. Other tools' variables (OPENAI_API_BASE, ANTHROPIC_VERTEX_BASE_URL,
    ...) are not such spellings."""
    for spec in PROVIDER_SPECS.values():
        prefix = f"{spec.env_prefix}_"
        if not name.startswith(prefix):
            continue
        suffix = name.removeprefix(prefix)
        if suffix in _KEY_SPELLINGS and spec.key_required and not any(values.get(v) for v in spec.key_env):
            return spec.key_env[0]
        if suffix in _URL_SPELLINGS and name != spec.base_url_env and not values.get(spec.base_url_env):
            return spec.base_url_env
    return None


def dotenv_values() -> dict[str, str | None]:
    import dotenv  # read on the error path and for the unknown-variable warnings

    return dict(dotenv.dotenv_values(".env")) if Path(".env").is_file() else {}


def where(field: str, dotenv: dict[str, str | None] | None = None) -> str:
    """Where the user set a field: the variable as written, `NAME (in .env)` or `file:line`."""
    names = env_names(field)
    return where_set(names, [field, *names, *_old_keys(field)], dotenv_values() if dotenv is None else dotenv)


def _problem(field: str | None, what: str, dotenv: dict[str, str | None]) -> ConfigProblem:
    if field is None:
        return ConfigProblem("configuration", what, "correct the settings and start again")
    place = where(field, dotenv)
    return ConfigProblem(place, what, _FIXES.get(field, f"correct {place} and start again"))


def _message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def load(cls: type[SettingsT], overrides: dict[str, Any]) -> SettingsT:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        dotenv = dotenv_values()
        problems = []
        for error in exc.errors():
            field = field_of(str(error["loc"][0])) if error["loc"] else None
            if field in overrides:  # given on the command line: the option is what the user wrote
                option = f"--{field.replace('_', '-')}"
                problems.append(ConfigProblem(option, _message(error), f"correct {option} and start again"))
            else:
                problems.append(_problem(field, _message(error), dotenv))
        raise ConfigError(problems) from None
    except SettingsError as exc:  # a value the settings sources could not even decode
        field = next((f for f in cls.model_fields if f'"{f}"' in str(exc)), None)
        raise ConfigError([_problem(field, "cannot be decoded", dotenv_values())]) from None


@dataclass(frozen=True, slots=True)
class AtMost:
    """`low` may not exceed `high`. When `yields` and the user left `low` at its default, the code already caps it
    at `high` (a lower deadline shortens the default attempt timeout): only a value the user wrote contradicts."""

    low: str
    high: str
    why: str
    yields: bool = True


BOUNDS = (
    AtMost("attempt_timeout_seconds", "call_deadline_seconds", "one upstream attempt cannot outlast the whole call"),
    AtMost("thinking_timeout_seconds", "call_deadline_seconds", "a model's thinking cannot outlast the whole call"),
    AtMost("retry_base_delay_seconds", "retry_max_delay_seconds", "the first retry wait is above the longest one"),
    AtMost(
        "call_deadline_seconds",
        "task_ttl_seconds",
        "a call's record and answer would be deleted while the call may still run",
        yields=False,
    ),
    AtMost(
        "provider_concurrency_per_tenant",
        "provider_concurrency",
        "one tenant's share of a provider's upstream slots is more than the provider has",
    ),
    AtMost("max_file_bytes", "max_file_bytes_per_call", "one file may be larger than all of a call's files together"),
)
SESSION_SETTINGS = ("session_idle_seconds", "max_sessions_per_tenant")
"""Settings of MCP sessions, which stateless mode (EXAI_STATELESS_HTTP=true) does not have."""


def _number(value: float) -> str:
    return f"{value:g}"


def contradictions(settings: Settings) -> list[ConfigProblem]:
    """Pairs of settings that contradict each other, each named where the user wrote the offending value."""
    problems: list[ConfigProblem] = []
    written = settings.model_fields_set
    for bound in BOUNDS:
        low, high = getattr(settings, bound.low), getattr(settings, bound.high)
        if low <= high or (bound.yields and bound.low not in written):
            continue
        low_env, high_env = env_names(bound.low)[0], env_names(bound.high)[0]
        if bound.low in written or bound.high not in written:
            what = f"is {_number(low)}, above {high_env} ({_number(high)}): {bound.why}"
            place = where(bound.low)
        else:
            what = f"is {_number(high)}, below {low_env} ({_number(low)}): {bound.why}"
            place = where(bound.high)
        problems.append(ConfigProblem(place, what, f"set {low_env} to at most {_number(high)}, or raise {high_env}"))
    return problems


def _deprecated_names() -> list[str]:
    """Old names of renamed settings the user still writes, each with the name that replaced it."""
    environ, dotenv = {k.upper() for k in os.environ}, {k.upper() for k in dotenv_values()}
    config_file = read_config_file(file_keys())  # read without a problem moments ago, by the settings
    in_file = {k.upper().removeprefix("EXAI_") for k in (config_file.values if config_file else {})}
    found: list[str] = []
    for old, field in RENAMED.items():
        new = env_names(field)[0]
        found += [
            f"warning: {old} (in {place}) is deprecated and still read for now: rename it {new}"
            for place, there in (("the environment", old in environ), (".env", old in dotenv))
            if there
        ]
        if config_file and old.removeprefix("EXAI_") in in_file:
            found.append(
                f"warning: {old.removeprefix('EXAI_').lower()} (in {config_file.path}) is deprecated and still read "
                f"for now: rename it {field}"
            )
    return found


def setting_warnings(settings: Settings, checks_tokens: bool = False) -> list[str]:
    """Start-up warnings, one line each: unknown EXAI_* variables, old names, settings without effect, and for the
    server that checks tokens (`serve`) a token check weaker than it looks."""
    warnings = unknown_variable_warnings() + _deprecated_names()
    if settings.stateless_http:
        warnings += [
            f"warning: {where(field)} has no effect with EXAI_STATELESS_HTTP=true (stateless mode has no MCP "
            "sessions to expire or count); remove it, or turn stateless mode off"
            for field in SESSION_SETTINGS
            if field in settings.model_fields_set
        ]
    jwt = settings.jwt_secret or settings.jwt_public_key or settings.jwt_jwks_url
    if checks_tokens and jwt and not settings.jwt_audience:
        warnings.append(
            "warning: EXAI_JWT_AUDIENCE is not set, so a token signed with this key is accepted whatever audience it "
            "names (one meant for another service that shares the secret or the issuer, say); set it to the audience "
            "this daemon's tokens carry (`exai token issue` then writes it into new ones)"
        )
    return warnings
