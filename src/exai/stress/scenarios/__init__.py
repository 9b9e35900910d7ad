"""One module per scenario; each has NAME, SUMMARY, CRITERION and `async def run(ctx, result)`."""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("load", "recovery", "failover", "storage", "faults", "security", "soak")


def scenario(name: str) -> ModuleType:
    return importlib.import_module(f"exai.stress.scenarios.{name}")
