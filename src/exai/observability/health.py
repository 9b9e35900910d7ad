"""The one definition of "healthy", with the reason, for providers and the rate limiter.

The `status` tool, the status page and the alert rules all ask this module, so a provider is never "ok" in one
place and "degraded" in another. A provider's state comes from its circuit breakers (read from the router) and
the upstream attempts recorded in `Stats` over the alert window; every state carries a sentence saying why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from exai.observability.stats import Stats

ProviderState = Literal["ok", "idle", "degraded", "down"]


class _Model(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def provider(self) -> str: ...


class _BreakerView(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def opened_at(self) -> float | None: ...
    @property
    def failures(self) -> Mapping[str, int]: ...
    @property
    def open_for(self) -> tuple[str, ...]: ...


class RouterView(Protocol):
    """What health needs from the router: its providers, their models and their circuit breakers."""

    @property
    def providers(self) -> Mapping[str, Any]: ...
    def available_models(self) -> Iterable[_Model]: ...
    def breakers(self) -> Mapping[tuple[str, str], _BreakerView]: ...


class Breaker(BaseModel):
    model: str
    state: str
    since: float | None = None
    reason: str
    open_for: list[str] = []
    """The tenants it keeps out, when those alone failed while other tenants had answers lately."""


class ProviderHealth(BaseModel):
    name: str
    health: ProviderState
    reason: str
    breakers: dict[str, str]
    """Models whose breaker is not closed, with its state."""
    breaker_details: list[Breaker]
    attempts: int
    recent_errors: dict[str, int]
    """Failed upstream attempts in the window, by kind."""


class LimiterHealth(BaseModel):
    backend: Literal["none", "local", "redis"]
    degraded: bool
    redis_errors: int
    reason: str


def clock_time(at: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def _failures(breaker: _BreakerView) -> str:
    counted = Counter(breaker.failures)
    if not counted:
        return ""
    kinds = ", ".join(f"{kind} x{n}" for kind, n in counted.most_common())
    return f" after {sum(counted.values())} consecutive upstream failures ({kinds})"


class Health:
    def __init__(
        self,
        stats: Stats,
        router: RouterView,
        limiter: object | None,
        window_seconds: float,
        breaker_cooldown: float,
    ) -> None:
        self.stats = stats
        self.router = router
        self._limiter = limiter
        self.window_seconds = window_seconds
        self.breaker_cooldown = breaker_cooldown

    def limiter(self) -> LimiterHealth:
        return limiter_health(self._limiter)

    def providers(self) -> list[ProviderHealth]:
        window = self.stats.window(self.window_seconds)
        states = self.router.breakers()
        models: dict[str, list[str]] = {}
        for model in self.router.available_models():
            models.setdefault(model.provider, []).append(model.name)
        return [
            self._provider(name, models.get(name, []), states, window.attempts.get(name, Counter()))
            for name in sorted(self.router.providers)
        ]

    def _provider(
        self, name: str, models: list[str], states: Mapping[tuple[str, str], _BreakerView], attempts: Counter[str]
    ) -> ProviderHealth:
        breakers = [self._breaker(model, view) for (p, model), view in sorted(states.items()) if p == name]
        breakers = [b for b in breakers if b.state != "closed"]
        failures = Counter({kind: n for kind, n in attempts.items() if kind not in ("ok", "breaker_open")})
        tried = sum(n for kind, n in attempts.items() if kind != "breaker_open")
        window = f"in the last {self.window_seconds:g} s"
        health: ProviderState
        if breakers and models and {b.model for b in breakers if b.state == "open" and not b.open_for} >= set(models):
            health, reason = "down", "every model's circuit breaker is open: " + "; ".join(b.reason for b in breakers)
        elif breakers:
            health, reason = "degraded", "; ".join(b.reason for b in breakers)
        elif failures:
            kinds = ", ".join(f"{kind} x{n}" for kind, n in failures.most_common())
            health, reason = (
                "degraded",
                f"{sum(failures.values())} of {tried} upstream attempts failed {window} ({kinds})",
            )
        elif tried:
            health, reason = "ok", f"{tried} upstream attempts {window}, none failed"
        elif name in self.stats.providers_seen:
            health, reason = "idle", f"no upstream calls {window}"
        else:
            health, reason = "idle", "no upstream calls yet"
        return ProviderHealth(
            name=name,
            health=health,
            reason=reason,
            breakers={b.model: b.state for b in breakers},
            breaker_details=breakers,
            attempts=tried,
            recent_errors=dict(failures),
        )

    def _breaker(self, model: str, view: _BreakerView) -> Breaker:
        state, since, cause = view.state, view.opened_at, _failures(view)
        scope = (
            f" for tenant {', '.join(view.open_for)} only (other tenants' calls go through)" if view.open_for else ""
        )
        if state == "open":
            retry = f", next probe at {clock_time(since + self.breaker_cooldown)}" if since else ""
            opened = f" since {clock_time(since)}" if since else ""
            reason = f"{model}: breaker open{scope}{opened}{cause}{retry}"
        elif state == "half_open":
            reason = f"{model}: breaker half-open{scope} (the next call probes it){cause}"
        else:
            reason = f"{model}: breaker {state}"
        return Breaker(model=model, state=state, since=since, reason=reason, open_for=list(view.open_for))

    @staticmethod
    def overall(providers: list[ProviderHealth]) -> str:
        if not providers:
            return "no_providers"
        return "ok" if all(p.health in ("ok", "idle") for p in providers) else "degraded"


def limiter_health(limiter: object | None) -> LimiterHealth:
    """The rate limiter's state, read duck-typed (`degraded`, `failures`, `when_redis_fails`) from whichever limiter
    runs."""
    if limiter is None:
        return LimiterHealth(backend="none", degraded=False, redis_errors=0, reason="no limits configured")
    redis = hasattr(limiter, "redis")
    errors = int(getattr(limiter, "failures", 0))
    degraded = bool(getattr(limiter, "degraded", False))
    if degraded:
        if getattr(limiter, "when_redis_fails", "open") == "closed":
            reason = "limiter degraded: Redis unreachable, calls refused (EXAI_RATE_LIMIT_ON_REDIS_ERROR=closed)"
        else:
            reason = "limiter degraded: Redis unreachable, per-replica fallback limits in force"
    elif redis:
        reason = "limits shared by every replica through Redis" + (
            f" ({errors} Redis errors since start)" if errors else ""
        )
    else:
        reason = "limits counted in this process"
    return LimiterHealth(backend="redis" if redis else "local", degraded=degraded, redis_errors=errors, reason=reason)
