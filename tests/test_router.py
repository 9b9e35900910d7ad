"""The router's reaction to every fault kind, counted on the simulator's side of the wire."""

from __future__ import annotations

import asyncio
import time

import pytest

from exai.errors import DeadlineError, NotFoundError, ProviderError
from exai.providers.types import GenerateRequest, Message, StreamChunk
from tests.conftest import MakeServices, SimControl
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
REQUEST = GenerateRequest(messages=[Message(role="user", content="route me")])


async def test_transient_500_is_retried_on_the_same_model(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    sim.fault("500", model="sim-fast", count=2)
    result = await services.router.generate(REQUEST, model="sim-fast")
    assert result.response.model == "sim-fast" and result.fallbacks == []
    assert [a.outcome for a in result.attempts] == ["server", "server", "ok"]
    assert sim.count("requests:sim-fast") == 3


async def test_429_waits_for_retry_after(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_RETRY_MAX_DELAY_SECONDS="5")  # a hint within what we wait
    sim.fault("429", model="sim-fast", count=1, retry_after=0.4)
    started = time.monotonic()
    result = await services.router.generate(REQUEST, model="sim-fast")
    assert time.monotonic() - started >= 0.4
    assert [a.outcome for a in result.attempts] == ["rate_limit", "ok"]


@pytest.mark.parametrize("fault", ["reset", "malformed", "503"])
async def test_other_transient_faults_are_retried(sim: SimControl, fault: str, make_services: MakeServices) -> None:
    services = await make_services()
    sim.fault(fault, model="sim-fast", count=1)
    result = await services.router.generate(REQUEST, model="sim-fast")
    assert result.retries == 1 and result.response.model == "sim-fast"
    assert sim.count("requests:sim-fast") == 2


async def test_truncated_stream_is_retried(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    sim.fault("truncate", model="sim-fast", count=1)
    seen: list[str] = []

    async def on_delta(chunk: StreamChunk) -> None:
        seen.append(chunk.text)

    result = await services.router.generate(REQUEST, model="sim-fast", on_delta=on_delta)
    assert [a.outcome for a in result.attempts] == ["connection", "ok"]
    assert result.response.text.startswith("SIM sim-fast")


async def test_401_is_never_retried_and_falls_back_to_another_provider(
    sim: SimControl, make_services: MakeServices
) -> None:
    services = await make_services(EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true")
    sim.fault("401", model="sim-fast")
    result = await services.router.generate(REQUEST, model="sim-fast")
    assert sim.count("requests:sim-fast") == 1, "an auth failure must not be retried"
    assert result.attempts[0].outcome == "auth"
    assert result.response.provider != "custom", "the default chain tries another provider first"
    assert result.fallbacks == [result.response.model]


async def test_401_everywhere_reports_which_key_to_check(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_FALLBACK_CHAIN="sim-smart", EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true")
    sim.fault("401")
    with pytest.raises(ProviderError) as caught:
        await services.router.generate(REQUEST, model="kimi-k2")
    assert caught.value.code == "upstream_auth"
    assert "CUSTOM_API_KEY" in (caught.value.remedy or "")
    assert sim.count("requests") == 2


async def test_bad_request_is_neither_retried_nor_rerouted(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    sim.fault("content_filter", model="sim-fast")
    with pytest.raises(ProviderError) as caught:
        await services.router.generate(REQUEST, model="sim-fast")
    assert caught.value.code == "content_filtered" and not caught.value.retryable
    assert sim.count("requests") == 1


async def test_context_too_long_moves_to_a_larger_context_model(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_FALLBACK_CHAIN="sim-smart,sim-large", EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true")
    sim.fault("context_length", model="sim-fast")
    result = await services.router.generate(REQUEST, model="sim-fast")
    assert result.response.model == "sim-large"
    assert sim.count("requests:sim-fast") == 1
    assert sim.count("requests:sim-smart") == 0, "a model with the same context window cannot help"


async def test_exhausted_retries_fall_back_along_the_chain(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_FALLBACK_CHAIN="sim-smart", EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true")
    sim.fault("503", model="sim-fast")
    result = await services.router.generate(REQUEST, model="sim-fast")
    assert result.response.model == "sim-smart" and result.fallbacks == ["sim-smart"]
    assert sim.count("requests:sim-fast") == 3  # first try + EXAI_MAX_RETRIES (2)


async def test_an_explicit_model_is_not_replaced_by_default(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_FALLBACK_CHAIN="sim-smart")
    for fault in ("503", "401", "context_length"):
        sim.reset()
        sim.fault(fault, model="sim-fast")
        with pytest.raises(ProviderError):
            await services.router.generate(REQUEST, model="sim-fast")
        assert sim.count("requests") == sim.count("requests:sim-fast") >= 1, fault
    assert [m.name for m in services.router.plan("sim-fast").candidates] == ["sim-fast"]
    assert [m.name for m in services.router.plan("sim-fast", allow_fallback=True).candidates] == [
        "sim-fast",
        "sim-smart",
    ]


async def test_auto_honours_the_fallback_chain(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_FALLBACK_CHAIN="sim-large")
    best = services.router.plan("auto").first
    assert [m.name for m in services.router.plan("auto").candidates] == [best.name, "sim-large"]
    sim.fault("503", model=best.name)
    result = await services.router.generate(REQUEST, model="auto")
    assert result.response.model == "sim-large" and result.fallbacks == ["sim-large"]
    assert sim.count("requests") == sim.count(f"requests:{best.name}") + 1, "nothing outside the chain is tried"


async def test_a_plan_is_used_as_selected(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    plan = services.router.plan("sim-smart")
    result = await services.router.generate(REQUEST, plan=plan)  # no second selection from model="auto"
    assert result.response.model == plan.first.name == "sim-smart"
    assert sim.count("requests") == 1


class FakeClock:
    """A clock the test moves by hand: the breaker's cooldown passes without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def test_breaker_opens_then_half_opens_and_recovers(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(
        CUSTOM_ALLOWED_MODELS="sim-fast",
        KIMI_API_KEY="",
        ANTHROPIC_API_KEY="",
        EXAI_BREAKER_FAILURE_THRESHOLD="3",
        EXAI_BREAKER_COOLDOWN_SECONDS="30",
    )
    router = services.router
    model = router.resolve("sim-fast")
    clock = FakeClock()
    router.breaker(model).clock = clock
    sim.fault("500", model="sim-fast")
    with pytest.raises(ProviderError):
        await router.generate(REQUEST, model="sim-fast")
    assert router.breaker_state(model) == "open"
    assert sim.count("requests:sim-fast") == 3
    clock.advance(29.9)
    with pytest.raises(ProviderError) as caught:
        await router.generate(REQUEST, model="sim-fast")
    assert caught.value.code == "breakers_open"
    assert sim.count("requests:sim-fast") == 3, "an open breaker sends nothing upstream"
    clock.advance(0.1)
    assert router.breaker_state(model) == "half_open"
    with pytest.raises(ProviderError):
        await router.generate(REQUEST, model="sim-fast")
    assert sim.count("requests:sim-fast") == 4, "half-open lets exactly one probe through"
    assert router.breaker_state(model) == "open"
    sim.clear_faults()
    clock.advance(29.9)
    assert router.breaker_state(model) == "open", "a failed probe starts the cooldown again"
    clock.advance(0.1)
    result = await router.generate(REQUEST, model="sim-fast")
    assert result.response.model == "sim-fast"
    assert router.breaker_state(model) == "closed"


async def test_deadline_is_respected_and_the_upstream_request_is_cancelled(
    sim: SimControl, make_services: MakeServices
) -> None:
    services = await make_services(CUSTOM_ALLOWED_MODELS="sim-fast", KIMI_API_KEY="", ANTHROPIC_API_KEY="")
    sim.fault("hang", model="sim-fast")
    started = time.monotonic()
    with pytest.raises(DeadlineError):
        await services.router.generate(REQUEST, model="sim-fast", deadline_seconds=1.0)
    assert time.monotonic() - started < 5.0, "the hang outlived the deadline (5x: the machine may be busy)"
    await wait_until(lambda: sim.count("disconnects") >= 1, "the simulator saw the cancelled request hang up")


async def test_concurrency_limit_per_provider(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_PROVIDER_CONCURRENCY="2")
    sim.latency(150)
    await asyncio.gather(*(services.router.generate(REQUEST, model="sim-fast") for _ in range(6)))
    assert sim.stats()["max_in_flight"] == 2


async def test_auto_skips_a_model_whose_breaker_is_open(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    router = services.router
    best = router.plan("auto", "balanced").first
    breaker = router.breaker(best)
    for _ in range(services.settings.breaker_failure_threshold):
        breaker.record_failure("server")
    result = await router.generate(REQUEST, model="auto")
    assert result.response.model != best.name
    assert sim.count(f"requests:{best.name}") == 0


async def test_unknown_model_gets_suggestions(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    with pytest.raises(NotFoundError) as caught:
        await services.router.generate(REQUEST, model="kimi-k3")
    assert "kimi-k2" in caught.value.message


async def test_a_known_model_of_a_provider_not_set_up_names_the_key_to_set(
    sim: SimControl, make_services: MakeServices
) -> None:
    """ "kimi-k2.6 is not configured. Use a model listed by listmodels" left the user to guess why."""
    services = await make_services(KIMI_API_KEY="")
    with pytest.raises(NotFoundError) as caught:
        await services.router.generate(REQUEST, model="kimi-k2.6")
    assert "is not configured" in caught.value.message
    assert "KIMI_API_KEY" in (caught.value.remedy or ""), caught.value.remedy
    with pytest.raises(NotFoundError) as unknown:
        await services.router.generate(REQUEST, model="no-such-model")
    assert "_API_KEY" not in (unknown.value.remedy or "")
