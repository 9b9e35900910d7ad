"""Tables for the CLI: a rich table on a terminal; when piped, whole cells, one row a line, never cut to 80 columns."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

Cell = str | Text


def console() -> Console:
    """stdout as rich sees it; when piped, lines are never wrapped at 80 columns."""
    return Console() if sys.stdout.isatty() else Console(soft_wrap=True)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
    """Plain strings are printed as they are; `Text` cells carry their own styling (never markup from data)."""
    if sys.stdout.isatty():
        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    plain = [list(header), *([cell.plain if isinstance(cell, Text) else cell for cell in row] for row in rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*plain, strict=True)]
    for row in plain:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
