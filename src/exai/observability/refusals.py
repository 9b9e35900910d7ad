"""Which rate-limited calls get an audit row and a log line: the first of each tenant, tool and reason per minute.

Every call counts against the tenant's requests per minute, refused ones included (unknown and forbidden tools),
so the rows of admitted calls grow at most as the limits allow. The calls refused by the limiter cost nothing and
could be sent as fast as a client can: a repeat within the minute is counted instead of written (neither its row nor
its `tool_error` line), and when the minute is over one log line (`refusals_repeated`) says how many were not
written; the Prometheus counters count every one.
"""

from __future__ import annotations

from dataclasses import dataclass

from exai.observability.logging import get_logger

log = get_logger(__name__)
WINDOW_SECONDS = 60.0

Key = tuple[str, str, str, str]  # tenant, tool, outcome, error code


@dataclass
class _Window:
    started: float
    repeats: int = 0


class RepeatedRefusals:
    def __init__(self) -> None:
        self._windows: dict[Key, _Window] = {}
        self._swept = 0.0

    def audited(self, tenant: str, tool: str, outcome: str, code: str | None, now: float) -> bool:
        """True when a call gets an audit row: every call the limiter admitted, and its refusals' first per minute."""
        if outcome != "rate_limited":
            return True
        self._sweep(now)
        key = (tenant, tool, outcome, code or "")
        window = self._windows.get(key)
        if window is None:
            self._windows[key] = _Window(now)
            return True
        window.repeats += 1
        return False

    def _sweep(self, now: float) -> None:
        """Close the windows older than a minute (at most once a second: the check costs one pass)."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for key in [k for k, w in self._windows.items() if now - w.started >= WINDOW_SECONDS]:
            window = self._windows.pop(key)
            if window.repeats:
                tenant, tool, outcome, code = key
                log.warning(
                    "refusals_repeated",
                    tenant=tenant,
                    tool=tool,
                    outcome=outcome,
                    code=code,
                    not_audited=window.repeats,
                )
