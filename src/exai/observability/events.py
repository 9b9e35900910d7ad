"""One record per finished tool call and per upstream attempt, fanned out to every subscriber in one place.

Recent history (read by the `status` tool, the status page and the alert rules), Prometheus metrics and the audit
log all learn about a call from the same `CallEvent`, and about an upstream request from the same router
`Attempt`, so they agree by construction. A tool never reports usage by writing keys into its
output: every model call it makes through `ToolContext.generate` becomes a `ModelCall` of the event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol

from exai.observability.logging import get_logger
from exai.observability.metrics import Metrics
from exai.observability.refusals import RepeatedRefusals
from exai.observability.stats import Attempt, Stats

log = get_logger(__name__)

Outcome = Literal["ok", "error", "cancelled", "denied", "rate_limited"]


@dataclass(frozen=True)
class ModelCall:
    """One model call inside a tool call: who was asked, who answered, what it was charged.

    A call that failed (`failure` holds its error category) or was cancelled (`failure` "cancelled") names the
    last model tried (or the one asked) and is charged, as the vendor bills it, only its attempts cut on our side
    after their request was sent (the attempt's time limit, the cancellation): each its prompt and what had
    streamed back.
    """

    requested: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    fallbacks: tuple[str, ...] = ()
    retries: int = 0
    failure: str | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class CallEvent:
    """A finished `tools/call`, refused ones included."""

    tool: str
    tenant: str
    correlation_id: str
    outcome: Outcome
    latency_s: float
    upstream_s: float = 0.0
    error_category: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    model_calls: list[ModelCall] = field(default_factory=list)
    thread_id: str | None = None
    finished_at: float = field(default_factory=time.time)

    @property
    def tokens(self) -> int:
        return sum(call.tokens for call in self.model_calls)

    @property
    def cost_usd(self) -> float:
        return sum(call.cost_usd for call in self.model_calls)


class AuditLog(Protocol):
    """Where audit rows go (the store's background writer): told about calls and task events, it owns the rows."""

    def add_call(self, event: CallEvent) -> None: ...
    def add_task_event(self, kind: str, tenant: str, tool: str, correlation_id: str) -> None: ...


class Events:
    """Where finished calls and upstream attempts are recorded: one method each, every subscriber.

    `Stats` keeps the recent history that the `status` tool, the status page and the alert rules read;
    Prometheus counts; the audit log keeps one row per model call.
    """

    def __init__(self, stats: Stats, metrics: Metrics, audit: AuditLog) -> None:
        self.stats = stats
        self.metrics = metrics
        self.audit = audit
        self.refusals = RepeatedRefusals()

    def call_started(self) -> None:
        self.stats.call_started()
        self.metrics.in_flight.inc()

    def call_finished(self, event: CallEvent, *, started: bool = True, crash: BaseException | None = None) -> None:
        """Record `event`; `started` is False for calls refused before they began (no in-flight slot taken).
        `crash` is what a tool raised that no error type covers: its traceback goes to the call's log line (and
        is not kept with the event, which the recent calls hold, nor are its frames' locals)."""
        self.stats.call_finished(event, started=started)
        metrics = self.metrics
        if started:
            metrics.in_flight.dec()
        metrics.tool_calls.labels(event.tool, event.outcome).inc()
        if event.error_category is not None:
            metrics.errors.labels(event.error_category).inc()
        if event.outcome == "rate_limited":
            metrics.rate_limited.labels((event.error_code or "").removeprefix("rate_limited_") or "?").inc()
        if started:
            metrics.tool_latency.labels(event.tool).observe(event.latency_s)
            metrics.gateway_overhead.labels(event.tool).observe(max(0.0, event.latency_s - event.upstream_s))
        for call in event.model_calls:
            metrics.tokens.labels(call.provider, call.model, "in").inc(call.input_tokens)
            metrics.tokens.labels(call.provider, call.model, "out").inc(call.output_tokens)
            if call.cost_usd:
                metrics.cost.labels(call.provider, call.model).inc(call.cost_usd)
        if not self.refusals.audited(event.tenant, event.tool, event.outcome, event.error_code, event.finished_at):
            return  # a repeated refusal: counted above, and in the minute's `refusals_repeated` line
        self.audit.add_call(event)
        if event.error_code is not None:
            fields = {"tool": event.tool, "category": event.error_category, "code": event.error_code}
            if crash is not None:
                log.error("tool_error", **fields, error=(event.error_message or "")[:300], exc_info=crash)
            else:
                log.info("tool_error", **fields, error=(event.error_message or "")[:300])

    def attempt_finished(self, attempt: Attempt) -> None:
        """One upstream request ended (or was skipped because its breaker is open)."""
        self.stats.attempt_finished(attempt)
        self.metrics.provider_calls.labels(attempt.provider, attempt.model, attempt.outcome).inc()
        if attempt.outcome != "breaker_open":
            self.metrics.upstream_latency.labels(attempt.provider, attempt.model).observe(attempt.latency_ms / 1000)

    def task_event(self, kind: str, tenant: str, tool: str, call_id: str, correlation_id: str) -> None:
        """A task was created, cancelled, collected, or lost with its replica: counted and audited (the row names
        the call's correlation id)."""
        self.metrics.task_events.labels(kind).inc()
        self.audit.add_task_event(kind, tenant, tool, correlation_id or call_id)

    def task_counts(self, by_status: dict[str, int], oldest_working: float | None) -> None:
        """The store's call records by status, read every third of a lease."""
        for status in ("working", "completed", "failed", "cancelled"):
            self.metrics.tasks.labels(status).set(by_status.get(status, 0))
        self.metrics.oldest_working.set(0 if oldest_working is None else max(0.0, time.time() - oldest_working))

    def auth_failed(self) -> None:
        self.stats.mark("auth_failure")
        self.metrics.auth_failures.inc()

    def limiter_round_trip(self, operation: str, seconds: float) -> None:
        self.metrics.limiter_latency.labels(operation).observe(seconds)

    def loop_lagged(self, seconds: float) -> None:
        self.metrics.loop_lag.observe(seconds)

    def storage_finished(self, operation: str, seconds: float, ok: bool) -> None:
        self.metrics.storage_latency.labels(operation).observe(seconds)
        if not ok:
            self.stats.mark("storage_error")
            self.metrics.storage_errors.labels(operation).inc()
