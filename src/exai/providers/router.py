"""The router: picks a model, retries, falls back, and keeps one circuit breaker per provider and model.

It is the only place a model request is retried (the SDKs' own retries are off). Failures are classified by the
wire layer; the router decides: auth and bad requests are never retried, a prompt too long for the model
moves to a model with a larger context window, everything transient is retried with backoff and then
handed to the next model of the fallback chain, all inside one deadline per call.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from opentelemetry.trace import StatusCode

from exai.config import ProviderConfig, Settings
from exai.errors import DeadlineError, ExaiError, InvalidInput, NotFoundError, ProviderError
from exai.observability.context import current_correlation_id
from exai.observability.logging import get_logger
from exai.observability.tracing import tracer
from exai.providers.base import CallOptions, Provider, UpstreamError
from exai.providers.catalogue import Catalogue, ModelInfo
from exai.providers.fair_share import TenantShares
from exai.providers.quirks import will_think
from exai.providers.resilience import BreakerView, CircuitBreaker, backoff_delay, queue_timeout_error, to_exai_error
from exai.providers.types import DeltaCallback, GenerateRequest, GenerateResponse, StreamChunk

Category = Literal["fast", "balanced", "reasoning"]
EventCallback = Callable[[str], Awaitable[None]]
AttemptObserver = Callable[["Attempt"], None]
CUT = "cancelled"
"""The outcome of an attempt whose request was sent and then cut by a cancellation: reported to the call's
`on_attempts` (it is charged), never to the router's observer (it says nothing about the upstream's health)."""
log = get_logger(__name__)


@dataclass
class Attempt:
    provider: str
    model: str
    outcome: str
    latency_ms: float
    billed: bool = False
    """The request reached the upstream and was cut on our side (the attempt's time limit, a cancellation): the
    vendor bills what it started, the prompt and `streamed`."""
    streamed: str = ""
    """Answer and reasoning text streamed back during this attempt."""

    def summary(self) -> dict[str, str | float]:
        """What an error's details say of the attempt (never the streamed text)."""
        return {"provider": self.provider, "model": self.model, "outcome": self.outcome, "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class Listing:
    """What one vendor's own model listing said it serves, and when (see providers/listings.py)."""

    models: frozenset[str]
    at: float
    refused: int = 0


@dataclass(eq=False)
class Caller:
    """One call through the router: its tenant (for the tenant's share of slots and its breakers), and by its
    identity the token that tells the call that holds a breaker's half-open probe from the tenant's other calls."""

    tenant: str | None


@dataclass(frozen=True)
class RoutePlan:
    """The models one call may use, in order, chosen once by `Router.plan`."""

    requested: str
    candidates: tuple[ModelInfo, ...]

    @property
    def first(self) -> ModelInfo:
        """The model to size the prompt for: the one asked first."""
        return self.candidates[0]


@dataclass
class RouteResult:
    response: GenerateResponse
    attempts: list[Attempt]
    fallbacks: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return len(self.attempts) - 1


class Router:
    def __init__(
        self,
        settings: Settings,
        catalogue: Catalogue,
        providers: dict[str, Provider],
        configs: dict[str, ProviderConfig],
        rng: random.Random | None = None,
        on_attempt: AttemptObserver | None = None,
        *,
        one_tenant: bool = False,
    ) -> None:
        """`one_tenant`: the daemon serves one tenant (stdio, or HTTP without auth), whose calls may use every slot
        of a provider and whose breakers are everyone's; otherwise each tenant's calls hold at most its share of
        the slots, and a tenant's own failures open a breaker for that tenant first (`CircuitBreaker`)."""
        self.settings = settings
        self.one_tenant = one_tenant
        self.catalogue = catalogue
        self.providers = providers
        self.configs = configs
        self._rng = rng or random.Random()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._slots = {name: asyncio.Semaphore(settings.provider_concurrency) for name in providers}
        self._shares = TenantShares(settings.provider_concurrency_per_tenant)
        self._available: list[ModelInfo] = []
        self.listings: dict[str, Listing] = {}
        self.models_pending: str | None = None  # why models are missing while discovery is retried
        self.refresh_available()
        self.on_attempt = on_attempt

    # ----- what can be routed to ----------------------------------------------------------------
    def refresh_available(self) -> None:
        """Compute the routable models once more; called when models are discovered or a vendor listing arrives."""
        self._available = [
            info
            for info in self.catalogue.models.values()
            if info.provider in self.providers
            and self.configs[info.provider].allows(info.name, *info.aliases)
            and self.vendor_lists(info) is not False
        ]

    def set_listing(self, provider: str, listing: Listing) -> None:
        self.listings[provider] = listing
        self.refresh_available()

    def vendor_lists(self, model: ModelInfo) -> bool | None:
        """Whether the model's vendor lists it; None while its listing is not known."""
        listing = self.listings.get(model.provider)
        return None if listing is None else model.name in listing.models

    def _not_listed_error(self, name: str, info: ModelInfo) -> NotFoundError:
        listing = self.listings[info.provider]
        usable = sorted(m.name for m in self._available if m.provider == info.provider)
        listed = sorted(listing.models)
        shown = usable or listed[:20]
        age = max(0.0, time.time() - listing.at)
        return NotFoundError(
            f"Model '{name[:80]}' is not served by {info.provider}: its own model listing (asked {age:.0f} s ago) "
            f"does not name '{info.name}'. It lists {len(listed)} models"
            + (f", of which these are usable here: {', '.join(shown)}." if shown else "."),
            code="model_not_listed",
            remedy=f"Name a model {info.provider} lists (see `listmodels`), or 'auto'.",
            details={"provider": info.provider, "listed": listed[:50], "usable": usable},
        )

    def available_models(self) -> list[ModelInfo]:
        """Models whose provider is configured and whose allow/deny lists admit them (fixed at start)."""
        return list(self._available)

    def breaker(self, model: ModelInfo) -> CircuitBreaker:
        key = (model.provider, model.name)
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(
                self.settings.breaker_failure_threshold,
                self.settings.breaker_cooldown_seconds,
                tenants_apart=not self.one_tenant,
            )
        return self._breakers[key]

    def breaker_state(self, model: ModelInfo, tenant: str | None = None) -> str:
        """The model's breaker as `tenant` meets it (see `CircuitBreaker`)."""
        breaker = self._breakers.get((model.provider, model.name))
        return "closed" if breaker is None else breaker.state_for(tenant)

    def resolve(self, name: str) -> ModelInfo:
        """An explicit model name or alias, checked against what is configured and allowed."""
        if not self.providers:
            raise no_provider_error()
        info = self.catalogue.get(name)
        available = self.available_models()
        if (
            info is not None
            and info.provider in self.providers
            and self.configs[info.provider].allows(info.name, *info.aliases)
            and self.vendor_lists(info) is False
        ):
            raise self._not_listed_error(name, info)
        if info is None or info not in available:
            names = sorted({n for m in available for n in (m.name, *m.aliases)})
            hints = self.catalogue.suggestions(name, [n.lower() for n in names])
            reason = "is not configured" if info is not None else "is unknown"
            remedy = "Use 'auto' or a model listed by the `listmodels` tool" + (
                f" (configured providers: {', '.join(self.providers)})." if self.providers else "."
            )
            if info is not None and info.provider not in self.providers:
                from exai.provider_specs import PROVIDER_SPECS

                spec = PROVIDER_SPECS[info.provider]
                needs = " or ".join(spec.key_env) if spec.key_required else spec.base_url_env
                remedy += f" Its provider, {spec.title}, is not set up: the operator sets {needs} to offer it."
            raise NotFoundError(
                f"Model '{name[:80]}' {reason}." + (f" Did you mean: {', '.join(hints)}?" if hints else ""),
                code="unknown_model",
                remedy=remedy,
                details={"suggestions": hints},
            )
        return info

    def plan(
        self,
        requested: str,
        category: Category = "balanced",
        needs_images: bool = False,
        *,
        allow_fallback: bool | None = None,
        tenant: str | None = None,
    ) -> RoutePlan:
        """Select the models for one call, once: the first is the one to size the prompt for.

        An explicitly named model is used as asked; falling back from it needs `allow_fallback=True` or
        EXAI_FALLBACK_FROM_EXPLICIT_MODEL. `auto` takes the best healthy model, then EXAI_FALLBACK_CHAIN when set
        (every other model, ranked, when not), unless `allow_fallback=False`. `auto` means EXAI_DEFAULT_MODEL
        when that names a model.
        """
        by_default = requested.lower() == "auto" and self.settings.default_model.lower() != "auto"
        if requested.lower() == "auto":
            requested = self.settings.default_model
        available = [m for m in self.available_models() if m.images or not needs_images]
        if not available:
            if not self.providers:
                raise no_provider_error()
            if self.models_pending:
                raise ProviderError(
                    f"No model is available yet: {self.models_pending}.",
                    code="models_not_discovered",
                    remedy="Start the server at CUSTOM_API_URL (e.g. `ollama serve`): its models are used as soon "
                    "as it answers, without a restart. Or name its models with CUSTOM_MODELS.",
                )
            raise InvalidInput(
                "No configured model accepts images." if needs_images else "No configured model is allowed.",
                code="no_model",
                remedy="Configure a provider with a vision model (images: true in `listmodels`), or send no images."
                if needs_images
                else "Every configured model is excluded by <PROVIDER>_ALLOWED_MODELS / _DENIED_MODELS, or the "
                "CUSTOM_API_URL endpoint listed no models: see `exai models` and `exai doctor`.",
            )
        if requested.lower() != "auto":
            try:
                first = self.resolve(requested)
            except NotFoundError as exc:
                if not by_default:
                    raise
                raise NotFoundError(
                    f"EXAI_DEFAULT_MODEL (which 'auto' stands for): {exc.message}",
                    code=exc.code,
                    remedy="Set EXAI_DEFAULT_MODEL to a model listed by the `listmodels` tool, or to auto.",
                    details=exc.details,
                ) from None
            if needs_images and not first.images:
                raise InvalidInput(
                    f"Model '{first.name}' does not accept images.",
                    code="images_unsupported",
                    remedy="Choose a model with images: true in `listmodels`, or 'auto'.",
                )
            falls_back = self.settings.fallback_from_explicit_model if allow_fallback is None else allow_fallback
            return RoutePlan(requested, (first, *(self._fallback_chain(first, available) if falls_back else [])))
        ranked = sorted(available, key=lambda m: _rank(m, category))
        healthy = [m for m in ranked if self.breaker_state(m, tenant) != "open"]
        ordered = healthy + [m for m in ranked if m not in healthy]
        if allow_fallback is False:
            return RoutePlan(requested, (ordered[0],))
        if self.settings.fallback_chain:
            return RoutePlan(requested, (ordered[0], *self._fallback_chain(ordered[0], available)))
        return RoutePlan(requested, tuple(ordered))

    def _fallback_chain(self, first: ModelInfo, available: list[ModelInfo]) -> list[ModelInfo]:
        if self.settings.fallback_chain:
            chain = [self.catalogue.get(n) for n in self.settings.fallback_chain]
            return [m for m in chain if m is not None and m in available and m != first]
        # Default: other providers first (a provider outage is the common failure), strongest first.
        others = [m for m in available if m != first]
        return sorted(others, key=lambda m: (m.provider == first.provider, -m.intelligence, m.price_out))[:4]

    # ----- the call ---------------------------------------------------------------------------------
    async def generate(
        self,
        request: GenerateRequest,
        *,
        model: str = "auto",
        category: Category = "balanced",
        deadline_seconds: float | None = None,
        on_delta: DeltaCallback | None = None,
        on_event: EventCallback | None = None,
        allow_fallback: bool | None = None,
        plan: RoutePlan | None = None,
        tenant: str | None = None,
        on_attempts: Callable[[list[Attempt]], None] | None = None,
    ) -> RouteResult:
        """Answer `request` from the first model of `plan` that can (selected here from `model`, `category` and
        `allow_fallback` when no plan is given). A fallback is always reported in `RouteResult.fallbacks`.
        A `tenant`'s upstream requests hold at most its share of each provider's slots. `on_attempts` is told every
        attempt made once the call ends, however it ends (answered, failed or cancelled)."""
        # A tool's own timeout may shorten the call's deadline, never lengthen it.
        seconds = min(deadline_seconds or math.inf, self.settings.call_deadline_seconds)
        deadline = time.monotonic() + seconds
        # A retry wait never ends after the client stopped waiting for the answer (EXAI_CLIENT_WAIT_SECONDS): the
        # client gets the upstream's hint at once, or (holding a pending answer) the failure to collect, instead of
        # a retry that pays again for a model that thinks longer than one attempt may take.
        patience = self.settings.client_wait_seconds
        sleep_until = min(deadline, time.monotonic() + patience) if patience else deadline
        if plan is None:
            needs_images = any(m.images for m in request.messages)
            plan = self.plan(model, category, needs_images, allow_fallback=allow_fallback, tenant=tenant)
        queue = list(plan.candidates)
        attempts: list[Attempt] = []
        caller = Caller(tenant)
        try:
            fallbacks: list[str] = []
            last: ExaiError | None = None
            skipped_open: list[CircuitBreaker] = []

            while queue:
                info = queue.pop(0)
                breaker = self.breaker(info)
                if not breaker.allow(tenant, caller):
                    skipped_open.append(breaker)
                    attempts.append(Attempt(info.provider, info.name, "breaker_open", 0.0))
                    continue
                if attempts and attempts[-1].model != info.name:
                    fallbacks.append(info.name)
                    if on_event:
                        try:
                            await on_event(f"falling back to {info.provider}/{info.name}")
                        except BaseException:
                            breaker.release_probe(caller)
                            raise
                try:
                    response = await self._call_with_retries(
                        info, breaker, request, (deadline, sleep_until), attempts, on_delta, on_event, caller
                    )
                    return RouteResult(response, attempts, fallbacks)
                except UpstreamError as exc:
                    last = to_exai_error(
                        exc, info.provider, info.name, " or ".join(self.configs[info.provider].spec.key_env)
                    )
                    if exc.kind in ("bad_request", "content_filter", "request_too_large"):
                        raise last from exc
                    if exc.kind == "context_too_long":
                        queue = [m for m in queue if m.context_window > info.context_window]
                if time.monotonic() >= deadline:
                    break

            if last is None and skipped_open:
                wait = max(1.0, min(b.retry_in(tenant) for b in skipped_open))  # 0: its own probe is still out
                raise ProviderError(
                    "Every candidate model has its circuit breaker open after repeated upstream failures.",
                    code="breakers_open",
                    details={"retry_in_seconds": round(wait, 1)},
                    remedy=f"Try again in {wait:.0f} s, or pick a model from a healthy provider (see `status`).",
                )
            if time.monotonic() >= deadline and (last is None or last.code != "context_too_long"):
                raise DeadlineError(
                    f"The call did not finish within its deadline of {seconds:g} s ({len(attempts)} attempts).",
                    code="deadline_exceeded",
                    remedy="Try again, pick a faster model, or raise EXAI_CALL_DEADLINE_SECONDS.",
                    details={"attempts": [a.summary() for a in attempts]},
                )
            assert last is not None
            last.details["attempts"] = [a.summary() for a in attempts]
            raise last
        finally:
            if on_attempts is not None:
                on_attempts(attempts)

    async def _call_with_retries(
        self,
        info: ModelInfo,
        breaker: CircuitBreaker,
        request: GenerateRequest,
        deadlines: tuple[float, float],
        attempts: list[Attempt],
        on_delta: DeltaCallback | None,
        on_event: EventCallback | None,
        caller: Caller,
    ) -> GenerateResponse:
        """Ask one model, retrying transient failures; `deadlines` are the call's and the last moment a retry
        wait may end (when the client stops waiting)."""
        deadline, sleep_until = deadlines
        provider = self.providers[info.provider]
        tenant = caller.tenant
        for attempt in range(self.settings.max_retries + 1):
            if time.monotonic() >= deadline:
                breaker.release_probe(caller)
                raise _cut_by_the_deadline()
            await self._take_slot(info, breaker, deadline, caller)
            started = time.perf_counter()
            # One attempt may stay silent EXAI_ATTEMPT_TIMEOUT_SECONDS, so a hung upstream leaves time to retry or
            # fall back. A model that will think may stay silent EXAI_THINKING_TIMEOUT_SECONDS before its first word
            # (OpenAI's reasoning models stream nothing while they think); it is asked to stream, and each chunk it
            # sends moves the limit on, up to the call's deadline.
            thinks = will_think(info, request)
            streamed = info.streaming and (on_delta is not None or thinks)
            quiet = self.settings.attempt_timeout_seconds
            first_word = self.settings.thinking_timeout_seconds if thinks else quiet
            attempt_deadline = min(deadline, time.monotonic() + first_word)
            heard: list[str] = []
            try:
                async with asyncio.timeout(max(0.0, attempt_deadline - time.monotonic())) as limit:
                    alive = _extending(limit, deadline, quiet, thinking=thinks)
                    relay = _recording(on_delta, heard, alive) if streamed else None
                    response = await self._send(provider, info, request, attempt_deadline, attempt, relay)
            except TimeoutError:
                at_deadline = time.monotonic() >= deadline - 0.001
                exc = _limit_that_cut(at_deadline, quiet, first_word if thinks and not heard else None)
                # The call's own deadline cut an upstream that was speaking (words, or reasoning, within its limits):
                # that says nothing of its health, so it does not count towards its breaker. One that said nothing
                # counts: a hung upstream looks like a silent thinker, even behind a proxy that sends an empty chunk.
                within_limits = at_deadline and any(heard)
            except UpstreamError as error:
                exc, within_limits = error, False
            except BaseException as error:
                breaker.release_probe(caller)
                if isinstance(error, asyncio.CancelledError):  # cut while upstream: the vendor bills what it started
                    elapsed = (time.perf_counter() - started) * 1000
                    cut = Attempt(info.provider, info.name, CUT, elapsed, billed=True, streamed="".join(heard))
                    attempts.append(cut)  # the call's, not a failure
                raise
            else:
                breaker.record_success(tenant)
                elapsed = (time.perf_counter() - started) * 1000
                self._observe(attempts, Attempt(info.provider, info.name, "ok", elapsed))
                return response
            finally:
                self._release_slot(info, self._share_key(caller))
            elapsed = (time.perf_counter() - started) * 1000
            timed_out = exc.kind == "timeout" and exc.status is None  # sent, then cut by our time limit
            failed = Attempt(info.provider, info.name, exc.kind, elapsed, billed=timed_out, streamed="".join(heard))
            self._observe(attempts, failed)
            if within_limits:
                breaker.release_probe(caller)
            else:
                breaker.record_failure(exc.kind, tenant, caller)
            log.warning(
                "upstream_failure",
                provider=info.provider,
                model=info.name,
                kind=exc.kind,
                status=exc.status,
                attempt=attempt + 1,
            )
            if not exc.retryable or attempt == self.settings.max_retries or breaker.state_for(tenant) == "open":
                raise exc
            if exc.retry_after is not None and exc.retry_after > self.settings.retry_max_delay_seconds:
                raise exc  # the upstream wants longer than we wait: the next model now, or fail with its hint
            delay = backoff_delay(
                attempt,
                self.settings.retry_base_delay_seconds,
                self.settings.retry_max_delay_seconds,
                exc.retry_after,
                self._rng,
            )
            if time.monotonic() + delay >= sleep_until:
                raise exc
            if on_event:
                await on_event(f"{info.provider}/{info.name}: {exc.kind}; retrying in {delay:.2f} s")
            await asyncio.sleep(delay)
            if not breaker.allow(tenant, caller):
                raise exc
        raise AssertionError("unreachable")

    async def _take_slot(self, info: ModelInfo, breaker: CircuitBreaker, deadline: float, caller: Caller) -> None:
        """Wait for one of the tenant's share of the provider's slots, then for one of the provider's concurrency
        slots. Time spent here is ours, not the upstream's: a deadline that passes in this queue fails the call
        locally and never touches the breaker."""
        tenant = self._share_key(caller)
        slot = self._slots[info.provider]
        waited_from = time.monotonic()
        shared = False
        try:
            async with asyncio.timeout(max(0.0, deadline - waited_from)):
                if tenant is not None:
                    await self._shares.acquire(info.provider, tenant)
                    shared = True
                shared_at = time.monotonic()
                await slot.acquire()
        except BaseException as exc:
            if shared and tenant is not None:
                self._shares.release(info.provider, tenant)
            breaker.release_probe(caller)
            if isinstance(exc, TimeoutError):
                share_wait = tenant is not None and not shared
                limit = self._shares.per_tenant if share_wait else self.settings.provider_concurrency
                raise queue_timeout_error(
                    info.provider, info.name, limit, waited_from, tenant_share=share_wait
                ) from None
            raise
        if time.monotonic() >= deadline:  # both taken, but too late: say which queue the time went to
            self._release_slot(info, tenant)
            breaker.release_probe(caller)
            share_wait = tenant is not None and shared_at >= deadline
            limit = self._shares.per_tenant if share_wait else self.settings.provider_concurrency
            raise queue_timeout_error(info.provider, info.name, limit, waited_from, tenant_share=share_wait)

    def _share_key(self, caller: Caller) -> str | None:
        """Whose share of a provider's slots a call takes: its tenant's, or none where the daemon serves one tenant."""
        return None if self.one_tenant else caller.tenant

    def _release_slot(self, info: ModelInfo, tenant: str | None) -> None:
        self._slots[info.provider].release()
        if tenant is not None:
            self._shares.release(info.provider, tenant)

    async def _send(
        self,
        provider: Provider,
        info: ModelInfo,
        request: GenerateRequest,
        deadline: float,
        attempt: int,
        on_delta: DeltaCallback | None,
    ) -> GenerateResponse:
        """One attempt upstream, traced. Raises `UpstreamError` for upstream failures, `ExaiError` for local ones."""
        attributes: dict[str, str | int] = {
            "exai.provider": info.provider,
            "exai.model": info.name,
            "exai.attempt": attempt + 1,
        }
        span = tracer.start_span(f"provider {info.provider}", attributes=attributes)
        options = CallOptions(
            timeout=max(0.001, deadline - time.monotonic()),
            headers={"X-Request-ID": current_correlation_id()},
        )
        try:
            return await provider.generate(request, info, options, on_delta)
        except UpstreamError as error:
            span.set_attribute("exai.failure", error.kind)
            span.set_status(StatusCode.ERROR, error.kind)
            raise
        except ExaiError as error:
            span.set_status(StatusCode.ERROR, error.code)
            raise
        finally:
            span.end()

    def _observe(self, attempts: list[Attempt], attempt: Attempt) -> None:
        attempts.append(attempt)
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    def breakers(self) -> dict[tuple[str, str], BreakerView]:
        """Every breaker that has seen a call, by (provider, model)."""
        return {key: breaker.view() for key, breaker in self._breakers.items()}

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.providers.values()), return_exceptions=True)


