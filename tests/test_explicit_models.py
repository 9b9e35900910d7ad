"""A model named by the caller is the model that answers, unless falling back was asked for and is shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
ONLY_SIM_MODELS = {"CUSTOM_ALLOWED_MODELS": "sim-fast,sim-smart,sim-large", "KIMI_API_KEY": "", "ANTHROPIC_API_KEY": ""}


async def _calls(proc: Proc, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
    async with (
        httpx2.AsyncClient(timeout=60) as http,
        Client(streamable_http_client(f"{proc.url}/mcp", http_client=http)) as client,
    ):
        await client.list_tools()
        return [await client.call_tool(tool, args) for tool, args in calls]


async def test_an_explicit_model_is_never_silently_replaced(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_FALLBACK_CHAIN="sim-large", **ONLY_SIM_MODELS)
    sim.fault("503", model="sim-fast")
    (explicit,) = await _calls(proc, ("chat", {"prompt": "only you", "model": "sim-fast"}))
    error = tool_error(explicit)
    assert error["category"] == "provider" and error["details"]["model"] == "sim-fast"
    assert sim.count("requests") == sim.count("requests:sim-fast") == 3, "retried, never handed to another model"

    sim.reset()
    sim.fault("503", model="sim-fast")  # auto's first pick (the sim models rank equal; catalogue order)
    (auto,) = await _calls(proc, ("chat", {"prompt": "anyone", "model": "auto"}))
    assert not auto.is_error
    assert auto.structured_content["model"] == "sim-large" and auto.structured_content["fallbacks"] == ["sim-large"]
    assert sim.count("requests:sim-smart") == 0, "auto follows EXAI_FALLBACK_CHAIN, not every available model"


async def test_opt_in_fallback_is_visible_and_consensus_never_substitutes(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_FALLBACK_CHAIN="sim-smart", EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true", **ONLY_SIM_MODELS)
    sim.fault("503", model="sim-fast")
    consensus_args = {
        "prompt": "use tabs?",
        "models": [{"model": "sim-fast", "stance": "for"}, {"model": "sim-large", "stance": "against"}],
    }
    chat, consensus = await _calls(
        proc, ("chat", {"prompt": "fall back", "model": "sim-fast"}), ("consensus", consensus_args)
    )
    assert not chat.is_error
    assert chat.structured_content["model"] == "sim-smart" and chat.structured_content["fallbacks"] == ["sim-smart"]
    assert "SIM sim-smart" in text_of(chat)
    opinions = {o["model"]: o for o in consensus.structured_content["opinions"]}
    assert not opinions["sim-fast"]["ok"] and opinions["sim-large"]["ok"]
    assert opinions["sim-large"]["provider"] == "custom"
    assert sim.count("requests:sim-smart") == 1, "only chat's visible fallback reached sim-smart"
    assert sim.count("requests:sim-large") == 1, "each expert is asked once"


async def test_the_default_model_answers_auto_calls(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_DEFAULT_MODEL="sim-large", **ONLY_SIM_MODELS)
    chat, workflow = await _calls(
        proc,
        ("chat", {"prompt": "who answers?"}),
        ("thinkdeep", {"step": "s", "step_number": 1, "total_steps": 1, "next_step_required": False}),
    )
    assert chat.structured_content["model"] == "sim-large", "EXAI_DEFAULT_MODEL stands in for `auto`"
    assert workflow.structured_content["model"] == "sim-large"
    assert sim.count("requests") == sim.count("requests:sim-large") == 2
