"""The wire code against the vendors' documented shapes: every fixture is replayed by the simulator over HTTP into
the real provider classes; answers keep reasoning apart from the text and read usage with cache and reasoning
tokens, errors are classified as the router needs, and streamed fixtures give what their plain twins give."""

from __future__ import annotations

import re
from typing import Any

import pytest

from exai.providers.anthropic import AnthropicProvider
from exai.providers.base import CallOptions, Provider, UpstreamError, collect_stream
from exai.providers.catalogue import Catalogue
from exai.providers.openai_compatible import OpenAICompatibleProvider
from exai.providers.types import GenerateRequest, GenerateResponse, Message, StreamChunk
from exai.testing.fixtures import VENDORS, all_fixtures
from tests.conftest import SimControl

pytestmark = pytest.mark.anyio
FIXTURES = all_fixtures()
CATALOGUE = Catalogue.load()
OPTIONS = CallOptions(timeout=30, headers={})


def _expectation(name: str) -> dict[str, Any]:
    fixture = FIXTURES[name]
    if "twin" in fixture:
        fixture = FIXTURES[f"{fixture['vendor']}/{fixture['twin']}"]
    expect: dict[str, Any] = fixture["expect"]
    return expect


async def _replay(sim: SimControl, name: str) -> GenerateResponse | UpstreamError:
    """Have the simulator answer the next request with fixture `name`, and read it with the real wire code."""
    fixture = FIXTURES[name]
    model = CATALOGUE.get(fixture["model"])
    assert model is not None and model.provider == fixture["provider"], name
    sim.fault("replay", model=model.name, count=1, fixture=name)
    provider: Provider
    if fixture["wire"] == "anthropic":
        provider = AnthropicProvider(model.provider, sim.url, "sk-fixture")
    else:
        provider = OpenAICompatibleProvider(model.provider, sim.openai_url, "sk-fixture")
    request = GenerateRequest(messages=[Message(role="user", content="q")])
    chunks: list[StreamChunk] = []

    async def keep(chunk: StreamChunk) -> None:
        chunks.append(chunk)

    try:
        if "sse" in fixture["response"]:
            return await collect_stream(provider, request, model, OPTIONS, keep)
        return await provider.generate(request, model, OPTIONS)
    except UpstreamError as error:
        return error
    finally:
        await provider.close()
        sim.clear_faults()


def test_every_fixture_names_its_sources_and_date() -> None:
    assert {f["vendor"] for f in FIXTURES.values()} == set(VENDORS)
    for name, fixture in FIXTURES.items():
        assert fixture["source"] and all(url.startswith("https://") for url in fixture["source"]), name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fixture["retrieved"]), name
    for vendor in VENDORS:
        shapes = {
            ("sse" in f["response"], "error_kind" in _expectation(n))
            for n, f in FIXTURES.items()
            if f["vendor"] == vendor
        }
        assert {(False, False), (True, False), (False, True)} <= shapes, f"{vendor}: plain, streamed and errors"


@pytest.mark.parametrize("name", sorted(FIXTURES))
async def test_every_fixture_is_parsed_and_classified(sim: SimControl, name: str) -> None:
    expect = _expectation(name)
    result = await _replay(sim, name)
    if "error_kind" in expect:
        assert isinstance(result, UpstreamError), f"{name}: {result!r}"
        assert result.kind == expect["error_kind"], f"{name}: {result.kind}: {result.message}"
        assert expect.get("message", "") in result.message, result.message
        return
    assert isinstance(result, GenerateResponse), f"{name}: {result}"
    assert result.text == expect["text"] and result.reasoning == expect["reasoning"], name
    assert expect["reasoning"] is None or expect["reasoning"] not in result.text, "reasoning kept apart"
    assert result.finish_reason == expect["finish_reason"] and result.truncated == expect.get("truncated", False)
    assert result.usage.model_dump() == expect["usage"], name


@pytest.mark.parametrize("name", sorted(n for n, f in FIXTURES.items() if "twin" in f))
async def test_streamed_fixtures_give_what_their_plain_twins_give(sim: SimControl, name: str) -> None:
    streamed = await _replay(sim, name)
    plain = await _replay(sim, f"{FIXTURES[name]['vendor']}/{FIXTURES[name]['twin']}")
    assert isinstance(streamed, GenerateResponse) and isinstance(plain, GenerateResponse)
    assert (streamed.text, streamed.reasoning, streamed.usage, streamed.finish_reason) == (
        plain.text,
        plain.reasoning,
        plain.usage,
        plain.finish_reason,
    )
