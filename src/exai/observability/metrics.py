"""Prometheus metrics, in a registry of the daemon's own (served at /metrics).

Besides the exai_* series, /metrics carries the standard process (memory, CPU, open files), platform and GC
collectors of prometheus-client, and the rate limiter's state read when scraped.

`exai serve` runs one process; for several worker processes set PROMETHEUS_MULTIPROC_DIR and prometheus-client's
multiprocess mode aggregates the exai_* series (see README). Process, GC and limiter readings belong to one process
and cannot be summed; in that mode they are exported for the process that answers the scrape, with a `pid` label.

Every counter is exported at 0 for its known labels from the start (error categories, rate limits, storage
operations, and each enabled tool's outcomes): Prometheus' `increase()` needs a sample before the first failure,
or a short outage (the first storage error ever) is never seen by an alert rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exai.errors import Category
from exai.observability.health import LimiterHealth, limiter_health
from exai.observability.process import ProcessMeter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FINE_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0065,
    0.008,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    1,
    5,
)
"""Milliseconds apart around the 5 ms overhead bound and the 10 ms commit bound: a store's commit or the gateway's
own time is read from these, and a p95 between two coarse buckets would be a guess."""
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
RATE_LIMITS = ("rpm", "concurrency", "tokens", "stored_text", "sessions", "tasks", "unavailable")
"""The `limit` label of exai_rate_limit_rejections_total: the reasons security/limits.py refuses a call for."""
STORAGE_OPERATIONS = ("read_thread", "append_turns", "create_call", "finish_call", "read_call")
"""The `operation` label of exai_storage_errors_total and exai_storage_latency_seconds: a thread's reads and writes
(conversations/threads.py) and a call's record, written before any model is asked and when it ends, and read by
its waiting requests, `collect` and the task methods (server/call_records.py)."""
LIMITER_OPERATIONS = ("acquire", "release", "reserve_tokens", "settle", "stored_text", "count")
"""The `operation` label of exai_limiter_latency_seconds: the Redis round trips of security/limits.py a call waits
for (its slot, its tokens, a per-minute window of sessions or task requests)."""
TOOL_OUTCOMES = ("ok", "error", "cancelled", "denied", "rate_limited")


class LimiterCollector(Collector):
    """exai_limiter_degraded and exai_limiter_redis_errors_total, read from the limiter when scraped."""

    def __init__(self, read: Callable[[], LimiterHealth]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        state = self.read()
        yield GaugeMetricFamily(
            "exai_limiter_degraded",
            "1 while the rate limiter cannot reach Redis and each replica enforces the limits alone",
            value=int(state.degraded),
        )
        yield CounterMetricFamily(
            "exai_limiter_redis_errors", "Failed Redis operations of the rate limiter", value=state.redis_errors
        )


class AdmissionCollector(Collector):
    """exai_admission_saturation, read from admission control when scraped."""

    def __init__(self, read: Callable[[], float]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "exai_admission_saturation",
            "Calls running and waiting over what this replica admits (0..1; at 1 new calls are refused)",
            value=round(self.read(), 4),
        )


class WithPid(Collector):
    """Another collector's series, each labelled with this process's id (for multiprocess mode)."""

    def __init__(self, inner: Collector) -> None:
        self.inner = inner

    def collect(self) -> Iterable[Metric]:
        pid = str(os.getpid())
        for family in self.inner.collect():
            family.samples = [s._replace(labels={**s.labels, "pid": pid}) for s in family.samples]
            yield family


class Metrics:
    def __init__(
        self,
        limiter_state: Callable[[], LimiterHealth] = lambda: limiter_health(None),
        admission_saturation: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.process_meter = ProcessMeter()
        self.this_process = CollectorRegistry()
        """Readings of this process only: resources, garbage collection, the rate limiter, admission control."""
        self.this_process.register(self.process_meter.collector)
        GCCollector(registry=self.this_process)
        self.this_process.register(LimiterCollector(limiter_state))
        self.this_process.register(AdmissionCollector(admission_saturation))
        r = self.registry
        PlatformCollector(registry=r)
        r.register(self.this_process)
        self.tool_calls = Counter("exai_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"], registry=r)
        self.tool_latency = Histogram(
            "exai_tool_latency_seconds", "Tool call latency", ["tool"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.provider_calls = Counter(
            "exai_provider_calls",
            "Upstream calls by provider, model and outcome",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "exai_upstream_latency_seconds",
            "Upstream call latency",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gateway_overhead = Histogram(
            "exai_gateway_overhead_seconds",
            "Tool latency minus time spent waiting for upstreams",
            ["tool"],
            buckets=FINE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "exai_tokens", "Tokens by provider, model and direction", ["provider", "model", "direction"], registry=r
        )
        self.cost = Counter("exai_cost_usd", "Estimated cost in US dollars", ["provider", "model"], registry=r)
        self.errors = Counter("exai_errors", "Errors returned to clients by category", ["category"], registry=r)
        self.breaker = Gauge(
            "exai_breaker_state",
            "Circuit breaker for every tenant: 0 closed (or keeping out only tenants whose own calls failed while "
            "others had answers), 1 half-open, 2 open",
            ["provider", "model"],
            registry=r,
        )
        self.rate_limited = Counter("exai_rate_limit_rejections", "Calls refused by rate limits", ["limit"], registry=r)
        self.auth_failures = Counter("exai_auth_failures", "Requests refused for a bad or missing token", registry=r)
        self.in_flight = Gauge("exai_in_flight_calls", "Tool calls in flight", registry=r)
        self.storage_latency = Histogram(
            "exai_storage_latency_seconds",
            "Storage operation latency",
            ["operation"],
            buckets=FINE_BUCKETS,
            registry=r,
        )
        self.storage_errors = Counter("exai_storage_errors", "Failed storage operations", ["operation"], registry=r)
        self.loop_lag = Histogram(
            "exai_event_loop_lag_seconds",
            "How late the event loop ran a timer that was due (every await of a call waits this beside its own work)",
            buckets=FINE_BUCKETS,
            registry=r,
        )
        self.limiter_latency = Histogram(
            "exai_limiter_latency_seconds",
            "Round trips of the shared rate limiter to Redis",
            ["operation"],
            buckets=FINE_BUCKETS,
            registry=r,
        )
        self.task_events = Counter(
            "exai_task_events", "Durable calls created as tasks, cancelled, collected or lost", ["event"], registry=r
        )
        for event in ("created", "cancelled", "collected", "lost"):
            self.task_events.labels(event)
        self.tasks = Gauge("exai_tasks", "Call records by status (unexpired)", ["status"], registry=r)
        for status in ("working", "completed", "failed", "cancelled"):
            self.tasks.labels(status)
        self.oldest_working = Gauge(
            "exai_task_oldest_working_seconds", "Age of the oldest working call (0: none)", registry=r
        )
        for category in Category:
            self.errors.labels(category.value)
        for limit in RATE_LIMITS:
            self.rate_limited.labels(limit)
        for operation in STORAGE_OPERATIONS:
            self.storage_errors.labels(operation)

    def know_tools(self, names: Iterable[str]) -> None:
        """Export every outcome of each of these tools at 0, so a tool's first failure is an increase."""
        for name in names:
            for outcome in TOOL_OUTCOMES:
                self.tool_calls.labels(name, outcome)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            PlatformCollector(registry=registry)
            registry.register(WithPid(self.this_process))
            return generate_latest(registry)
        return generate_latest(self.registry)
