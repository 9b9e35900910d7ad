"""Prometheus metrics, in a registry of the daemon's own (served at /metrics).

`exai serve` runs one process; for several worker processes set PROMETHEUS_MULTIPROC_DIR and prometheus-client's
multiprocess mode aggregates them (see README).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.tokens = Counter(
            "exai_tokens", "Tokens by provider, model and direction", ["provider", "model", "direction"], registry=r
        )
        self.cost = Counter("exai_cost_usd", "Estimated cost in US dollars", ["provider", "model"], registry=r)
        self.errors = Counter("exai_errors", "Errors returned to clients by category", ["category"], registry=r)
        self.breaker = Gauge(
            "exai_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["provider", "model"], registry=r
        )
        self.rate_limited = Counter("exai_rate_limit_rejections", "Calls refused by rate limits", ["limit"], registry=r)
        self.auth_failures = Counter("exai_auth_failures", "Requests refused for a bad or missing token", registry=r)
        self.in_flight = Gauge("exai_in_flight_calls", "Tool calls in flight", registry=r)
        self.storage_latency = Histogram(
            "exai_storage_latency_seconds",
            "Storage operation latency",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.storage_errors = Counter("exai_storage_errors", "Failed storage operations", ["operation"], registry=r)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
