"""Configuration mistakes, told the way the user wrote them: the variable or `file:line`, what is wrong, the fix.

`config.py` says what the settings are; this module reads the optional TOML file (refusing unknown keys) and
turns every kind of failure into a `ConfigProblem` that names the place the user can edit.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exai.errors import InvalidInput

CONFIG_FILE_ENV = "EXAI_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "exai.toml"
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    where: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}\n  fix: {self.fix}"


class ConfigError(InvalidInput):
    """One or more configuration problems; the message is the whole report, one or two lines per problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems), code="config_invalid")
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The parsed TOML settings file, with its text kept so problems can name a line."""

    path: Path
    values: dict[str, Any]
    text: str

    def line_of(self, key: str) -> int | None:
        pattern = re.compile(rf"""^\s*(\[+\s*)?["']?{re.escape(key)}["']?\s*(=|\.|\])""", re.IGNORECASE)
        for number, line in enumerate(self.text.splitlines(), start=1):
            if pattern.match(line):
                return number
        return None

    def where(self, key: str) -> str:
        line = self.line_of(key)
        return f"{self.path}:{line}" if line else f"{self.path} ({key})"


def config_file_path() -> tuple[Path, bool]:
    """The TOML file to read, and whether the user named it (a named file must exist)."""
    named = os.environ.get(CONFIG_FILE_ENV)
    return Path(named or DEFAULT_CONFIG_FILE), bool(named)


def read_config_file(known_keys: Iterable[str]) -> ConfigFile | None:
    """Read the settings file; a missing named file, bad TOML and unknown keys are problems, never ignored."""
    path, named = config_file_path()
    if not named and not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [
                ConfigProblem(
                    CONFIG_FILE_ENV,
                    f"the file {path} does not exist",
                    f"point {CONFIG_FILE_ENV} at an existing TOML file, or unset it",
                )
            ]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        where = CONFIG_FILE_ENV if named else str(path)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            [ConfigProblem(where, f"cannot read {path}: {reason}", "make it a readable UTF-8 TOML file")]
        ) from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_syntax_problem(path, str(exc))]) from None
    config = ConfigFile(path, values, text)
    known = {key.lower(): key for key in known_keys}
    unknown = [key for key in values if key.lower() not in known]
    if unknown:
        raise ConfigError([_unknown_key_problem(config, key, list(known.values())) for key in unknown])
    return config


def _toml_syntax_problem(path: Path, message: str) -> ConfigProblem:
    position = _TOML_POSITION.search(message)
    if position is None:
        return ConfigProblem(str(path), f"is not valid TOML: {message}", "correct the TOML syntax (see toml.io)")
    line, column = position.groups()
    what = f"not valid TOML: {message[: position.start()]} (column {column})"
    return ConfigProblem(f"{path}:{line}", what, "correct the TOML syntax on that line (see toml.io)")


def _unknown_key_problem(config: ConfigFile, key: str, known: list[str]) -> ConfigProblem:
    close = difflib.get_close_matches(key.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigProblem(
        config.where(key),
        f"unknown setting '{key}'{hint}",
        "remove it, or use a setting the README documents (lower-case, without the EXAI_ prefix)",
    )


def where_set(names: list[str], file_keys: list[str], dotenv: Mapping[str, str | None]) -> str:
    """Where the user set a value: the environment variable as written, `.env`, or the TOML file's line."""
    environ = {k.lower(): k for k in os.environ}
    for name in names:
        if name.lower() in environ:
            return environ[name.lower()]
    in_dotenv = {k.lower(): k for k in dotenv}
    for name in names:
        if name.lower() in in_dotenv:
            return f"{in_dotenv[name.lower()]} (in .env)"
    path, _ = config_file_path()
    try:
        config = ConfigFile(path, {}, path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return names[0]
    for key in file_keys:
        if config.line_of(key):
            return config.where(key)
    return names[0]


IGNORED_PREFIXES = ("EXAI_TEST_",)  # set by the test suite for itself, never settings
DEPLOYMENT_VARIABLES = frozenset(
    {
        "EXAI_BALANCER_PORT",
        "EXAI_BASE_IMAGE",
        "EXAI_DB_HOST",
        "EXAI_DB_PORT",
        "EXAI_DEBIAN_MIRROR",
        "EXAI_GRAFANA_PASSWORD_FILE",
        "EXAI_IMAGE",
        "EXAI_METRICS_TOKEN_FILE",
        "EXAI_POSTGRES_IMAGE",
        "EXAI_POSTGRES_PASSWORD_FILE",
        "EXAI_PUBLIC_HOST",
        "EXAI_PUBLISH_PORT",
        "EXAI_REDIS_HOST",
        "EXAI_REDIS_IMAGE",
        "EXAI_REDIS_PASSWORD_FILE",
        "EXAI_REDIS_PORT",
        "EXAI_STDIO_CONNECT",
    }
)
"""Read by compose.yaml and deploy/ (the same .env serves both), never by the daemon: not worth a warning."""


def variable_places(dotenv: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """Every variable of the environment and of `.env`, with where it is set, as warnings name it."""
    return [(name, "the environment") for name in os.environ] + [(name, ".env") for name in dotenv]


def unknown_variables(known: Iterable[str], dotenv: Mapping[str, str | None]) -> list[str]:
    """One warning line per EXAI_* variable in the environment or `.env` that no setting reads.

    Warnings, not errors: other tools may set EXAI_-prefixed variables of their own."""
    known_names = {name.upper() for name in known} | {CONFIG_FILE_ENV}
    warnings: list[str] = []
    for name, place in variable_places(dotenv):
        upper = name.upper()
        if not upper.startswith("EXAI_") or upper in known_names or upper.startswith(IGNORED_PREFIXES):
            continue
        if upper in DEPLOYMENT_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, sorted(known_names), n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"warning: {name} (in {place}) is not an EX-AI setting and is ignored{hint}")
    return warnings
