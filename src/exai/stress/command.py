"""`exai stress`: check the arguments, set up the target, run, and always tear down what was started."""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import cast, get_args

from rich.console import Console

from exai.stress.runner import RunOptions, run_stress
from exai.stress.scenarios import NAMES
from exai.stress.target import Isolation, Storage, Target, local_target, remote_target


class UsageError(Exception):
    """A bad argument: the message says what was wrong and how to fix it."""


def _names(requested: list[str]) -> list[str]:
    if not requested or requested == ["all"]:
        return list(NAMES)
    unknown = [n for n in requested if n not in NAMES]
    if unknown:
        raise UsageError(f"unknown scenario {', '.join(unknown)}; choose from: all, {', '.join(NAMES)}")
    return [n for n in NAMES if n in requested]  # always in the documented order


def _loopback(url: str, what: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise UsageError(f"{what} {url} is not a loopback address; the stress run only targets this machine")
    return url


def _isolation(redis_db: int | None, tenant: str | None) -> Isolation:
    if redis_db is not None and not 0 <= redis_db <= 15:
        raise UsageError(f"--redis-db {redis_db} is not a Redis database number; choose 0-15 (default: random 1-15)")
    if tenant is not None and not (tenant.isascii() and tenant.replace("-", "").replace("_", "").isalnum()):
        raise UsageError(f"--tenant {tenant!r}: use letters, digits, '-' and '_' only")
    return Isolation.chosen(redis_db, tenant)


def _target_builder(
    target: str, url: str | None, sim_url: str | None, token: str | None, storage: str, isolation: Isolation
) -> Callable[[], Target]:
    """What to start (or reach) once the arguments are known to be good."""
    if storage not in get_args(Storage):
        raise UsageError(f"--storage {storage} is not one of: {', '.join(get_args(Storage))}")
    if url or sim_url or target != "local":
        if not (url and sim_url):
            raise UsageError("an existing deployment needs both --url URL and --sim-url URL")
        daemon, simulator = _loopback(url, "--url"), _loopback(sim_url, "--sim-url")
        return partial(remote_target, daemon, simulator, token, isolation)
    return partial(local_target, cast(Storage, storage), isolation)


def run_command(
    scenarios: list[str],
    *,
    quick: bool,
    target: str,
    url: str | None,
    sim_url: str | None,
    token: str | None,
    storage: str,
    soak_seconds: float,
    out: Path,
    redis_db: int | None = None,
    tenant: str | None = None,
) -> int:
    """Exit code: 0 when every scenario run passed, 1 when one failed, 2 for a usage error."""
    console = Console(stderr=True)
    try:
        names = _names(scenarios)
        build = _target_builder(target, url, sim_url, token, storage, _isolation(redis_db, tenant))
    except UsageError as exc:
        print(f"exai stress: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated run stops what it started, as after Ctrl-C
    # A run started with SIGINT ignored (a background job of a non-interactive shell: CI, nohup scripts) would only
    # count Ctrl-C and SIGTERM and go on through every scenario: asyncio.run turns SIGINT into a cancellation only
    # where it finds Python's default handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = "exai stress " + shlex.join(recorded_arguments(sys.argv[2:]))
    built: Target | None = None
    try:
        built = build()
        options = RunOptions(names, quick, soak_seconds, out, command, secrets=(token,) if token else ())
        report = asyncio.run(run_stress(built, options, console))
    except KeyboardInterrupt:  # every started scenario has stopped what it started; the report says how far it got
        console.print(f"interrupted: partial reports in {out / 'stress.json'}, {out / 'stress.html'}")
        return 130
    finally:
        if built is not None:
            built.close()
    if report["interrupted"]:
        console.print(f"interrupted: partial reports in {out / 'stress.json'}, {out / 'stress.html'}")
        return 130
    console.print(f"reports: {out / 'stress.json'}, {out / 'stress.html'}")
    return 0 if report["passed"] else 1


SECRET_OPTIONS = ("--token",)
REDACTED = "***"


def recorded_arguments(argv: list[str]) -> list[str]:
    """The arguments as the reports show them: the value of every secret option replaced, never echoed."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(REDACTED)
            hide_next = False
        elif arg in SECRET_OPTIONS:
            shown.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{name}=" for name in SECRET_OPTIONS)):
            shown.append(f"{arg.partition('=')[0]}={REDACTED}")
        else:
            shown.append(arg)
    return shown


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM becomes SIGINT: inside asyncio.run that cancels the run (every scenario's cleanup runs), outside it
    raises KeyboardInterrupt."""
    signal.raise_signal(signal.SIGINT)
