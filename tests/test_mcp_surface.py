"""The MCP surface in process: schemas, errors, prompts, resources, progress and log notifications."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent, TextResourceContents

from exai.app import Services
from exai.config import load_settings
from exai.server.mcp import build_server
from exai.tools import PROFILES
from tests.conftest import MakeServices, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio


async def test_every_tool_has_title_description_and_schemas(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    async with Client(build_server(services)) as client:
        tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == set(PROFILES["standard"])
    for tool in tools:
        assert tool.title and tool.description
        assert tool.input_schema["type"] == "object"
        if tool.name == "collect":  # returns another call's own result, whatever that tool's schema
            assert tool.output_schema is None
        else:
            assert tool.output_schema and tool.output_schema["type"] == "object"
        calls_model = tool.annotations is not None and tool.annotations.open_world_hint
        # (`execution.taskSupport` is 2025-11-25 vocabulary: tests/test_tasks.py sees it through a 2025-11-25 client)
        if calls_model:  # a pending answer is valid output too
            assert (
                tool.output_schema is not None
                and {"required": ["pending"]}.items() <= tool.output_schema["anyOf"][1].items()
            )
    chat = next(t for t in tools if t.name == "chat")
    assert chat.input_schema["required"] == ["prompt"]
    assert chat.input_schema["additionalProperties"] is False


async def test_chat_returns_answer_and_structured_metadata(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    async with Client(build_server(services)) as client:
        await client.list_tools()
        result = await client.call_tool(
            "chat", {"prompt": "What is 2+2?", "model": "sim-smart", "system_prompt": "Answer in French."}
        )
    assert not result.is_error
    data = result.structured_content
    assert data["model"] == "sim-smart" and data["provider"] == "custom"
    assert data["usage"]["input_tokens"] > 0 and data["retries"] == 0 and data["fallbacks"] == []
    assert "echo: What is 2+2?" in text_of(result)
    system = sim.requests(1)[0]["body"]["messages"][0]
    assert system["role"] == "system" and system["content"].endswith("Answer in French.")


async def _error(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert result.is_error
    error = tool_error(result)
    assert error["correlation_id"] in text_of(result)
    return error


async def test_bad_inputs_get_clear_errors(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_MAX_PROMPT_CHARS="1000")
    async with Client(build_server(services)) as client:
        error = await _error(client, "chat", {"model": "sim-fast"})
        assert error["category"] == "validation" and error["details"]["fields"] == ["prompt"]
        error = await _error(client, "chat", {"prompt": "x", "temperature": 9})
        assert error["details"]["fields"] == ["temperature"] and "less than or equal to 2" in error["message"]
        for field, value in (("temperature", True), ("max_output_tokens", True), ("max_output_tokens", False)):
            error = await _error(client, "chat", {"prompt": "x", "model": "sim-fast", field: value})
            assert error["details"]["fields"] == [field] and "is not a number" in error["message"], error
        error = await _error(client, "consensus", {"prompt": "x", "models": [], "per_model_timeout_seconds": True})
        assert error["details"]["fields"] == ["per_model_timeout_seconds"], error
        error = await _error(
            client, "planner", {"step": "x", "step_number": True, "total_steps": 2, "next_step_required": True}
        )
        assert error["details"]["fields"] == ["step_number"], error
        huge = {"step": "x", "step_number": 10**300, "total_steps": 10**1000, "next_step_required": True}
        error = await _error(client, "planner", huge)  # stored and echoed back, whatever its size
        assert error["details"]["fields"] == ["step_number", "total_steps"] and "1000" in error["message"], error
        assert sim.count("requests") == 0, "no model was asked with a boolean read as a number"
        error = await _error(client, "chat", {"prompt": "x", "modle": "sim-fast"})
        assert "modle: unknown field" in error["message"]
        error = await _error(client, "chat", {"prompt": "x", "model": "sim-fsat"})
        assert error["category"] == "not_found" and "sim-fast" in error["details"]["suggestions"]
        error = await _error(client, "chat", {"prompt": "x" * 1001})
        assert error["code"] == "prompt_too_large" and "EXAI_MAX_PROMPT_CHARS" in error["remedy"]
        error = await _error(client, "chat", {"prompt": "x", "images": ["file:///etc/passwd"]})
        assert error["details"]["field"] == "images.0"
        error = await _error(client, "chat", {"prompt": "x", "model": "sim-fast", "images": ["https://x/y.png"]})
        assert error["code"] == "images_unsupported"
        with pytest.raises(MCPError) as caught:
            await client.call_tool("no-such-tool", {})
        assert caught.value.code == -32602 and "Available tools: analyze, challenge, chat" in caught.value.message


async def test_no_provider_configured_names_the_variables() -> None:
    services = Services.build(load_settings())
    await services.start()
    async with Client(build_server(services)) as client:
        error = await _error(client, "chat", {"prompt": "hello"})
        status = await client.call_tool("status", {})
    assert error["code"] == "no_provider"
    for variable in (
        "KIMI_API_KEY",
        "GLM_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENROUTER_API_KEY",
        "CUSTOM_API_URL",
    ):
        assert variable in error["remedy"]
    assert status.structured_content["health"] == "no_providers"


async def test_upstream_failure_is_a_tool_error_with_category(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(CUSTOM_ALLOWED_MODELS="sim-fast", KIMI_API_KEY="", ANTHROPIC_API_KEY="")
    sim.fault("503")
    async with Client(build_server(services)) as client:
        error = await _error(client, "chat", {"prompt": "x", "model": "sim-fast"})
        status = (await client.call_tool("status", {})).structured_content
    assert error["category"] == "provider" and error["retryable"] is True
    assert [a["outcome"] for a in error["details"]["attempts"]] == ["server"] * 3
    assert status["recent_errors"] == {"provider": 1}
    assert status["providers"][0]["recent_errors"] == {"server": 3}


async def test_listmodels_version_status(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_DISABLED_TOOLS="status")
    async with Client(build_server(services)) as client:
        models = (await client.call_tool("listmodels", {})).structured_content
        version = (await client.call_tool("version", {})).structured_content
    configured = {p["name"]: p for p in models["providers"]}
    assert configured["custom"]["configured"] and not configured["glm"]["configured"]
    assert configured["glm"]["enable_with"] == ["GLM_API_KEY", "ZHIPUAI_API_KEY", "ZAI_API_KEY"]
    assert configured["custom"]["enable_with"] == ["CUSTOM_API_URL", "CUSTOM_BASE_URL"], "CUSTOM_MODELS alone does not"
    names = {m["name"] for m in models["models"]}
    assert {"sim-fast", "sim-large", "kimi-k2-thinking", "claude-haiku-4-5"} <= names
    assert all(m["capabilities"]["context_window"] > 0 for m in models["models"])
    assert "status" not in version["tools"] and {"chat", "listmodels", "version"} <= set(version["tools"])
    assert version["providers"] == ["anthropic", "custom", "kimi"]


async def test_prompts_and_resources(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    async with Client(build_server(services)) as client:
        prompts = (await client.list_prompts()).prompts
        prompt = await client.get_prompt("chat", {"request": "review my diff"})
        resources = (await client.list_resources()).resources
        models = await client.read_resource("exai://models")
        with pytest.raises(MCPError) as unknown:
            await client.read_resource("x:" + "A" * 3_000_000)
    assert len(str(unknown.value)) < 300 and "x:AAAA" in str(unknown.value), "a short prefix of the value sent"
    assert {p.name for p in prompts} == set(PROFILES["standard"])
    message = prompt.messages[0].content
    assert isinstance(message, TextContent), message
    assert "review my diff" in message.text
    assert [str(r.uri) for r in resources] == ["exai://models"]
    listing = models.contents[0]
    assert isinstance(listing, TextResourceContents), listing
    assert any(m["name"] == "sim-fast" for m in json.loads(listing.text))


async def test_progress_and_log_notifications(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_FALLBACK_CHAIN="sim-smart", EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true")
    sim.fault("503", model="sim-fast")
    reported: list[tuple[float, str | None]] = []
    logs: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, message))

    async def on_log(params: Any) -> None:
        logs.append(params)

    async with Client(build_server(services), mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("info")
        result = await client.call_tool(
            "chat", {"prompt": "stream me please", "model": "sim-fast"}, progress_callback=on_progress
        )
        await client.set_logging_level("error")
        await client.call_tool("chat", {"prompt": "quiet", "model": "sim-fast"})
    assert not result.is_error and result.structured_content["fallbacks"] == ["sim-smart"]
    assert len(reported) > 3 and reported[-1][0] > reported[1][0]
    messages = [entry.data["message"] for entry in logs]
    assert sum("retrying" in m for m in messages) == 2
    assert sum("falling back to custom/sim-smart" in m for m in messages) == 1, "level error hides warnings"
