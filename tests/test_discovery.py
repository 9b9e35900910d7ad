"""CUSTOM_API_URL alone: the endpoint's own model listing is used, checked by `doctor`, and usable by `chat`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import CallToolResult

from exai.providers.catalogue import Catalogue
from exai.providers.discovery import list_endpoint_models
from tests.conftest import Proc, SimControl, free_port, start_exai
from tests.helpers import run_exai, text_of
from tests.hostile_listing import hostile_listing

pytestmark = pytest.mark.anyio


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_exai(args, {"COLUMNS": "300", **env})


def test_models_lists_the_endpoint_models_with_their_context_windows(sim: SimControl) -> None:
    """Every model the endpoint lists is used: its own, and a vendor's whose provider is not configured (a proxy in
    front of that vendor), with the catalogue's facts. A vendor's model was skipped, and calling it named the
    vendor's missing key although the endpoint served it."""
    result = cli(["models", "--json"], {"CUSTOM_API_URL": sim.openai_url, "CUSTOM_CONTEXT_WINDOW": "65536"})
    assert result.returncode == 0, result.stderr
    windows = {m["name"]: m["context_window"] for m in json.loads(result.stdout) if m["provider"] == "custom"}
    assert set(windows) == set(sim.listed()), set(sim.listed()) ^ set(windows)
    assert {name: windows[name] for name in ("sim-fast", "sim-smart", "sim-large")} == {
        "sim-fast": 65536,
        "sim-smart": 65536,
        "sim-large": 1_000_000,
    }
    assert windows["kimi-k2.6"] == Catalogue.load().get("kimi-k2.6").context_window  # type: ignore[union-attr]
    with_kimi = cli(["models", "--json"], {"CUSTOM_API_URL": sim.openai_url, "KIMI_API_KEY": "sk-test-kimi-secret"})
    served = {m["name"]: m["provider"] for m in json.loads(with_kimi.stdout)}
    assert served["kimi-k2.6"] == "kimi", "a configured vendor keeps its models"


async def test_a_vendor_model_the_endpoint_lists_is_called_there(daemon: Callable[..., Proc], sim: SimControl) -> None:
    proc = daemon(CUSTOM_MODELS="", KIMI_API_KEY="", ANTHROPIC_API_KEY="")
    async with Client(f"{proc.url}/mcp") as client:
        for name in ("kimi-k2.6", "kimi"):  # by its name, and by its alias (which still named the unset vendor)
            result = await client.call_tool("chat", {"prompt": f"through a proxy as {name}", "model": name})
            assert not result.is_error, text_of(result)
            assert result.structured_content["provider"] == "custom", result.structured_content
            assert result.structured_content["model"] == "kimi-k2.6", result.structured_content
    assert sim.stats()["counters"]["completed:kimi-k2.6"] == 2


def test_a_vendor_model_served_by_the_endpoint_never_gets_more_room_than_the_endpoint_states() -> None:
    catalogue = Catalogue.load(None, ["kimi-k2.6:4096", "Claude-Sonnet-4-6"], configured={"custom"})
    kimi, sonnet = catalogue.get("kimi"), catalogue.get("sonnet")
    assert kimi is not None and (kimi.name, kimi.provider, kimi.context_window) == ("kimi-k2.6", "custom", 4096)
    assert kimi.max_output_tokens <= 4096 and kimi.thinking_style == "switch", kimi  # the catalogue's quirks kept
    assert sonnet is not None and (sonnet.name, sonnet.provider) == ("Claude-Sonnet-4-6", "custom"), sonnet
    assert sonnet.context_window == 32768 and sonnet.max_output_tokens == 8192, "CUSTOM_CONTEXT_WINDOW, no window"
    assert [m.name for m in catalogue.models.values() if m.name.lower() == "claude-sonnet-4-6"] == [sonnet.name]
    assert Catalogue.load(None, ["kimi-k2.6:4096"], configured={"custom", "kimi"}).get("kimi-k2.6").provider == "kimi"  # type: ignore[union-attr]


