"""The reports of a run: JSON (for machines), a summary table (for the terminal) and HTML (for people)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from exai.stress.html import render_html


def write_reports(report: dict[str, Any], out: Path, secrets: tuple[str, ...] = ()) -> None:
    """Both reports, readable by their owner only (they describe a deployment); no `secrets` in them."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.chmod(0o700)  # also an existing folder: mkdir's mode applies to new ones only
    _write_private(out / "stress.json", json.dumps(report, indent=2) + "\n", secrets)
    _write_private(out / "stress.html", render_html(report), secrets)


def _write_private(path: Path, text: str, secrets: tuple[str, ...]) -> None:
    for secret in secrets:  # belt and braces: an error note quoting a header must not carry the token either
        text = text.replace(secret, "***")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older report of the same name keeps its mode otherwise
    with os.fdopen(fd, "w") as file:
        file.write(text)


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
