"""Alert rules over sliding time windows, evaluated in the background.

Events (provider calls, tool latencies, auth failures, rate-limit rejections, storage errors) are kept with their
time; each rule looks at its own window. An alert fires when its condition holds, shows on /alerts and the
status page, is posted to the webhook (retried in the background, never on a request's path), and resolves
(posted again) when the condition clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
from pydantic import BaseModel, Field

from exai.observability.logging import get_logger

log = get_logger(__name__)


class AlertThresholds(BaseModel):
    window_seconds: float = Field(default=300, gt=0)
    provider_error_rate: float = Field(default=0.5, gt=0, le=1)
    provider_min_calls: int = Field(default=5, ge=1)
    p95_latency_seconds: float = Field(default=30.0, gt=0)
    auth_failures: int = Field(default=20, ge=1)
    rate_limit_rejections: int = Field(default=50, ge=1)
    storage_errors: int = Field(default=1, ge=1)


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
        open_breakers: Callable[[], list[str]],
        interval: float = 1.0,
    ) -> None:
        self.t = thresholds
        self.webhook_url = webhook_url
        self.open_breakers = open_breakers
        self.interval = interval
        self.events: dict[str, deque[tuple[float, Any]]] = {
            k: deque(maxlen=100_000) for k in ("provider", "latency", "auth", "rate_limit", "storage")
        }
        self.active: dict[str, Alert] = {}
        self.history: deque[Alert] = deque(maxlen=200)
        self._deliveries: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def record(self, kind: str, value: Any = 1) -> None:
        self.events[kind].append((time.time(), value))

    def _window(self, kind: str) -> list[Any]:
        cutoff = time.time() - self.t.window_seconds
        events = self.events[kind]
        while events and events[0][0] < cutoff:
            events.popleft()
        return [value for _, value in events]

    def conditions(self) -> dict[str, tuple[str, str]]:
        """The alerts whose condition holds now: name -> (severity, summary)."""
        found: dict[str, tuple[str, str]] = {}
        window = f"in the last {self.t.window_seconds:g} s"
        calls: dict[str, list[bool]] = {}
        for provider, ok in self._window("provider"):
            calls.setdefault(provider, []).append(ok)
        for provider, outcomes in calls.items():
            rate = 1 - sum(outcomes) / len(outcomes)
            if len(outcomes) >= self.t.provider_min_calls and rate >= self.t.provider_error_rate:
                found[f"provider_error_rate:{provider}"] = (
                    "critical",
                    f"{provider}: {rate:.0%} of {len(outcomes)} upstream calls failed {window}",
                )
        latencies = sorted(self._window("latency"))
        if len(latencies) >= 5:
            p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
            if p95 >= self.t.p95_latency_seconds:
                found["p95_latency"] = ("warning", f"p95 tool latency {p95:.2f} s {window}")
        for breaker in self.open_breakers():
            found[f"breaker_open:{breaker}"] = ("warning", f"circuit breaker open for {breaker}")
        for kind, limit, severity, what in (
            ("auth", self.t.auth_failures, "warning", "authentication failures"),
            ("rate_limit", self.t.rate_limit_rejections, "info", "rate-limit rejections"),
            ("storage", self.t.storage_errors, "critical", "storage errors"),
        ):
            count = len(self._window(kind))
            if count >= limit:
                found[kind if kind != "auth" else "auth_failures"] = (severity, f"{count} {what} {window}")
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

    async def _evaluate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.evaluate()
            except Exception:
                log.exception("alert_evaluation_failed")

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
        self._tasks = [
            asyncio.create_task(self._evaluate_forever(), name="exai-alerts"),
            asyncio.create_task(self._deliver_forever(), name="exai-alert-webhook"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": [a.to_dict() for a in self.active.values()],
            "recent": [a.to_dict() for a in list(self.history)[-50:]],
        }
