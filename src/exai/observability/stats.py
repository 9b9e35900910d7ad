"""In-process counters of tool calls, read by the `status` tool and `/readyz`."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class CallStats:
    started_at: float = field(default_factory=time.time)
    in_flight: int = 0
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    recent_errors: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=1000))
    recent_calls: deque[tuple[float, str, str, float]] = field(default_factory=lambda: deque(maxlen=5000))

    def begin(self) -> None:
        self.in_flight += 1

    def end(
        self, tool: str, outcome: str, error_category: str | None = None, latency_ms: float = 0.0, started: bool = True
    ) -> None:
        if started:
            self.in_flight -= 1
        self.calls[(tool, outcome)] += 1
        self.recent_calls.append((time.time(), tool, outcome, latency_ms))
        if error_category is not None:
            self.recent_errors.append((time.time(), tool, error_category))

    def uptime(self) -> float:
        return time.time() - self.started_at

    def errors_since(self, seconds: float) -> Counter[str]:
        cutoff = time.time() - seconds
        return Counter(category for at, _, category in self.recent_errors if at >= cutoff)
