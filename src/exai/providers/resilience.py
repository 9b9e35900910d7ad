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
    """A breaker as people see it: its state, when it last opened (wall clock), the upstream failures since the
    model's last success that count against its health, by kind, and, when it keeps out some tenants only while
    other tenants had answers from the model lately, which (see `CircuitBreaker.open_for`)."""

    state: BreakerState
    opened_at: float | None
    failures: dict[str, int]
    open_for: tuple[str, ...] = ()


ANSWERED_LATELY_SECONDS = 600.0
"""How recent another tenant's answer must be for a breaker to count as keeping out some tenants only."""
RECENT_TENANTS = 1_000
"""Tenants whose last answer a breaker remembers."""


@dataclass
class CircuitBreaker:
    """Opens after `threshold` failures in a row; lets a probe through after `cooldown` seconds.

    The daemon's tenants share it, and no tenant can take a model away from the others:
    - a tenant is kept out by its own `threshold` failures since the model's last success (one tenant's poison
      prompts, requests that never finish in time, keep out that tenant alone);
    - everyone is kept out once the failures of all tenants but the worst one reach `threshold` too: an outage,
      seen by more than one tenant;
    - after `cooldown` each tenant it keeps out may send one probe: a probe's failure keeps out its own tenant for
      another cooldown and no one else, and any success closes the breaker for all.
    With one tenant it is a plain breaker.

    The one record of a model's upstream health: the router, the status page, `/metrics` and the alert rules all
    read it (through `view`)."""

    threshold: int
    cooldown: float
    clock: Callable[[], float] = time.monotonic
    tenants_apart: bool = False
    """Whether the daemon tells tenants apart (authentication on): only then can `open_for` name the tenants a
    breaker keeps out; without it every call is one tenant's."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failures since the last success that say something about the upstream (BREAKER_KINDS), by kind."""
    by_tenant: Counter[str | None] = field(default_factory=Counter)
    """The same failures, by the tenant whose call met them."""
    since: dict[str | None, float] = field(default_factory=dict)
    """When each tenant's own failures (a failed probe among them) last kept it out, on `clock`."""
    outage_at: float | None = None
    """When the failures became an outage (see above), on `clock`."""
    opened_on: float | None = None
    """When it last opened for anyone, on the wall clock (for people: the status page, alerts)."""
    probes: dict[str | None, object] = field(default_factory=dict)
    """The call (its `caller` token) that is each tenant's half-open probe."""
    answered: dict[str | None, float] = field(default_factory=dict)
    """When each tenant last had an answer from the model, on `clock` (the latest RECENT_TENANTS)."""
    times_opened: int = field(default=0)

    @property
    def _outage(self) -> bool:
        worst = max(self.by_tenant.values(), default=0)
        return self.by_tenant.total() - worst >= self.threshold

    def _opened(self, tenant: str | None) -> float | None:
        """When the breaker last opened for `tenant`, or None when it does not keep it out."""
        own = self.since.get(tenant)
        outage = self.outage_at if self._outage else None
        return max((t for t in (own, outage) if t is not None), default=None)

    def _timed(self, opened: float) -> BreakerState:
        return "half_open" if self.clock() - opened >= self.cooldown else "open"

    @property
    def _last_opened(self) -> float | None:
        return max((t for t in (*self.since.values(), self.outage_at) if t is not None), default=None)

    @property
    def state(self) -> BreakerState:
        """The state for the tenants it keeps out, as of its latest opening (open for anyone shows as open)."""
        last = self._last_opened
        return "closed" if last is None else self._timed(last)

    def state_for(self, tenant: str | None) -> BreakerState:
        """The state as `tenant` meets it."""
        opened = self._opened(tenant)
        return "closed" if opened is None else self._timed(opened)

    def open_for(self) -> tuple[str, ...]:
        """The tenants it keeps out when it is their failures alone: another tenant had an answer from the model in
        the last ANSWERED_LATELY_SECONDS. () when it keeps out everyone, or as good as everyone (no other tenant
        used the model lately, so nothing tells an outage from one tenant's poison prompts), or is closed."""
        if self._last_opened is None or self._outage or not self.tenants_apart:
            return ()
        lately = self.clock() - ANSWERED_LATELY_SECONDS
        if not any(at >= lately for tenant, at in self.answered.items() if tenant not in self.since):
            return ()
        return tuple(sorted(str(t) for t in self.since))

    def view(self) -> BreakerView:
        return BreakerView(self.state, self.opened_on, dict(self.failures), self.open_for())

    def retry_in(self, tenant: str | None = None) -> float:
        """Seconds until `tenant` may probe."""
        opened = self._opened(tenant)
        return 0.0 if opened is None else max(0.0, self.cooldown - (self.clock() - opened))

    def allow(self, tenant: str | None = None, caller: object = None) -> bool:
        """May a call of `tenant` go through now? Half-open, one probe of each tenant it keeps out does: the call
        whose `caller` token took it, told apart from the tenant's other calls."""
        state = self.state_for(tenant)
        if state == "closed":
            return True
        if state == "half_open" and tenant not in self.probes:
            self.probes[tenant] = caller
            return True
        return False

    def record_success(self, tenant: str | None = None) -> None:
        self.failures.clear()
        self.by_tenant.clear()
        self.since.clear()
        self.probes.clear()
        self.outage_at = self.opened_on = None
        self.answered.pop(tenant, None)
        self.answered[tenant] = self.clock()
        if len(self.answered) > RECENT_TENANTS:
            del self.answered[next(iter(self.answered))]

    def record_failure(self, kind: FailureKind, tenant: str | None = None, caller: object = None) -> None:
        probe = tenant in self.probes and self.probes[tenant] is caller
        if probe:
            del self.probes[tenant]
        if kind not in BREAKER_KINDS:
            return
        was_open = self._last_opened is not None
        self.failures[kind] += 1
        self.by_tenant[tenant] += 1
        self.answered.pop(tenant, None)  # its answers before this failure say nothing of the model now
        now, opened = self.clock(), False
        if probe or self.by_tenant[tenant] >= self.threshold:
            self.since[tenant] = now  # kept out for another cooldown: this tenant, no one else
            opened = True
        if self.outage_at is None and self._outage:
            self.outage_at, opened = now, True
        if opened:
            self.opened_on = time.time()  # what the status page counts the next probe from
            if not was_open or probe or self.outage_at == now:
                self.times_opened += 1

    def release_probe(self, caller: object = None) -> None:
        """A probe that ended without a verdict (cancelled) frees its tenant's probe; any other call leaves it."""
        for tenant, probe in list(self.probes.items()):
            if probe is caller:
                del self.probes[tenant]


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
        case "timeout" if error.status is not None:  # the vendor's own 408 / 504
            return DeadlineError(
                f"{where} timed out on its side: {error.message}",
                code="upstream_timeout",
                details=details,
                remedy="Try again later, or pick another model.",
            )
        case "timeout":  # cut by our own limits: the message names the one
            return DeadlineError(
                f"{where} did not answer within {error.message}.",
                code="upstream_timeout",
                retryable=error.worth_repeating,
                details=details,
                remedy=error.remedy or "Try again or pick a faster model.",
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