def _recording(on_delta: DeltaCallback | None, heard: list[str], alive: Callable[[bool], None]) -> DeltaCallback:
    """`on_delta` (if any), keeping what one attempt streamed back (what the vendor bills if the attempt is cut) and
    telling `alive` that the upstream sent a chunk, and whether it held a word (text or reasoning)."""

    async def relay(chunk: StreamChunk) -> None:
        words = chunk.text + chunk.reasoning
        if words:
            heard.append(words)
        alive(bool(words))
        if on_delta is not None:
            await on_delta(chunk)

    return relay


def _extending(limit: asyncio.Timeout, deadline: float, quiet: float, thinking: bool) -> Callable[[bool], None]:
    """Move the attempt's limit to `quiet` seconds from now, never past the call's `deadline` (monotonic), when the
    upstream sends a chunk: at once for the first, then at most once a second, or a tenth of `quiet` when that is
    shorter (a reasoning model streams hundreds of chunks a second; skipping one must not cost a short limit the
    chunk after it). A `thinking` attempt's longer limit before the first word stands until a chunk holds one
    (OpenAI sends an empty chunk, then thinks in silence)."""
    loop = asyncio.get_running_loop()
    moved: float | None = None
    every = min(1.0, quiet / 10)
    waiting_for_a_word = thinking

    def alive(words: bool) -> None:
        nonlocal moved, waiting_for_a_word
        if waiting_for_a_word and not words:
            return
        waiting_for_a_word = False
        now = loop.time()
        if (moved is None or now - moved >= every) and not limit.expired():
            moved = now
            limit.reschedule(now + max(0.0, min(quiet, deadline - time.monotonic())))

    return alive


