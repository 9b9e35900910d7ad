"""Settings that are valid one by one but not together, and the warnings of start-up.

`contradictions` stops start-up (exit code 2, like any other configuration mistake): two values that cannot both
hold, each told as the variable the user wrote and how to fix it. `setting_warnings` is what start-up says and goes
on: unknown EXAI_* variables, old names of renamed settings, settings that mean nothing with the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from exai.config import RENAMED, Settings, dotenv_values, env_names, file_keys, unknown_variable_warnings, where
from exai.config_problems import ConfigProblem, read_config_file


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


def setting_warnings(settings: Settings) -> list[str]:
    """Start-up warnings, one line each: unknown EXAI_* variables, old names, settings without effect."""
    warnings = unknown_variable_warnings() + _deprecated_names()
    if settings.stateless_http:
        warnings += [
            f"warning: {where(field)} has no effect with EXAI_STATELESS_HTTP=true (stateless mode has no MCP "
            "sessions to expire or count); remove it, or turn stateless mode off"
            for field in SESSION_SETTINGS
            if field in settings.model_fields_set
        ]
    return warnings
