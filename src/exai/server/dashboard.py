"""The live status page: one self-contained HTML page (no CDN, no external script) polling /dashboard/data.

The data is the `status` tool's report (the same health definitions and usage) plus what only a page shows:
recent calls with the model asked and the model that answered, charts of the last 15 minutes, and the daemon's
own memory, CPU and open files.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from importlib import resources
from typing import TYPE_CHECKING, Any

from exai.observability.stats import RETENTION_SECONDS, percentile
from exai.tools.status import long_calls, status_report

if TYPE_CHECKING:
    from exai.app import Services
    from exai.observability.events import CallEvent

HEADLINE_SECONDS = 60
CHART_STEP_SECONDS = 15
RECENT_ROWS = 50
DASHBOARD_HTML = resources.files("exai.server").joinpath("dashboard.html").read_text(encoding="utf-8")


def call_row(event: CallEvent) -> dict[str, Any]:
    return {
        "time": event.finished_at,
        "tool": event.tool,
        "tenant": event.tenant,
        "outcome": event.outcome,
        "error_code": event.error_code,
        "latency_ms": round(event.latency_s * 1000, 1),
        "correlation_id": event.correlation_id,
        "models": [
            {
                "requested": call.requested,
                "provider": call.provider,
                "model": call.model,
                "fallbacks": list(call.fallbacks),
                "retries": call.retries,
                "tokens": call.tokens,
            }
            for call in event.model_calls
        ],
    }


def dashboard_snapshot(services: Services) -> dict[str, Any]:
    stats = services.stats
    report = status_report(
        stats, services.health, long_calls(services.calls.counts, services.calls.running, time.time())
    )
    headline = stats.window(HEADLINE_SECONDS)
    return {
        **report.model_dump(mode="json"),
        "time": time.time(),
        "calls_total": sum(stats.calls.values()),
        "calls_per_second": round(headline.calls / HEADLINE_SECONDS, 2),
        "latency_ms": {q: percentile(headline.latency, value) for q, value in (("p50", 0.5), ("p95", 0.95))},
        "alerts": services.alerts.snapshot()["active"],
        "recent_calls": [call_row(event) for event in reversed(stats.recent_calls)][:RECENT_ROWS],
        "series": {
            "step_seconds": CHART_STEP_SECONDS,
            "points": [
                {
                    "time": start,
                    "calls_per_second": round(slot.calls / CHART_STEP_SECONDS, 3),
                    "p50_ms": percentile(slot.latency, 0.5),
                    "p95_ms": percentile(slot.latency, 0.95),
                    "errors": slot.errors,
                }
                for start, slot in stats.series(RETENTION_SECONDS, CHART_STEP_SECONDS)
            ],
        },
        "process": asdict(services.metrics.process_meter.read()),
    }