async def test_chat_answers_with_a_discovered_model(daemon: Callable[..., Proc]) -> None:
    proc = daemon(CUSTOM_MODELS="", KIMI_API_KEY="", ANTHROPIC_API_KEY="")
    async with Client(f"{proc.url}/mcp") as client:
        named = await client.call_tool("chat", {"prompt": "found by listing", "model": "sim-smart"})
        auto = await client.call_tool("chat", {"prompt": "any model", "model": "auto"})
    assert not named.is_error, named.content
    assert named.structured_content["model"] == "sim-smart"
    assert "echo: found by listing" in text_of(named)
    assert not auto.is_error and auto.structured_content["provider"] == "custom"


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_doctor_fails_when_custom_models_names_a_model_the_endpoint_does_not_list(sim: SimControl) -> None:
    wrong = cli(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "CUSTOM_MODELS": "sim-fast,llama-not-pulled"})
    assert wrong.returncode == 1, wrong.stdout
    assert "llama-not-pulled" in wrong.stdout and "CUSTOM_MODELS" in wrong.stdout
    right = cli(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "CUSTOM_MODELS": "sim-fast,sim-large:1000000"})
    assert right.returncode == 0, right.stdout
    discovered = cli(["doctor"], {"CUSTOM_API_URL": sim.openai_url})
    assert discovered.returncode == 0 and f"{len(sim.listed())} models listed" in discovered.stdout


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_an_unreachable_endpoint_is_a_warning_naming_custom_api_url() -> None:
    env = {"CUSTOM_API_URL": f"http://127.0.0.1:{free_port()}/v1"}
    listed = cli(["models", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert "custom_models_not_discovered" in listed.stderr and "CUSTOM_API_URL" in listed.stderr
    doctor = cli(["doctor", "--timeout", "2"], env)
    assert doctor.returncode == 1 and "check CUSTOM_API_URL" in doctor.stdout
    for output in (listed.stdout, listed.stderr, doctor.stdout, doctor.stderr):
        assert "Traceback" not in output and "CUSTOM_BASE_URL" not in output


async def test_ollama_show_gives_the_context_window_the_listing_lacks() -> None:
    def ollama(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "llama3.2:latest"}, {"id": "qwen3"}]})
        body: dict[str, Any] = json.loads(request.content)
        assert request.url.path == "/api/show"
        if body["model"] == "llama3.2:latest":
            return httpx2.Response(200, json={"model_info": {"llama.context_length": 131072}})
        return httpx2.Response(404, json={"error": "not found"})

    found = await list_endpoint_models("http://ollama.test/v1", None, 4096, transport=httpx2.MockTransport(ollama))
    assert {m.name: m.context_window for m in found} == {"llama3.2:latest": 131072, "qwen3": 4096}


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_doctor_checks_the_default_model_against_discovered_models(sim: SimControl) -> None:
    found = cli(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "EXAI_DEFAULT_MODEL": "sim-large"})
    assert found.returncode == 0, found.stdout
    missing = cli(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "EXAI_DEFAULT_MODEL": "sim-huge"})
    assert missing.returncode == 1 and "EXAI_DEFAULT_MODEL" in missing.stdout, missing.stdout


async def _until_answered(call: Callable[[], Awaitable[CallToolResult]], ceiling: float = 90.0) -> CallToolResult:
    """Call until the call succeeds (the background retry has found the models); fail after a generous ceiling."""
    deadline = time.monotonic() + ceiling
    while (result := await call()).is_error:
        if time.monotonic() > deadline:
            raise AssertionError(f"still failing after {ceiling} s: {result.content}")
        await asyncio.sleep(0.5)
    return result


def _assert_says_unreachable_and_retried(text: str) -> None:
    assert "CUSTOM_API_URL endpoint was unreachable" in text and "asked again in the background" in text, text


async def test_a_daemon_started_before_its_endpoint_uses_the_models_once_it_answers(
    daemon: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    proc = daemon(CUSTOM_API_URL=f"http://127.0.0.1:{port}/v1", CUSTOM_MODELS="", KIMI_API_KEY="", ANTHROPIC_API_KEY="")
    ready = httpx2.get(f"{proc.url}/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    _assert_says_unreachable_and_retried(ready.json()["reason"])
    async with Client(f"{proc.url}/mcp") as client:
        refused = await client.call_tool("chat", {"prompt": "too early", "model": "auto"})
        assert refused.is_error
        _assert_says_unreachable_and_retried(text_of(refused))
        endpoint = start_exai(["sim", "--port", str(port)], dict(os.environ), tmp_path / "late-sim.log", port)
        try:
            answered = await _until_answered(lambda: client.call_tool("chat", {"prompt": "late", "model": "auto"}))
            listed = await client.call_tool("listmodels", {})
        finally:
            endpoint.stop()
    assert answered.structured_content["provider"] == "custom"
    assert "sim-smart" in text_of(listed)
    assert httpx2.get(f"{proc.url}/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize("listing", ["unreachable", "refused", "empty"])
def test_a_password_in_custom_api_url_stays_out_of_readyz(
    daemon: Callable[..., Proc], sim: SimControl, listing: str
) -> None:
    """/readyz answers without a token: the endpoint's URL in its reason must not carry the URL's password."""
    with hostile_listing("ids", ids=[]) as empty:
        where = {
            "unreachable": f"127.0.0.1:{free_port()}/v1",
            "refused": sim.url.removeprefix("http://") + "/_sim",
            "empty": empty.url.removeprefix("http://"),
        }[listing]
        proc = daemon(
            CUSTOM_API_URL=f"http://user:pw-for-the-endpoint-123@{where}",
            CUSTOM_MODELS="",
            KIMI_API_KEY="",
            ANTHROPIC_API_KEY="",
        )
        ready = httpx2.get(f"{proc.url}/readyz", timeout=10)
    assert ready.status_code == 503 and "CUSTOM_API_URL" in ready.text, ready.text
    assert "pw-for-the-endpoint-123" not in ready.text
    assert "pw-for-the-endpoint-123" not in proc.logs()


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
async def test_a_stdio_server_started_before_its_endpoint_recovers_the_same_way(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CUSTOM_API_URL": f"http://127.0.0.1:{port}/v1"}
    server = StdioServerParameters(command=sys.executable, args=["-m", "exai", "stdio"], env=env)
    async with Client(server) as client:
        refused = await client.call_tool("chat", {"prompt": "too early"})
        assert refused.is_error
        _assert_says_unreachable_and_retried(text_of(refused))
        endpoint = start_exai(["sim", "--port", str(port)], dict(os.environ), tmp_path / "late-sim.log", port)
        try:
            answered = await _until_answered(lambda: client.call_tool("chat", {"prompt": "late"}))
        finally:
            endpoint.stop()
    assert "echo: late" in text_of(answered)
