"""Circuit breakers, retry delays, and the mapping of upstream failures to the error taxonomy."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from exai.errors import DeadlineError, ExaiError, NetworkError, ProviderError
from exai.providers.base import FailureKind, UpstreamError

BreakerState = Literal["closed", "open", "half_open"]

BREAKER_KINDS: frozenset[FailureKind] = frozenset({"server", "timeout", "connection", "rate_limit", "auth"})
"""Failures that say something about the upstream's health (not about the request)."""


@dataclass(frozen=True)
class BreakerView:
    """A breaker as people see it: its state, when it last opened (wall clock), and the upstream failures since the
    model's last success that count against its health, by kind."""

    state: BreakerState
    opened_at: float | None
    failures: dict[str, int]


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; lets one probe through after `cooldown` seconds.

    The one record of a model's upstream health: the router, the status page, `/metrics` and the alert rules all
    read it (through `view`)."""

    threshold: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic
    failures: Counter[str] = field(default_factory=Counter)
    """Failures since the last success that say something about the upstream (BREAKER_KINDS), by kind."""
    opened_at: float | None = None
    """When it last opened, on `clock` (for the cooldown)."""
    opened_on: float | None = None
    """The same moment on the wall clock (for people: the status page, alerts)."""
    probing: bool = False
    times_opened: int = field(default=0)
    culprits: set[str | None] = field(default_factory=set)
    """The tenants whose calls failed since the last success. While that is one tenant, the breaker is open for it
    alone: one tenant's poison prompts (requests that never finish in time, say) must not take a model away from
    every tenant. Another tenant's call goes through and judges the upstream: its success closes the breaker, its
    failure makes it an outage, open for all."""

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown:
            return "half_open"
        return "open"

    def state_for(self, tenant: str | None) -> BreakerState:
        """The state as `tenant` meets it: closed while every failure so far is another single tenant's."""
        return "closed" if self._others_alone(tenant) else self.state

    def _others_alone(self, tenant: str | None) -> bool:
        return tenant is not None and len(self.culprits) == 1 and tenant not in self.culprits

    def view(self) -> BreakerView:
        return BreakerView(self.state, self.opened_on, dict(self.failures))

    def retry_in(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (self.clock() - self.opened_at))

    def allow(self, tenant: str | None = None) -> bool:
        """May a call of `tenant` go through now? In half-open state only one probe at a time does."""
        if self._others_alone(tenant):
            return True
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def record_success(self) -> None:
        self.failures.clear()
        self.culprits.clear()
        self.opened_at = self.opened_on = None
        self.probing = False

    def record_failure(self, kind: FailureKind, tenant: str | None = None) -> None:
        if kind not in BREAKER_KINDS:
            self.probing = False
            return
        self.failures[kind] += 1
        self.culprits.add(tenant)
        if self.probing or self.failures.total() >= self.threshold:
            if self.opened_at is None or self.probing:
                self.times_opened += 1
            self.opened_at, self.opened_on = self.clock(), time.time()
        self.probing = False

    def release_probe(self) -> None:
        """A probe that ended without a verdict (cancelled) frees the slot for the next one."""
        self.probing = False


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter; an upstream's Retry-After wins when it asks for longer."""
    delay = rng.uniform(0, min(cap, base * (2**attempt)))
    return delay if retry_after is None else max(delay, retry_after)


def queue_timeout_error(
    provider: str, model: str, concurrency: int, waited_from: float, *, tenant_share: bool = False
) -> DeadlineError:
    """The deadline passed while the call queued for a local concurrency slot: our delay, not the upstream's.
    `tenant_share`: it queued for the tenant's own share of the provider's slots, held by the tenant's other calls."""
    busy = (
        f"all {concurrency} of your slots there were held by your other calls"
        if tenant_share
        else (f"all {concurrency} concurrent slots were busy")
    )
    remedy = (
        "Run fewer model calls at once (each consensus member counts), or ask the operator to raise "
        "EXAI_PROVIDER_CONCURRENCY_PER_TENANT."
        if tenant_share
        else "Try again when fewer calls are running, or raise EXAI_PROVIDER_CONCURRENCY or the call's deadline."
    )
    return DeadlineError(
        f"The call's deadline passed after {time.monotonic() - waited_from:.1f} s in the local queue for "
        f"{provider} ({busy}); nothing was sent upstream.",
        code="local_queue_timeout",
        remedy=remedy,
        details={"provider": provider, "model": model},
    )


def to_exai_error(error: UpstreamError, provider: str, model: str, key_env: str) -> ExaiError:
    """The client-facing error for an upstream failure that the router could not route around."""
    where = f"{provider}/{model}"
    details: dict[str, object] = {"provider": provider, "model": model, "upstream_status": error.status}
    if error.retry_after is not None:  # the upstream said when it will take the request: pass it on
        details["retry_in_seconds"] = round(error.retry_after, 1)
    match error.kind:
        case "auth":
            return ProviderError(
                f"{where} refused our credentials: {error.message}",
                code="upstream_auth",
                retryable=False,
                details=details,
                remedy=f"Check {key_env}: the key is missing, wrong or revoked.",
            )
        case "rate_limit":
            return ProviderError(
                f"{where} is rate limiting us: {error.message}",
                code="upstream_rate_limited",
                details=details,
                remedy=f"Try again in {error.retry_after:.0f} s, or pick another model."
                if error.retry_after is not None
                else "Wait and try again, or pick another model.",
            )
        case "context_too_long":
            return ProviderError(
                f"The prompt does not fit {where}'s context window and no larger model was available.",
                code="context_too_long",
                retryable=False,
                details=details,
                remedy="Send less (fewer files, a shorter prompt) or choose a model with a larger context window.",
            )
        case "quota":
            return ProviderError(
                f"{where}: the account is out of quota or credit: {error.message}",
                code="upstream_quota_exhausted",
                retryable=False,
                details=details,
                remedy=f"Top up or raise the plan of the account behind {key_env}, or pick another provider's model.",
            )
        case "model_not_found":
            return ProviderError(
                f"{where} says it does not serve this model: {error.message}",
                code="upstream_model_not_found",
                retryable=False,
                details=details,
                remedy="Pick a model the vendor lists (`exai models` shows which), or 'auto'.",
            )
        case "request_too_large":
            return ProviderError(
                f"{where} refused the request as too large: {error.message}",
                code="request_too_large",
                retryable=False,
                details=details,
                remedy="Send less: fewer or smaller images and files (this is the request's size in bytes, not the "
                "context window).",
            )
        case "content_filter":
            return ProviderError(
                f"{where}'s content filter refused the request.",
                code="content_filtered",
                retryable=False,
                details=details,
                remedy="Rephrase the request or use another model.",
            )
        case "bad_request":
            return ProviderError(
                f"{where} rejected the request: {error.message}",
                code="upstream_bad_request",
                retryable=False,
                details=details,
                remedy="Check the arguments (model, temperature, images) against `listmodels`.",
            )
        case "timeout":
            return DeadlineError(
                f"{where} did not answer in time.",
                code="upstream_timeout",
                details=details,
                remedy="Try again, pick a faster model, or raise EXAI_CALL_DEADLINE_SECONDS.",
            )
        case "connection":
            return NetworkError(
                f"Cannot reach {where}: {error.message}",
                code="upstream_unreachable",
                details=details,
                remedy="Check the provider's base URL and the network, then try again.",
            )
        case _:
            return ProviderError(
                f"{where} failed: {error.message}",
                code="upstream_error",
                details=details,
                remedy="Try again later (the router already retried within the deadline), or pick another model.",
            )
