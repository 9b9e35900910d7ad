"""Each wire format, plain and streaming, against the simulator over real HTTP."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from exai.errors import ExaiError
from exai.providers.anthropic import AnthropicProvider
from exai.providers.base import CallOptions, UpstreamError
from exai.providers.catalogue import Catalogue
from exai.providers.openai_compatible import OpenAICompatibleProvider
from exai.providers.router import Attempt
from exai.providers.types import GenerateRequest, ImageInput, Message, StreamChunk
from exai.testing.replies import reply_digest
from tests.conftest import Closing, MakeServices, SimControl
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio
CATALOGUE = Catalogue.load(custom_models=["sim-fast"])
HISTORY = [
    Message(role="user", content="first question"),
    Message(role="assistant", content="first answer"),
    Message(role="user", content="second question, with unicode: żółw 🐢"),
]
OPTIONS = CallOptions(timeout=10, headers={"X-Request-ID": "req-12345"})


def _providers(sim: SimControl, closing: Closing) -> list[tuple[Any, str]]:
    return [
        (closing(OpenAICompatibleProvider("custom", sim.openai_url, None)), "sim-fast"),
        (closing(AnthropicProvider("anthropic", sim.url, "key")), "claude-haiku-4-5"),
    ]


@pytest.mark.parametrize("streaming", [False, True])
async def test_prompt_system_and_history_arrive_intact(sim: SimControl, streaming: bool, closing: Closing) -> None:
    request = GenerateRequest(system="You are terse.", messages=HISTORY)
    expected = reply_digest("You are terse.", [(m.role, m.content) for m in HISTORY])
    for provider, model in _providers(sim, closing):
        chunks: list[StreamChunk] = []

        async def on_delta(chunk: StreamChunk, chunks: list[StreamChunk] = chunks) -> None:
            chunks.append(chunk)

        response = await provider.generate(request, CATALOGUE.get(model), OPTIONS, on_delta if streaming else None)
        assert f"digest: {expected}" in response.text
        assert "echo: second question, with unicode: żółw 🐢" in response.text
        assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
        assert response.model == model
        assert response.finish_reason in ("stop", "end_turn")
        if streaming:
            assert len([c for c in chunks if c.text]) > 5, "answer should arrive in many pieces"
            assert "".join(c.text for c in chunks) == response.text
    sent = sim.requests(2)
    assert all(r["headers"]["x-request-id"] == "req-12345" for r in sent)
    assert all(r["body"].get("stream", False) is streaming for r in sent)


async def test_kimi_reasoning_content_is_returned(sim: SimControl, closing: Closing) -> None:
    provider = closing(OpenAICompatibleProvider("kimi", sim.openai_url, "k"))
    request = GenerateRequest(messages=[Message(role="user", content="think")])
    for on_delta in (None, _ignore):
        response = await provider.generate(request, CATALOGUE.get("kimi-k2-thinking"), OPTIONS, on_delta)
        assert response.reasoning == "reasoning about kimi-k2-thinking"


async def test_quirk_flags_shape_the_wire_request(sim: SimControl, closing: Closing) -> None:
    provider = closing(OpenAICompatibleProvider("openai", sim.openai_url, "k"))
    request = GenerateRequest(
        messages=[Message(role="user", content="q")], temperature=0.2, thinking="high", max_output_tokens=100
    )
    await provider.generate(request, CATALOGUE.get("gpt-5"), OPTIONS)
    await provider.generate(request, CATALOGUE.get("glm-4.6"), OPTIONS)
    gpt5, glm = (r["body"] for r in sim.requests(2))
    assert gpt5["max_completion_tokens"] == 100 and "max_tokens" not in gpt5
    assert gpt5["temperature"] == 1.0, "gpt-5 only accepts its fixed temperature"
    assert gpt5["reasoning_effort"] == "high"
    assert glm["thinking"] == {"type": "enabled"} and glm["temperature"] == 0.2 and glm["max_tokens"] == 100


async def test_reasoning_models_get_an_effort_they_accept_by_default(sim: SimControl, closing: Closing) -> None:
    provider = closing(OpenAICompatibleProvider("openai", sim.openai_url, "k"))
    request = GenerateRequest(messages=[Message(role="user", content="q")], temperature=0.3)
    for name in ("o3", "o4-mini", "gpt-5"):
        await provider.generate(request, CATALOGUE.get(name), OPTIONS)
    o3, o4, gpt5 = (r["body"] for r in sim.requests(3))
    assert o3["reasoning_effort"] == o4["reasoning_effort"] == "low", "o3 and o4-mini refuse 'minimal'"
    assert gpt5["reasoning_effort"] == "minimal"
    assert "temperature" not in o3 and "max_tokens" not in o3 and o3["max_completion_tokens"] > 0


async def test_anthropic_thinking_and_images(sim: SimControl, closing: Closing) -> None:
    provider = closing(AnthropicProvider("anthropic", sim.url, "k"))
    image = ImageInput(url="data:image/png;base64,iVBORw0KGgo=")
    request = GenerateRequest(
        system="sys", thinking="medium", messages=[Message(role="user", content="look", images=[image])]
    )
    response = await provider.generate(request, CATALOGUE.get("claude-sonnet-4-5"), OPTIONS)
    assert response.reasoning == "reasoning about claude-sonnet-4-5"
    assert "images: 1" in response.text
    body = sim.requests(1)[0]["body"]
    assert body["thinking"]["type"] == "enabled" and body["thinking"]["budget_tokens"] == 8192
    assert body["system"] == "sys" and "temperature" not in body
    assert body["messages"][0]["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgo=",
    }


async def test_list_models_on_both_wires(sim: SimControl, closing: Closing) -> None:
    for provider, _ in _providers(sim, closing):
        listed = await provider.list_models(5)  # the simulator's own models, then every catalogued one
        assert listed[:3] == ["sim-fast", "sim-smart", "sim-large"] and "kimi-k2.6" in listed


FAULTS = [
    ("429", "rate_limit"),
    ("500", "server"),
    ("503", "server"),
    ("401", "auth"),
    ("malformed", "server"),
    ("reset", "connection"),
    ("context_length", "context_too_long"),
    ("content_filter", "content_filter"),
]


@pytest.mark.parametrize(("fault", "kind"), FAULTS)
@pytest.mark.parametrize("streaming", [False, True])
async def test_every_fault_is_classified(
    sim: SimControl, fault: str, kind: str, streaming: bool, closing: Closing
) -> None:
    sim.fault(fault, retry_after=2)
    request = GenerateRequest(messages=[Message(role="user", content="q")])
    for provider, model in _providers(sim, closing):
        with pytest.raises(UpstreamError) as caught:
            await provider.generate(request, CATALOGUE.get(model), OPTIONS, _ignore if streaming else None)
        expected = "connection" if (fault == "malformed" and streaming) else kind
        assert caught.value.kind == expected, caught.value.message
        if fault == "429":
            assert caught.value.retry_after == 2


async def test_truncated_stream_is_a_connection_failure(sim: SimControl, closing: Closing) -> None:
    sim.fault("truncate")
    request = GenerateRequest(messages=[Message(role="user", content="a long enough question here")])
    for provider, model in _providers(sim, closing):
        with pytest.raises(UpstreamError) as caught:
            await provider.generate(request, CATALOGUE.get(model), OPTIONS, _ignore)
        assert caught.value.kind == "connection"


async def test_hang_hits_the_timeout_and_the_upstream_sees_the_hang_up(sim: SimControl, closing: Closing) -> None:
    sim.fault("hang")
    provider = closing(OpenAICompatibleProvider("custom", sim.openai_url, None))
    request = GenerateRequest(messages=[Message(role="user", content="q")])
    with pytest.raises(UpstreamError) as caught:
        await provider.generate(request, CATALOGUE.get("sim-fast"), CallOptions(timeout=0.3, headers={}))
    assert caught.value.kind == "timeout"
    await wait_until(lambda: sim.count("disconnects") >= 1, "the simulator saw the abandoned request hang up")


async def _ignore(chunk: StreamChunk) -> None:
    return None


@contextlib.contextmanager
def unreachable_upstream() -> Iterator[str]:
    """The URL of a listener whose accept queue is full: the kernel drops new connections, so connecting times out
    (a real connect timeout, not a refusal)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = [socket.socket() for _ in range(3)]
    try:
        for sock in queued:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}"
    finally:
        for sock in (*queued, listener):
            sock.close()


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_request_that_could_not_be_sent_in_time_is_a_connection_failure_not_a_timeout(
    streamed: bool, closing: Closing
) -> None:
    """A connect timeout means the upstream never had the request: it bills nothing, so the failure is `connection`;
    `timeout` is kept for a request that was sent and not answered in time (charged its prompt, see
    tests/test_cancel_charges.py)."""
    with unreachable_upstream() as url:
        wires = [
            (closing(OpenAICompatibleProvider("custom", f"{url}/v1", None)), "sim-fast"),
            (closing(AnthropicProvider("anthropic", url, "key")), "claude-haiku-4-5"),
        ]
        request = GenerateRequest(messages=[Message(role="user", content="hello")])
        for provider, name in wires:
            model = CATALOGUE.get(name)
            assert model is not None
            with pytest.raises(UpstreamError) as caught:
                await provider.generate(
                    request, model, CallOptions(timeout=1.0, headers={}), _ignore if streamed else None
                )
            assert caught.value.kind == "connection" and "ConnectTimeout" in caught.value.message, (name, caught.value)


async def test_an_attempt_that_never_connected_is_not_charged(make_services: MakeServices, closing: Closing) -> None:
    """Through the router, with the attempt's own time limit running: connecting gives up first (at half the
    attempt), so the attempt is a `connection` failure and not billed, where the attempt's limit would have cut it
    as a request the upstream had started on."""
    services = await make_services(EXAI_ATTEMPT_TIMEOUT_SECONDS="2", EXAI_MAX_RETRIES="0")
    seen: list[Attempt] = []
    with unreachable_upstream() as url:
        services.router.providers["custom"] = closing(OpenAICompatibleProvider("custom", f"{url}/v1", None))
        with pytest.raises(ExaiError):
            await services.router.generate(
                GenerateRequest(messages=[Message(role="user", content="hello")]),
                model="sim-fast",
                tenant="alice",
                on_attempts=seen.extend,
            )
    assert [(a.outcome, a.billed) for a in seen] == [("connection", False)], seen
