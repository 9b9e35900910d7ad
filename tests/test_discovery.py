"""CUSTOM_API_URL alone: the endpoint's own model listing is used, checked by `doctor`, and usable by `chat`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from mcp import Client

from exai.providers.discovery import list_endpoint_models
from tests.conftest import Proc, SimControl, free_port

pytestmark = pytest.mark.anyio


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exai", *args],
        env={**os.environ, "COLUMNS": "300", **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_models_lists_the_endpoint_models_with_their_context_windows(sim: SimControl) -> None:
    result = _run(["models", "--json"], {"CUSTOM_API_URL": sim.openai_url, "CUSTOM_CONTEXT_WINDOW": "65536"})
    assert result.returncode == 0, result.stderr
    windows = {m["name"]: m["context_window"] for m in json.loads(result.stdout) if m["provider"] == "custom"}
    assert windows == {"sim-fast": 65536, "sim-smart": 65536, "sim-large": 1_000_000}


async def test_chat_answers_with_a_discovered_model(daemon: Callable[..., Proc]) -> None:
    proc = daemon(CUSTOM_MODELS="", KIMI_API_KEY="", ANTHROPIC_API_KEY="")
    async with Client(f"{proc.url}/mcp") as client:
        named = await client.call_tool("chat", {"prompt": "found by listing", "model": "sim-smart"})
        auto = await client.call_tool("chat", {"prompt": "any model", "model": "auto"})
    assert not named.is_error, named.content
    assert named.structured_content["model"] == "sim-smart"
    assert "echo: found by listing" in named.content[0].text
    assert not auto.is_error and auto.structured_content["provider"] == "custom"


def test_doctor_fails_when_custom_models_names_a_model_the_endpoint_does_not_list(sim: SimControl) -> None:
    wrong = _run(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "CUSTOM_MODELS": "sim-fast,llama-not-pulled"})
    assert wrong.returncode == 1, wrong.stdout
    assert "llama-not-pulled" in wrong.stdout and "CUSTOM_MODELS" in wrong.stdout
    right = _run(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "CUSTOM_MODELS": "sim-fast,sim-large:1000000"})
    assert right.returncode == 0, right.stdout
    discovered = _run(["doctor"], {"CUSTOM_API_URL": sim.openai_url})
    assert discovered.returncode == 0 and "3 models listed" in discovered.stdout


def test_an_unreachable_endpoint_is_a_warning_naming_custom_api_url() -> None:
    env = {"CUSTOM_API_URL": f"http://127.0.0.1:{free_port()}/v1"}
    listed = _run(["models", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert "custom_models_not_discovered" in listed.stderr and "CUSTOM_API_URL" in listed.stderr
    doctor = _run(["doctor", "--timeout", "2"], env)
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


def test_doctor_checks_the_default_model_against_discovered_models(sim: SimControl) -> None:
    found = _run(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "EXAI_DEFAULT_MODEL": "sim-large"})
    assert found.returncode == 0, found.stdout
    missing = _run(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "EXAI_DEFAULT_MODEL": "sim-huge"})
    assert missing.returncode == 1 and "EXAI_DEFAULT_MODEL" in missing.stdout, missing.stdout
