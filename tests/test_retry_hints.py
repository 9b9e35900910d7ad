"""Retries that respect the client: an upstream's retry hint is waited only up to EXAI_RETRY_MAX_DELAY_SECONDS.

Counted on the simulator's side: which models were asked, and when.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from mcp import Client

from exai.errors import ProviderError
from exai.providers.types import GenerateRequest, Message
from tests.conftest import MakeServices, Proc, SimControl
from tests.helpers import tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
REQUEST = GenerateRequest(messages=[Message(role="user", content="retry me")])


async def test_a_long_retry_after_falls_back_at_once(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(
        EXAI_RETRY_MAX_DELAY_SECONDS="2", EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true", EXAI_FALLBACK_CHAIN="sim-smart"
    )
    sim.fault("429", model="sim-fast", retry_after=100)
    async with Client(f"{proc.url}/mcp") as client:
        started = time.monotonic()
        result = await client.call_tool("chat", {"prompt": "hint", "model": "sim-fast"})
        took = time.monotonic() - started
    assert not result.is_error, result.content
    assert result.structured_content["model"] == "sim-smart"
    assert sim.count("requests:sim-fast") == 1, "a 100 s hint is not waited out on the same model"
    assert took < 30, f"the call waited {took:.1f} s behind a hint it does not honour"


async def test_a_long_retry_after_without_fallback_fails_at_once_with_the_hint(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_RETRY_MAX_DELAY_SECONDS="2")
    sim.fault("429", model="sim-fast", retry_after=100)
    async with Client(f"{proc.url}/mcp") as client:
        started = time.monotonic()
        result = await client.call_tool("chat", {"prompt": "hint", "model": "sim-fast"})
        took = time.monotonic() - started
    error = tool_error(result)
    assert error["code"] == "upstream_rate_limited" and error["retryable"]
    assert error["details"]["retry_in_seconds"] == 100
    assert sim.count("requests:sim-fast") == 1
    assert took < 30, f"the call waited {took:.1f} s behind a hint it does not honour"


async def test_retry_after_ms_is_waited(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_RETRY_MAX_DELAY_SECONDS="5")
    sim.fault("429", model="sim-fast", count=1, retry_after_ms=1500)
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("chat", {"prompt": "precise hint", "model": "sim-fast"})
    assert not result.is_error, result.content
    sent = [r["time"] for r in sim.requests(10) if r["model"] == "sim-fast"]
    assert len(sent) == 2, sent
    assert sent[1] - sent[0] >= 1.5, f"the retry came {sent[1] - sent[0]:.2f} s after a 1500 ms hint"


async def test_no_retry_wait_ends_after_the_client_stopped_waiting(
    sim: SimControl, make_services: MakeServices
) -> None:
    services = await make_services(
        EXAI_RETRY_MAX_DELAY_SECONDS="30", EXAI_CLIENT_WAIT_SECONDS="2", EXAI_MAX_RETRIES="3"
    )
    sim.fault("429", model="sim-fast", retry_after=10)  # honoured by the retry max delay, not by the client's wait
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        await services.router.generate(REQUEST, model="sim-fast")
    took = time.monotonic() - started
    assert raised.value.details["retry_in_seconds"] == 10
    assert sim.count("requests:sim-fast") == 1, "no second attempt after the client's wait"
    assert took < 10, f"the call slept {took:.1f} s, past the client's wait"
