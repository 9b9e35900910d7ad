"""Runs the chosen scenarios one after another with live progress, then writes the reports.

Each scenario is fenced: whatever it started is stopped when it ends (passed, failed, out of time or interrupted),
and the next one starts only when no process of the previous one is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from exai.background import BackgroundLoop
from exai.stress.context import Context
from exai.stress.processes import live_children
from exai.stress.report import summary_table, write_reports
from exai.stress.results import Check, ScenarioResult
from exai.stress.scenarios import scenario
from exai.stress.sim import SimControl
from exai.stress.target import Target

DEFAULT_CEILING_SECONDS = 1800.0  # per scenario (the soak: its duration plus this)
QUICK_CEILING_SECONDS = 900.0  # generous: a quick run must give a verdict on a busy machine, not run out of time
LOAD_SAMPLE_SECONDS = 5.0


@dataclass
class RunOptions:
    names: list[str]
    quick: bool
    soak_seconds: float
    out: Path
    command: str
    secrets: tuple[str, ...] = ()
    """Values (the deployment's token) the reports must never contain."""


class LoadAverage:
    """The machine's 1-minute load average before, during (every few seconds) and after the run."""

    def __init__(self) -> None:
        self.readings: list[tuple[float, float]] = []
        self.started = time.monotonic()
        self._sampling = BackgroundLoop("exai-stress-load", self._sample, LOAD_SAMPLE_SECONDS)

    def read(self) -> float:
        value = round(os.getloadavg()[0], 2)
        self.readings.append((round(time.monotonic() - self.started, 1), value))
        return value

    async def _sample(self) -> None:
        self.read()

    def start(self) -> None:
        self._sampling.start()

    async def stop(self) -> None:
        await self._sampling.close()

    def between(self, start: float, end: float) -> list[float]:
        return [v for t, v in self.readings if start <= t <= end]


def _running_table(results: list[ScenarioResult]) -> Table:
    table = Table(title="scenarios", expand=False)
    for column in ("scenario", "result", "seconds", "calls", "errors"):
        table.add_column(column)
    for r in results:
        verdict = "[yellow]skipped[/]" if r.skipped else ("[green]pass[/]" if r.passed else "[red]FAIL[/]")
        errors = sum(not s.ok for s in r.samples)
        table.add_row(r.name, verdict, f"{r.duration_s:.0f}", str(len(r.samples)), str(errors))
    return table


def _partial(ctx: Context, result: ScenarioResult) -> str:
    errors = result.errors_by_category()
    shown = ", ".join(f"{k} {v:,}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])) or "none"
    return f"during '{ctx.where}'; so far {len(result.samples):,} calls, errors: {shown}"


def _stop_started(target: Target, mark: tuple[int, int] | None, before: set[int]) -> list[str]:
    """Stop what the scenario started (daemons, throwaway Redis and PostgreSQL, client processes); what still runs."""
    alive = target.group.stop_since(mark) if target.group is not None and mark is not None else []
    strays = {pid: name for pid, name in live_children().items() if pid not in before}
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while strays and time.monotonic() < deadline:
        strays = {pid: name for pid, name in strays.items() if pid in live_children()}
        time.sleep(0.1)
    return alive + [f"{name} (pid {pid})" for pid, name in strays.items()]


async def _paid_then_failed(ctx: Context, result: ScenarioResult) -> None:
    """Calls that failed for their client although the simulator answered their prompt: paid for, then lost."""
    failed = [s for s in result.samples if not s.ok and s.marker and not s.excused]
    try:
        counts = await ctx.sim.markers([s.marker for s in failed])
    except Exception as exc:  # an older simulator (remote target) without /_sim/markers: say so, do not guess
        result.check("paid, then failed", "0 (counted by the simulator)", f"cannot count: {exc}"[:200], False)
        return
    paid = [s for s in failed if counts.get(s.marker, {}).get("answered", 0) > 0]
    by_category: dict[str, int] = {}
    for s in paid:
        by_category[s.category] = by_category.get(s.category, 0) + 1
    result.figures["paid, then failed"] = len(paid)
    shown = ", ".join(f"{k} {v:,}" for k, v in sorted(by_category.items()))
    detail = f"{len(paid):,} of {len(failed):,} failed calls" + (f" ({shown})" if shown else "")
    result.check("paid, then failed", "0 (counted by the simulator)", detail, not paid)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups: what a task group's failure was about."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _traceback_of(exc: BaseException) -> str:
    """The frames of this package (where the scenario was), then the exception (for a task group, also its first
    inner error and where that was raised): short enough to read in a report."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/exai/" in f.filename]
    lines = traceback.format_list(frames[-8:]) + traceback.format_exception_only(exc)
    leaf = _leaf(exc)
    if leaf is not exc:
        lines += ["inner error:\n", *traceback.format_list(traceback.extract_tb(leaf.__traceback__)[-4:])]
        lines += traceback.format_exception_only(leaf)
    return "Traceback (this package's frames):\n" + "".join(lines)


async def run_scenario(ctx: Context, module: ModuleType, ceiling: float) -> tuple[ScenarioResult, list[str]]:
    """Run one scenario within `ceiling` seconds; afterwards stop everything it started, whatever happened.
    Returns the result and what could not be stopped (the run must not go on while anything of it lives)."""
    result = ScenarioResult(module.NAME, module.SUMMARY, module.CRITERION)
    target = ctx.target
    mark = target.group.mark() if target.group is not None else None
    before = set(live_children())
    ctx.epoch = time.monotonic()
    leftovers: list[str] = []
    try:
        async with asyncio.timeout(ceiling) as limit:
            await module.run(ctx, result)
    except TimeoutError as exc:
        if limit.expired():  # the scenario's own ceiling, not a timeout inside it
            result.check("finished in time", f"<= {ceiling:.0f} s", f"ran out of time {_partial(ctx, result)}", False)
        else:
            result.check(
                "ran to the end", "no exception", f"a timeout inside the scenario: {_partial(ctx, result)}", False
            )
            result.notes.append(_traceback_of(exc))
    except Exception as exc:  # a scenario that breaks is a failed scenario with its reason, not a lost run
        leaf = _leaf(exc)
        result.check("ran to the end", "no exception", f"{type(leaf).__name__}: {leaf}"[:400], False)
        result.notes.append(_traceback_of(exc))
    finally:  # also on Ctrl-C / SIGTERM (a cancellation): nothing it started outlives it
        if target.group is not None and mark is not None:
            result.notes += [f"a process died during the scenario: {e}" for e in target.group.exited_since(mark)]
        with contextlib.suppress(Exception):
            await ctx.sim.clear_faults()
        leftovers = await asyncio.to_thread(_stop_started, target, mark, before)
        result.duration_s = time.monotonic() - ctx.epoch
    if not result.skipped:
        await _paid_then_failed(ctx, result)
        stopped = ", ".join(leftovers) or "none"
        result.check("stopped what it started", "nothing left running", f"left running: {stopped}", not leftovers)
    return result, leftovers


async def run_stress(target: Target, options: RunOptions, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    load = LoadAverage()
    load_before = load.read()
    load.start()
    sim = SimControl(target.sim_url)
    results: list[ScenarioResult] = []
    progress = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    )
    tasks: dict[str, TaskID] = {n: progress.add_task(n, total=None, note="waiting", start=False) for n in options.names}
    interrupted = False
    heard = _remember_interrupts()
    try:
        with Live(Group(progress, _running_table(results)), console=console, refresh_per_second=4) as live:
            for name in options.names:
                task = tasks[name]
                progress.start_task(task)
                ctx = Context(target, sim, options.quick, options.soak_seconds)

                def update(done: float, total: float, note: str, task: TaskID = task, ctx: Context = ctx) -> None:
                    ctx.where = note
                    progress.update(task, completed=done, total=total, note=note)

                ctx.progress = update
                ceiling = QUICK_CEILING_SECONDS if options.quick else DEFAULT_CEILING_SECONDS
                if name == "soak":
                    ceiling = options.soak_seconds + ceiling
                began = time.monotonic() - load.started
                result, leftovers = await run_scenario(ctx, scenario(name), ceiling)
                ended = time.monotonic() - load.started
                result.machine_load = [load.read(), *load.between(began, ended)]
                results.append(result)
                progress.update(task, note="pass" if result.passed else (result.skipped or "FAIL"))
                progress.stop_task(task)
                live.update(Group(progress, _running_table(results)))
                if leftovers:
                    _refuse_rest(results, options.names, name, leftovers)
                    break
    except asyncio.CancelledError:  # Ctrl-C: each scenario's cleanup has run; the report says what was done
        interrupted = True
        raise
    finally:
        signal.signal(signal.SIGINT, heard.previous)
        interrupted = interrupted or heard.count > 0
        await load.stop()
        await sim.close()
        report = _report(target, options, results, started, load, load_before, interrupted)
        write_reports(report, options.out, options.secrets)
    console.print(summary_table(report))
    return report


@dataclass
class _Interrupts:
    previous: Any
    count: int = 0


def _remember_interrupts() -> _Interrupts:
    """Ctrl-C (and SIGTERM, which the command turns into SIGINT) is counted here before asyncio's own handler cancels
    the run: a cancellation that some code on the way swallows can no longer make an interrupted run look finished
    (the report says interrupted, and the command exits 130)."""
    heard = _Interrupts(signal.getsignal(signal.SIGINT))

    def on_sigint(signum: int, frame: Any) -> None:
        heard.count += 1
        if callable(heard.previous):
            heard.previous(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    return heard


def _refuse_rest(results: list[ScenarioResult], names: list[str], name: str, leftovers: list[str]) -> None:
    why = f"not run: {name} left processes running ({', '.join(leftovers)})"
    for later in names[names.index(name) + 1 :]:
        module = scenario(later)
        skipped = ScenarioResult(later, module.SUMMARY, module.CRITERION, skipped=why)
        skipped.checks.append(Check("started", "the previous scenario stopped everything", why, False))
        results.append(skipped)


def _report(
    target: Target,
    options: RunOptions,
    results: list[ScenarioResult],
    started: float,
    load: LoadAverage,
    load_before: float,
    interrupted: bool,
) -> dict[str, Any]:
    during = [v for _, v in load.readings[1:]]
    return {
        "command": options.command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": "local" if target.local else target.remote.url if target.remote else "",
        "storage": target.storage,
        "isolation": {"redis_db": target.isolation.redis_db, "tenant": target.isolation.tenant},
        "quick": options.quick,
        "interrupted": interrupted,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "load_average_before": load_before,
            "load_average_during_max": max(during, default=None),
            "load_average_during_mean": round(sum(during) / len(during), 2) if during else None,
            "load_average_after": round(os.getloadavg()[0], 2),
            "load_average_series": [list(r) for r in load.readings],
        },
        "duration_s": round(time.monotonic() - started, 1),
        "passed": not interrupted
        and all(r.passed for r in results if not r.skipped or r.checks)
        and all(r.passed or r.skipped for r in results)
        and any(r.passed for r in results),
        "scenarios": [r.to_json() for r in results],
    }
