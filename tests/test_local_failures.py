"""Failures of our own making (building a request, waiting for a local slot) never count against an upstream.

They are not retried, not recorded as provider attempts, and never open a circuit breaker: a bad header or a busy
local queue must not take a healthy provider away from every other client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from exai.errors import InternalError, InvalidInput
from exai.observability import context
from exai.observability.context import SAFE_ID
from exai.providers import openai_compatible
from exai.providers.base import CallOptions
from exai.providers.catalogue import Catalogue
from exai.providers.openai_compatible import OpenAICompatibleProvider
from exai.providers.router import Attempt
from exai.providers.types import GenerateRequest, Message
from tests.conftest import Closing, MakeServices, Proc, SimControl
from tests.helpers import tool_error, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
CATALOGUE = Catalogue.load(custom_models=["sim-fast"])
REQUEST = GenerateRequest(messages=[Message(role="user", content="q")])


async def test_a_header_that_cannot_be_encoded_is_a_local_validation_error(sim: SimControl, closing: Closing) -> None:
    with pytest.raises(InvalidInput) as caught:
        CallOptions(timeout=10, headers={"X-Request-ID": "café"})
    assert caught.value.code == "unsendable_header" and caught.value.details == {"header": "X-Request-ID"}
    options = CallOptions(timeout=10, headers={"X-Request-ID": "ok-1"})
    # the SDK refuses to send it
    provider = closing(OpenAICompatibleProvider("kimi", sim.openai_url, "sk-pasted\u00a0"))
    for on_delta in (None, _ignore):
        with pytest.raises(InvalidInput) as caught:
            await provider.generate(REQUEST, CATALOGUE.get("kimi-k2"), options, on_delta)
        assert caught.value.code == "unsendable_header"
        assert "sk-pasted" not in caught.value.render() and "KIMI_API_KEY" in (caught.value.remedy or "")
    assert sim.count("requests") == 0


async def test_a_defect_while_building_a_request_is_an_internal_error(
    sim: SimControl, monkeypatch: pytest.MonkeyPatch, closing: Closing
) -> None:
    def broken(*_: Any) -> dict[str, Any]:
        raise TypeError("unsupported operand")

    monkeypatch.setattr(openai_compatible, "openai_params", broken)
    provider = closing(OpenAICompatibleProvider("custom", sim.openai_url, None))
    with pytest.raises(InternalError) as caught:
        await provider.generate(REQUEST, CATALOGUE.get("sim-fast"), CallOptions(timeout=10, headers={}))
    assert caught.value.code == "request_build_failed" and not caught.value.retryable
    assert sim.count("requests") == 0


async def test_local_build_failures_never_reach_the_breaker(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_BREAKER_FAILURE_THRESHOLD="2")
    router = services.router
    seen: list[Attempt] = []
    router.on_attempt = seen.append
    model = router.resolve("sim-fast")
    context._correlation_id.set("café")  # past the edge's check, as a future caller of the router might be
    for _ in range(3):
        with pytest.raises(InvalidInput) as caught:
            await router.generate(REQUEST, model="sim-fast")
        assert caught.value.code == "unsendable_header"
    assert sim.count("requests") == 0 and seen == [], "no attempt was made, so none is recorded"
    assert router.breaker_state(model) == "closed"
    context._correlation_id.set("fine-id")
    result = await router.generate(REQUEST, model="sim-fast")
    assert result.response.model == "sim-fast" and [a.outcome for a in seen] == ["ok"]


async def test_a_bad_key_and_a_bad_request_id_leave_every_breaker_closed(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(KIMI_API_KEY="sk-test-kimi\u00a0secret", EXAI_BREAKER_FAILURE_THRESHOLD="2")  # pasted with a NBSP
    async with (
        httpx2.AsyncClient(headers={b"X-Request-ID": "café".encode()}, timeout=60) as http,
        Client(streamable_http_client(f"{proc.url}/mcp", http_client=http)) as client,
    ):
        await client.list_tools()
        errors = [tool_error(await client.call_tool("chat", {"prompt": "q", "model": "kimi-k2"})) for _ in range(3)]
        answered = await client.call_tool("chat", {"prompt": "still fine", "model": "sim-fast"})
        status = (await client.call_tool("status", {})).structured_content
    for error in errors:
        assert (error["category"], error["code"]) == ("validation", "unsendable_header")
        assert "KIMI_API_KEY" in error["remedy"] and "sk-test" not in str(error)
        assert error["correlation_id"] != "café" and SAFE_ID.fullmatch(error["correlation_id"])
    assert not answered.is_error
    fresh = answered.structured_content["correlation_id"]
    assert fresh != "café" and SAFE_ID.fullmatch(fresh)
    assert sim.count("requests:kimi-k2-0905-preview") == 0 and sim.count("requests") == 1
    assert sim.requests(1)[0]["headers"]["x-request-id"] == fresh
    assert all(p["breakers"] == {} and p["recent_errors"] == {} for p in status["providers"]), status


async def test_a_deadline_spent_in_the_local_queue_is_not_an_upstream_timeout(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_PROVIDER_CONCURRENCY="1", EXAI_BREAKER_FAILURE_THRESHOLD="2")
    sim.latency(10_000, model="sim-smart")
    async with (
        httpx2.AsyncClient(timeout=120) as http,
        Client(streamable_http_client(f"{proc.url}/mcp", http_client=http)) as client,
    ):
        await client.list_tools()
        holder = asyncio.create_task(client.call_tool("chat", {"prompt": "slow", "model": "sim-smart"}))
        await wait_until(lambda: sim.stats()["in_flight"] == 1, "the call reached the upstream")
        waiters = [
            {"model": "sim-fast", "stance": stance} for stance in ("for", "against", "neutral")
        ]  # the same provider as the holder: they queue for its one slot
        results = await asyncio.gather(
            *(
                client.call_tool("consensus", {"prompt": f"q{i}", "models": waiters, "per_model_timeout_seconds": 1})
                for i in range(2)
            )
        )
        status = (await client.call_tool("status", {})).structured_content
        assert not holder.done(), "the holder must still hold the slot while the waiters expire"
        assert not (await holder).is_error
        after = await client.call_tool("chat", {"prompt": "now", "model": "sim-fast"})
    opinions = [o for r in results for o in r.structured_content["opinions"]]
    assert len(opinions) == 6 and not any(o["ok"] for o in opinions)
    for opinion in opinions:
        error = opinion["error"]
        assert (error["category"], error["code"]) == ("timeout", "local_queue_timeout"), error
        assert "local queue" in error["message"] and "EXAI_PROVIDER_CONCURRENCY" in error["remedy"]
    assert all(p["breakers"] == {} and p["recent_errors"] == {} for p in status["providers"]), status
    assert not after.is_error, "the model's breaker stayed closed"
    assert sim.count("requests:sim-fast") == 1 and sim.count("requests:sim-smart") == 1


async def _ignore(_: object) -> None:
    return None


async def test_a_key_with_a_newline_is_trimmed_or_refused_locally_never_sent(sim: SimControl, closing: Closing) -> None:
    from exai.config import load_settings

    assert load_settings(kimi_api_key="sk-pasted\n").provider("kimi").api_key == "sk-pasted"
    provider = closing(OpenAICompatibleProvider("kimi", sim.openai_url, "sk-broken\nkey"))
    model = CATALOGUE.get("sim-fast")
    assert model is not None
    with pytest.raises(InvalidInput) as caught:
        await provider.generate(REQUEST, model, CallOptions(timeout=10, headers={}))
    assert caught.value.code == "unsendable_header" and "sk-broken" not in caught.value.message
    assert sim.count("requests") == 0
