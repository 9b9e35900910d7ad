"""What happened recently, kept in memory since the daemon started: the one store every reader of live state uses.

`Events` writes to it (finished calls, upstream attempts, auth failures, storage errors); the `status` tool, the
status page and the alert rules read it, so they agree by construction. Time is kept in one-second slots for the
last 15 minutes: any window up to that length (the alert window, the page's charts) is a sum of slots, and memory
does not grow with traffic. Latencies are kept as log-scale histograms (buckets about 9% wide), not as lists.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from exai.observability.events import CallEvent

RETENTION_SECONDS = 900
RECENT_CALLS = 100
BUCKETS_PER_DOUBLING = 8
REFUSED = frozenset({"error", "denied", "rate_limited"})
"""Outcomes the client received as an error (a cancelled call is not one)."""


class Attempt(Protocol):
    """One upstream request as the router reports it."""

    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def latency_ms(self) -> float: ...


def latency_bucket(ms: float) -> int:
    return math.ceil(BUCKETS_PER_DOUBLING * math.log2(max(ms, 0.001)))


def bucket_upper_ms(bucket: int) -> float:
    return float(2 ** (bucket / BUCKETS_PER_DOUBLING))


def percentile(histogram: Counter[int], q: float) -> float:
    """The latency (ms) at quantile `q`: the upper edge of the bucket it falls in; 0 when there is no data."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return round(bucket_upper_ms(bucket), 1)
    return round(bucket_upper_ms(max(histogram)), 1)


@dataclass
class Slot:
    """Everything recorded in one second (or, merged, in a window of seconds)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    error_categories: Counter[str] = field(default_factory=Counter)
    latency: Counter[int] = field(default_factory=Counter)
    attempts: dict[str, Counter[str]] = field(default_factory=dict)
    marks: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return sum(count for outcome, count in self.outcomes.items() if outcome in REFUSED)

    def merge(self, other: Slot) -> None:
        self.outcomes.update(other.outcomes)
        self.error_categories.update(other.error_categories)
        self.latency.update(other.latency)
        self.marks.update(other.marks)
        for provider, outcomes in other.attempts.items():
            self.attempts.setdefault(provider, Counter()).update(outcomes)


class TenantUsage(BaseModel):
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Stats:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started_at = clock()
        self.in_flight = 0
        self.calls: Counter[tuple[str, str]] = Counter()
        self.recent_calls: deque[CallEvent] = deque(maxlen=RECENT_CALLS)
        self.providers_seen: set[str] = set()
        self.usage_day = ""
        self.usage: dict[str, TenantUsage] = {}
        self._slots: dict[int, Slot] = {}

    # ----- writing (only `Events` calls these) ----------------------------------------------------
    def call_started(self) -> None:
        self.in_flight += 1

    def call_finished(self, event: CallEvent, *, started: bool) -> None:
        if started:
            self.in_flight -= 1
        self.calls[(event.tool, event.outcome)] += 1
        self.recent_calls.append(event)
        slot = self._slot(event.finished_at)
        slot.outcomes[event.outcome] += 1
        if event.error_category is not None:
            slot.error_categories[event.error_category] += 1
        if started:
            slot.latency[latency_bucket(event.latency_s * 1000)] += 1
        self._add_usage(event)

    def attempt_finished(self, attempt: Attempt) -> None:
        now = self.clock()
        self.providers_seen.add(attempt.provider)
        self._slot(now).attempts.setdefault(attempt.provider, Counter())[attempt.outcome] += 1

    def mark(self, kind: str) -> None:
        """Count a moment of `kind` (auth_failure, storage_error, ...) for the windowed alert rules."""
        self._slot(self.clock()).marks[kind] += 1

    # ----- reading ------------------------------------------------------------------------------
    def uptime(self) -> float:
        return self.clock() - self.started_at

    def window(self, seconds: float) -> Slot:
        """Everything recorded in the last `seconds` (at most the 15 minutes kept), merged into one slot."""
        now = int(self.clock())
        merged = Slot()
        for second, slot in self._recent(now - math.ceil(seconds) + 1):
            if second <= now:
                merged.merge(slot)
        return merged

    def series(self, seconds: int = RETENTION_SECONDS, step: int = 15) -> list[tuple[int, Slot]]:
        """The last `seconds`, in `step`-second points (oldest first), each with the start of its step."""
        now = int(self.clock())
        first = (now - seconds) // step * step + step
        points = {start: Slot() for start in range(first, now + 1, step)}
        for second, slot in self._recent(first):
            if second <= now:
                points[first + (second - first) // step * step].merge(slot)
        return sorted(points.items())

    def usage_today(self) -> dict[str, TenantUsage]:
        """Tokens and cost per tenant for today (UTC), counted since the daemon started."""
        self._roll_usage_day()
        return dict(self.usage)

    # ----- internals ----------------------------------------------------------------------------
    def _slot(self, at: float) -> Slot:
        second = int(at)
        slot = self._slots.get(second)
        if slot is None:
            slot = self._slots[second] = Slot()
            if len(self._slots) > RETENTION_SECONDS + 60:
                cutoff = second - RETENTION_SECONDS
                for old in [s for s in self._slots if s < cutoff]:
                    del self._slots[old]
        return slot

    def _recent(self, since: int) -> Iterable[tuple[int, Slot]]:
        return [(second, slot) for second, slot in list(self._slots.items()) if second >= since]

    def _roll_usage_day(self) -> None:
        today = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        if today != self.usage_day:
            self.usage_day, self.usage = today, {}

    def _add_usage(self, event: CallEvent) -> None:
        self._roll_usage_day()
        usage = self.usage.setdefault(event.tenant, TenantUsage())
        usage.calls += 1
        for call in event.model_calls:
            usage.input_tokens += call.input_tokens
            usage.output_tokens += call.output_tokens
            usage.cost_usd += call.cost_usd
