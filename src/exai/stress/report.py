"""The reports of a run: JSON (for machines), a summary table (for the terminal) and HTML (for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from exai.stress.html import render_html


def write_reports(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "stress.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "stress.html").write_text(render_html(report))


def summary_table(report: dict[str, Any]) -> Table:
    verdict = "PASS" if report["passed"] else "FAIL"
    table = Table(title=f"exai stress: {verdict} in {report['duration_s']:.0f} s", show_lines=False)
    for column in ("scenario", "result", "criterion", "measured"):
        table.add_column(column)
    for s in report["scenarios"]:
        result = "skipped" if s["skipped"] else ("pass" if s["passed"] else "FAIL")
        style = "yellow" if s["skipped"] else ("green" if s["passed"] else "red")
        checks = s["checks"] or [{"name": s["skipped"] or "", "required": "", "measured": "", "passed": True}]
        for index, c in enumerate(checks):
            first = index == 0
            table.add_row(
                s["name"] if first else "",
                Text(result, style=style) if first else Text(""),
                Text(f"{'' if c['passed'] else 'NO: '}{c['name']}: {c['required']}".rstrip(": ")),
                Text(c["measured"]),
            )
    return table
