"""Runs the chosen scenarios one after another with live progress, then writes the reports."""

from __future__ import annotations

import asyncio
import os
import platform
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from exai.stress.context import Context
from exai.stress.report import summary_table, write_reports
from exai.stress.results import ScenarioResult
from exai.stress.scenarios import scenario
from exai.stress.sim import SimControl
from exai.stress.target import Target

DEFAULT_CEILING_SECONDS = 1800.0  # per scenario (the soak: its duration plus this)
QUICK_CEILING_SECONDS = 150.0


@dataclass
class RunOptions:
    names: list[str]
    quick: bool
    soak_seconds: float
    out: Path
    command: str
    secrets: tuple[str, ...] = ()
    """Values (the deployment's token) the reports must never contain."""


def _running_table(results: list[ScenarioResult]) -> Table:
    table = Table(title="scenarios", expand=False)
    for column in ("scenario", "result", "seconds", "calls", "errors"):
        table.add_column(column)
    for r in results:
        verdict = "[yellow]skipped[/]" if r.skipped else ("[green]pass[/]" if r.passed else "[red]FAIL[/]")
        errors = sum(not s.ok for s in r.samples)
        table.add_row(r.name, verdict, f"{r.duration_s:.0f}", str(len(r.samples)), str(errors))
    return table


async def _run_one(ctx: Context, name: str, ceiling: float) -> ScenarioResult:
    module = scenario(name)
    result = ScenarioResult(name, module.SUMMARY, module.CRITERION)
    ctx.epoch = time.monotonic()
    try:
        async with asyncio.timeout(ceiling):
            await module.run(ctx, result)
    except TimeoutError:
        result.check("finished in time", f"<= {ceiling:.0f} s", "still running: stopped", False)
    except Exception as exc:  # a scenario that breaks is a failed scenario with its reason, not a lost run
        result.check("ran to the end", "no exception", f"{type(exc).__name__}: {exc}"[:400], False)
        result.notes.append(traceback.format_exc()[-2000:])
    finally:
        await ctx.sim.clear_faults()
    result.duration_s = time.monotonic() - ctx.epoch
    return result


async def run_stress(target: Target, options: RunOptions, console: Console) -> dict[str, Any]:
    started = time.monotonic()
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
    try:
        with Live(Group(progress, _running_table(results)), console=console, refresh_per_second=4) as live:
            for name in options.names:
                task = tasks[name]
                progress.start_task(task)

                def update(done: float, total: float, note: str, task: TaskID = task) -> None:
                    progress.update(task, completed=done, total=total, note=note)

                ctx = Context(target, sim, options.quick, options.soak_seconds, update)
                ceiling = QUICK_CEILING_SECONDS if options.quick else DEFAULT_CEILING_SECONDS
                if name == "soak":
                    ceiling = options.soak_seconds + ceiling
                result = await _run_one(ctx, name, ceiling)
                results.append(result)
                progress.update(task, note="pass" if result.passed else (result.skipped or "FAIL"))
                progress.stop_task(task)
                live.update(Group(progress, _running_table(results)))
    finally:
        await sim.close()
    report = {
        "command": options.command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "target": "local" if target.local else target.remote.url if target.remote else "",
        "storage": target.storage,
        "quick": options.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_s": round(time.monotonic() - started, 1),
        "passed": all(r.passed or r.skipped for r in results) and any(r.passed for r in results),
        "scenarios": [r.to_json() for r in results],
    }
    write_reports(report, options.out, options.secrets)
    console.print(summary_table(report))
    return report