def _cut_by_the_deadline() -> UpstreamError:
    return UpstreamError(
        "timeout",
        "the call's deadline (EXAI_CALL_DEADLINE_SECONDS)",
        remedy="Raise EXAI_CALL_DEADLINE_SECONDS, or pick a faster model or less thinking (thinking_mode).",
    )


def _limit_that_cut(at_deadline: bool, quiet: float, thinking: float | None) -> UpstreamError:
    """An attempt's timeout, naming the limit that cut it (the call's deadline, when `at_deadline`) and what to do;
    `thinking` is the limit of a thinking model that had not said a word yet. Such a model is not asked again: it
    would think, and be paid, again."""
    if at_deadline:
        return _cut_by_the_deadline()
    if thinking is not None:
        return UpstreamError(
            "timeout",
            f"the limit of {thinking:g} s for a model's thinking before its first word (EXAI_THINKING_TIMEOUT_SECONDS)",
            remedy="Asked again as it was, the model would think, and be paid, again: raise "
            "EXAI_THINKING_TIMEOUT_SECONDS (EXAI_CALL_DEADLINE_SECONDS above it), or ask for less thinking "
            "(a lower thinking_mode, where the model takes one) or a faster model.",
            worth_repeating=False,
        )
    return UpstreamError(
        "timeout",
        f"one attempt's limit of {quiet:g} s without a word from it (EXAI_ATTEMPT_TIMEOUT_SECONDS)",
        remedy="Try again or pick a faster model, or raise EXAI_ATTEMPT_TIMEOUT_SECONDS (EXAI_CALL_DEADLINE_SECONDS "
        "above it). A model that thinks before it answers and is not known to (a Custom endpoint's) gets "
        "EXAI_THINKING_TIMEOUT_SECONDS once EXAI_MODELS_FILE gives its thinking_style (see Long calls in the README).",
    )


def _rank(model: ModelInfo, category: Category) -> tuple[float, ...]:
    if category == "fast":
        return (model.price_out + model.price_in, -model.intelligence)
    if category == "reasoning":
        return (not model.thinking, -model.intelligence, model.price_out)
    return (-model.intelligence, model.price_out)


def no_provider_error() -> InvalidInput:
    from exai.provider_specs import PROVIDER_SPECS

    hints = "; ".join(
        f"{spec.title}: {' or '.join(spec.key_env) if spec.key_required else 'CUSTOM_API_URL'}"
        for spec in PROVIDER_SPECS.values()
    )
    return InvalidInput(
        "No model provider is configured.",
        code="no_provider",
        remedy=f"Set at least one of these environment variables, then restart: {hints}. "
        "To try without a key, run `exai sim` and set CUSTOM_API_URL=http://127.0.0.1:8900/v1.",
    )
