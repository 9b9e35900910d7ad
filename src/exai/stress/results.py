"""What a scenario measures and how it is judged: checks, figures and the series the charts draw."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Check:
    """One pass criterion: what was required, what was measured, and whether it held."""

    name: str
    required: str
    measured: str
    passed: bool


@dataclass
class Sample:
    """One tool call as a client saw it."""

    t: float  # seconds since the scenario started
    ms: float
    ok: bool
    category: str = ""  # the error's category when not ok
    tool: str = ""
    marker: str = ""  # the simulator marker in its prompt ("" when none)
    excused: bool = False  # failed because the scenario itself cut it off (a deliberate SIGKILL): not paid-then-failed
    detail: str = ""  # when not ok: what failed, in words (the server's message, or the client's exception)


@dataclass
class ScenarioResult:
    name: str
    summary: str
    criterion: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    resources: list[tuple[float, float, float]] = field(default_factory=list)  # (t, rss MB, open fds)
    duration_s: float = 0.0
    skipped: str | None = None
    machine_load: list[float] = field(default_factory=list)  # 1-minute load average: at its end, then during it

    def check(self, name: str, required: str, measured: str, passed: bool, *, judged: bool = True) -> bool:
        """Record a criterion; one not `judged` (a latency bound in a quick run, too small and short to judge on
        a shared machine) is reported as a note instead."""
        if judged:
            self.checks.append(Check(name, required, measured, passed))
        else:
            self.notes.append(f"reported, judged at full scale only: {name} {measured} (required {required})")
        return passed

    @property
    def passed(self) -> bool:
        return self.skipped is None and bool(self.checks) and all(c.passed for c in self.checks)

    def errors_by_category(self) -> dict[str, int]:
        return dict(Counter(s.category or "unknown" for s in self.samples if not s.ok))

    def error_examples(self, per_category: int = 3) -> dict[str, list[str]]:
        """Up to `per_category` distinct messages of each error category: what the failures said."""
        examples: dict[str, list[str]] = {}
        for s in self.samples:
            if not s.ok and s.detail:
                seen = examples.setdefault(s.category or "unknown", [])
                if s.detail not in seen and len(seen) < per_category:
                    seen.append(s.detail)
        return examples

    def latency_figures(self) -> dict[str, float]:
        ok = sorted(s.ms for s in self.samples if s.ok)
        if not ok:
            return {}
        span = max(s.t for s in self.samples) - min(s.t - s.ms / 1000 for s in self.samples)
        return {
            "calls": len(self.samples),
            "p50_ms": round(percentile(ok, 0.50), 1),
            "p95_ms": round(percentile(ok, 0.95), 1),
            "p99_ms": round(percentile(ok, 0.99), 1),
            "calls_per_s": round(len(self.samples) / span, 1) if span > 0 else 0.0,
        }

    def series(self) -> dict[str, Any]:
        """Per-second latency percentiles and call rates, and the resource readings, for the charts."""
        by_second: dict[int, list[Sample]] = {}
        for s in self.samples:
            by_second.setdefault(int(s.t), []).append(s)
        latency, rate = [], []
        for second in sorted(by_second):
            done = by_second[second]
            ok = sorted(s.ms for s in done if s.ok)
            if ok:
                latency.append([second, percentile(ok, 0.5), percentile(ok, 0.95), percentile(ok, 0.99)])
            rate.append([second, len(done)])
        return {
            "latency_ms": latency,
            "calls_per_s": rate,
            "errors_by_category": self.errors_by_category(),
            "rss_mb": [[t, rss] for t, rss, _ in self.resources],
            "open_fds": [[t, fds] for t, _, fds in self.resources],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "skipped": self.skipped,
            "summary": self.summary,
            "criterion": self.criterion,
            "duration_s": round(self.duration_s, 1),
            "load_average_max": max(self.machine_load, default=None),
            "checks": [asdict(c) for c in self.checks],
            "figures": {**self.latency_figures(), **self.figures},
            "error_examples": self.error_examples(),
            "notes": self.notes,
            "series": self.series(),
        }


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile of an already sorted list (nearest rank)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
