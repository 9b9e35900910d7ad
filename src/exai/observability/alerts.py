"""Alert rules over a sliding time window, evaluated in the background.

The rules read the recent history in `Stats` (upstream attempts, tool latencies, auth failures, rate-limit
rejections, storage errors) and the provider and limiter state from `Health`, the same sources as the `status`
tool and the status page. An alert fires when its condition holds, shows on /alerts and the status page, is posted
to the webhook (retried in the background, never on a request's path), and resolves (posted again) when the
condition clears.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx2

from exai.background import BackgroundLoop, stop_task
from exai.observability.health import Health
from exai.observability.logging import get_logger
from exai.observability.stats import Stats, percentile

log = get_logger(__name__)


@dataclass(frozen=True)
class AlertThresholds:
    """When an alert fires. The first five are settings (`EXAI_ALERT_*`), defined and validated in config."""

    window_seconds: float
    provider_error_rate: float
    p95_latency_seconds: float
    auth_failures: int
    rate_limit_rejections: int
    provider_min_calls: int = 5  # an error rate over fewer attempts says nothing
    storage_errors: int = 1  # any storage error in the window is critical


@dataclass
class Alert:
    name: str
    severity: str
    summary: str
    state: str = "firing"
    started_at: float = field(default_factory=time.time)
    resolved_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "severity": self.severity,
            "summary": self.summary,
            "state": self.state,
            "started_at": self.started_at,
            "resolved_at": self.resolved_at,
        }


class AlertManager:
    def __init__(
        self,
        thresholds: AlertThresholds,
        webhook_url: str | None,
        stats: Stats,
        health: Health,
        interval: float = 1.0,
    ) -> None:
        self.t = thresholds
        self.webhook_url = webhook_url
        self.stats = stats
        self.health = health
        self.interval = interval
        self.active: dict[str, Alert] = {}
        self.history: deque[Alert] = deque(maxlen=200)
        self._deliveries: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._evaluating = BackgroundLoop(
            "exai-alerts", self._evaluate, interval, failed_event="alert_evaluation_failed"
        )
        self._delivering: asyncio.Task[None] | None = None

    def conditions(self) -> dict[str, tuple[str, str]]:
        """The alerts whose condition holds now: name -> (severity, summary)."""
        found: dict[str, tuple[str, str]] = {}
        recent = self.stats.window(self.t.window_seconds)
        window = f"in the last {self.t.window_seconds:g} s"
        for provider, outcomes in recent.attempts.items():
            tried = sum(n for kind, n in outcomes.items() if kind != "breaker_open")
            failed = tried - outcomes["ok"]
            if tried >= self.t.provider_min_calls and failed / tried >= self.t.provider_error_rate:
                found[f"provider_error_rate:{provider}"] = (
                    "critical",
                    f"{provider}: {failed / tried:.0%} of {tried} upstream calls failed {window}",
                )
        if sum(recent.latency.values()) >= 5:
            p95 = percentile(recent.latency, 0.95) / 1000
            if p95 >= self.t.p95_latency_seconds:
                found["p95_latency"] = ("warning", f"p95 tool latency {p95:.2f} s {window}")
        for health in self.health.providers():
            for breaker in health.breaker_details:
                if breaker.state == "open" and not breaker.open_for:  # some tenants' own failures: status page
                    found[f"breaker_open:{health.name}/{breaker.model}"] = (
                        "warning",
                        f"{health.name}/{breaker.reason}",
                    )
        limiter = self.health.limiter()
        if limiter.degraded:
            found["limiter_degraded"] = ("critical", limiter.reason)
        for name, count, limit, severity, what in (
            ("auth_failures", recent.marks["auth_failure"], self.t.auth_failures, "warning", "authentication failures"),
            (
                "rate_limit",
                recent.outcomes["rate_limited"],
                self.t.rate_limit_rejections,
                "info",
                "rate-limit rejections",
            ),
            ("storage", recent.marks["storage_error"], self.t.storage_errors, "critical", "storage errors"),
        ):
            if count >= limit:
                found[name] = (severity, f"{count} {what} {window}")
        return found

    def evaluate(self) -> None:
        now_firing = self.conditions()
        for name, (severity, summary) in now_firing.items():
            if name not in self.active:
                alert = Alert(name, severity, summary)
                self.active[name] = alert
                self.history.append(alert)
                log.warning("alert_firing", alert=name, summary=summary)
                self._deliver(alert)
            else:
                self.active[name].summary = summary
        for name in list(self.active):
            if name not in now_firing:
                alert = self.active.pop(name)
                alert.state, alert.resolved_at = "resolved", time.time()
                log.info("alert_resolved", alert=name)
                self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        if self.webhook_url:
            self._deliveries.put_nowait(alert.to_dict())

    async def _evaluate(self) -> None:
        self.evaluate()

    async def _deliver_forever(self) -> None:
        async with httpx2.AsyncClient(timeout=5) as http:
            while True:
                payload = await self._deliveries.get()
                for attempt in range(5):
                    try:
                        response = await http.post(self.webhook_url or "", json=payload)
                        if response.status_code < 500:
                            break
                    except httpx2.HTTPError as exc:
                        log.warning("alert_webhook_failed", attempt=attempt + 1, error=str(exc))
                    await asyncio.sleep(min(0.5 * 2**attempt, 10))

    def start(self) -> None:
        self._evaluating.start()
        if self.webhook_url:  # its HTTP client costs ~45 ms of CPU to build, on the loop, as a client connects
            self._delivering = asyncio.create_task(self._deliver_forever(), name="exai-alert-webhook")

    async def close(self) -> None:
        await self._evaluating.close()
        if self._delivering is not None:
            await stop_task(self._delivering)
            self._delivering = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": [a.to_dict() for a in self.active.values()],
            "recent": [a.to_dict() for a in list(self.history)[-50:]],
        }
