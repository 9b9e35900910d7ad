"""One module per scenario; each has NAME, SUMMARY, CRITERION and `async def run(ctx, result)`.

`NAMES` is the registry and the documented order of a run (`exai stress all`). A new scenario is a module here and
its name in `NAMES`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("load", "recovery", "failover", "storage", "faults", "security", "soak", "long")


def scenario(name: str) -> ModuleType:
    return importlib.import_module(f"exai.stress.scenarios.{name}")
