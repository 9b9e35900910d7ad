"""Regenerate the README's performance table from bench/results/overhead.json and bench/results/startup.json.

Run after `python bench/overhead.py` and `python bench/startup.py`: `python bench/report.py`. The table sits between
the `<!-- bench:start -->` and `<!-- bench:end -->` markers of README.md; nothing else is touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
VARIANTS = ("default", "auth, limits, Redis", "every feature on")


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    unit = f" {row['unit']}" if row.get("unit") else ""
    return f"{row['ratio']:.2f}{unit} {'met' if row['met'] else '**missed**'}"


def table(overhead: dict[str, Any], startup: dict[str, Any]) -> str:
    by_claim: dict[str, dict[str, dict[str, Any]]] = {}
    targets: dict[str, str] = {}
    for row in overhead["rows"]:
        by_claim.setdefault(row["claim"], {})[row["variant"]] = row
        unit = f" {row['unit']}" if row.get("unit") else ""
        targets[row["claim"]] = f"{'≥' if row['at_least'] else '≤'} {row['target']:g}{unit}"
    lines = [
        "| ratio (ours ÷ what a user could run instead) | target | as shipped | with auth, limits, Redis "
        "| every feature on (and PostgreSQL) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for claim, variants in by_claim.items():
        cells = " | ".join(_cell(variants.get(variant)) for variant in VARIANTS)
        lines.append(f"| {claim} | {targets[claim]} | {cells} |")
    stdio = {"ratio": startup["stdio_ratio"], "met": startup["stdio_ratio"] <= startup["stdio_ratio_target"]}
    lines.append(
        f"| start-up: `exai stdio` answers `initialize` ÷ bare SDK echo server | ≤ {startup['stdio_ratio_target']:g} "
        f"| {_cell(stdio)} | — | — |"
    )
    help_met = startup["help_seconds"] < startup["help_seconds_target"]
    lines.append(
        f"| `exai --help` (seconds, not a ratio) | < {startup['help_seconds_target']:g} s "
        f"| {startup['help_seconds']:.2f} s {'met' if help_met else '**missed**'} | — | — |"
    )
    load = ", ".join(f"{x:.1f}" for x in overhead["machine"]["load"])
    startup_load = ", ".join(f"{x:.1f}" for x in startup.get("machine", {}).get("load", []))
    lines += [
        "",
        f"Measured by `{overhead['command']}` ({overhead['measured']['calls_c1']} calls per subject at c=1, "
        f"{overhead['measured']['calls_c32']} at c=32; load average {load} at its end) and "
        f"`python bench/startup.py --rounds {startup['rounds']}` (load average {startup_load or 'not recorded'}) "
        f"on {overhead['machine']['cpus']} cores (the load average beside it says what else ran); every figure is in "
        "`bench/results/overhead.json` and `bench/results/startup.json`.",
    ]
    return "\n".join(lines)


def main() -> None:
    overhead = json.loads((HERE / "results" / "overhead.json").read_text())
    startup = json.loads((HERE / "results" / "startup.json").read_text())
    text = README.read_text()
    before, found, rest = text.partition(START)
    _, found_end, after = rest.partition(END)
    if not found or not found_end:
        raise SystemExit(f"README.md has no {START} ... {END} section")
    README.write_text(f"{before}{START}\n{table(overhead, startup)}\n{END}{after}")
    print(table(overhead, startup))


if __name__ == "__main__":
    main()
