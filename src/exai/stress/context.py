"""What every scenario is handed: the target, the simulator's control API, the scale, and a progress line."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exai.stress.sim import SimControl
from exai.stress.target import Target

Progress = Callable[[float, float, str], None]  # (done, total, note)


@dataclass
class Context:
    target: Target
    sim: SimControl
    quick: bool
    soak_seconds: float
    progress: Progress = lambda done, total, note: None
    epoch: float = field(default_factory=time.monotonic)
    where: str = "starting"  # the last progress note: what a scenario that runs out of time was doing

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def elapsed(self) -> float:
        return time.monotonic() - self.epoch

    def admin_headers(self) -> dict[str, str]:
        """Headers that let this run read a daemon's /metrics (a remote one may require an admin token)."""
        return {"Authorization": f"Bearer {self.target.token}"} if self.target.token else {}
