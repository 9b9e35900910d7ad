"""What a first-time user meets on the command line: busy ports, misspelt settings, piped output, quiet commands."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl, free_port, sim_env
from tests.helpers import run_exai, text_of, tool_error, wait_until


@pytest.mark.parametrize("via", ["--port", "EXAI_PORT"])
def test_serve_on_a_busy_port_says_so_in_one_line(sim: SimControl, via: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        args, env = (["serve", "--port", port], {}) if via == "--port" else (["serve"], {"EXAI_PORT": port})
        result = run_exai(args, {**sim_env(sim), **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "--port or EXAI_PORT" in lines[0], result.stderr
    assert "startup complete" not in result.stderr and "Errno" not in result.stderr


def test_misspelt_variables_are_warned_about_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("EXAI_LOG_LEVL=DEBUG\n")
    env = {"EXAI_MAX_RETRYS": "3", "EXAI_TEST_OWN_KNOB": "1", "EXAI_MAX_RETRIES": "3"}
    result = run_exai(["models", "--json"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "is not an EX-AI setting" in line]
    assert len(warnings) == 2, result.stderr
    assert "EXAI_MAX_RETRYS (in the environment)" in warnings[0] and "did you mean EXAI_MAX_RETRIES?" in warnings[0]
    assert "EXAI_LOG_LEVL (in .env)" in warnings[1] and "did you mean EXAI_LOG_LEVEL?" in warnings[1]


def test_a_misspelt_provider_variable_is_warned_about(tmp_path: Path) -> None:
    """KIMI_KEY left Kimi out without a word; other tools' variables (LangChain's, Claude Code's) are left alone."""
    env = {"KIMI_KEY": "sk-x", "CUSTOM_URL": "http://127.0.0.1:9/v1", "OPENAI_ORG_ID": "org-1"}
    env |= {"OPENAI_API_BASE": "http://x", "ANTHROPIC_VERTEX_BASE_URL": "http://y", "OPENROUTER_MODEL": "m"}
    env |= {"KIMI_API_KEY": "", "MOONSHOT_API_KEY": "", "CUSTOM_API_URL": ""}  # neither provider set up
    result = run_exai(["models", "--json"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "is not read by EX-AI" in line]
    assert len(warnings) == 2, result.stderr
    assert any("KIMI_KEY" in w and "did you mean KIMI_API_KEY?" in w for w in warnings), warnings
    assert any("CUSTOM_URL" in w and "did you mean CUSTOM_API_URL?" in w for w in warnings), warnings


def test_a_variable_warned_as_ignored_is_ignored(sim: SimControl, tmp_path: Path) -> None:
    """`EXAI_` before the name of a setting that has names of its own (OPENAI_API_KEY, CUSTOM_MODELS) is warned
    about as no EX-AI setting, and it is not read either: it configures no provider (it once did, silently)."""
    env = {"EXAI_CUSTOM_BASE_URL": sim.openai_url, "EXAI_CUSTOM_MODELS": "sim-fast", "EXAI_OPENAI_API_KEY": "sk-no"}
    result = run_exai(["models", "--json"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "is not an EX-AI setting and is ignored" in line]
    assert len(warned) == 3 and "did you mean OPENAI_API_KEY?" in "".join(warned), result.stderr
    assert json.loads(result.stdout) == [], "no provider is configured by them"
    named = run_exai(
        ["models", "--json"], {"CUSTOM_BASE_URL": sim.openai_url, "CUSTOM_MODELS": "sim-fast"}, cwd=tmp_path
    )
    assert {m["provider"] for m in json.loads(named.stdout)} == {"custom"}, "the names they were mistaken for work"


@pytest.mark.anyio
async def test_a_bad_default_model_is_named_at_start_and_in_the_call_error(daemon: Callable[..., Proc]) -> None:
    proc = daemon(EXAI_DEFAULT_MODEL="gpt-9")
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("chat", {"prompt": "which model?", "model": "auto"})
    error = tool_error(result)
    assert error["code"] == "unknown_model" and "EXAI_DEFAULT_MODEL" in error["message"], error
    assert "EXAI_DEFAULT_MODEL" in error["remedy"]
    started = [json.loads(line) for line in proc.logs().splitlines() if "default_model_unusable" in line]
    assert started and started[0]["setting"] == "EXAI_DEFAULT_MODEL" and "gpt-9" in started[0]["error"], proc.logs()


@pytest.mark.anyio
async def test_an_unreachable_redis_is_one_warning_at_start(daemon: Callable[..., Proc]) -> None:
    proc = daemon(EXAI_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    await wait_until(lambda: "redis_unreachable" in proc.logs(), "the daemon warned about Redis")
    warnings = [json.loads(line) for line in proc.logs().splitlines() if "redis_unreachable" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", warnings
    assert "own counters" in warnings[0]["behaviour"] and "EXAI_REDIS_URL" in warnings[0]["remedy"]


def test_doctor_piped_keeps_whole_cells_and_logs_nothing_on_success(sim: SimControl) -> None:
    result = run_exai(["doctor"], {"CUSTOM_API_URL": sim.openai_url, "COLUMNS": "80"})
    assert result.returncode == 0, result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert f"{sim.openai_url}: {len(sim.listed())} models listed" in rows["custom"], result.stdout
    assert "set GLM_API_KEY or ZHIPUAI_API_KEY or ZAI_API_KEY to enable" in rows["glm"], result.stdout
    assert not any(ch in result.stdout for ch in "┃│━"), result.stdout
    assert "custom_models_discovered" not in result.stderr and result.stderr.strip() == "", result.stderr


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_models_logs_no_discovery_line_unless_asked(sim: SimControl) -> None:
    quiet = run_exai(["models", "--json"], {"CUSTOM_API_URL": sim.openai_url})
    assert quiet.returncode == 0 and quiet.stderr.strip() == "", quiet.stderr
    asked = run_exai(["models", "--json"], {"CUSTOM_API_URL": sim.openai_url, "EXAI_LOG_LEVEL": "INFO"})
    assert "custom_models_discovered" in asked.stderr, asked.stderr


@pytest.mark.anyio
async def test_audit_piped_keeps_whole_cells(daemon: Callable[..., Proc]) -> None:
    proc = daemon()
    async with Client(f"{proc.url}/mcp") as client:
        assert not (await client.call_tool("chat", {"prompt": "audited", "model": "sim-fast"})).is_error

    def recorded() -> list[dict[str, object]]:
        listed = run_exai(["audit", "--json"], {"COLUMNS": "80"})
        return [json.loads(line) for line in listed.stdout.splitlines() if '"chat"' in line]

    await wait_until(lambda: bool(recorded()), "the call was audited")
    record = recorded()[0]
    table = run_exai(["audit"], {"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if str(record["correlation_id"]) in line]
    assert len(lines) == 1, f"the correlation id is cut:\n{table.stdout}"
    line = lines[0]
    assert "chat" in line and "sim-fast" in line and "ok" in line, table.stdout


@pytest.mark.anyio
async def test_version_lists_only_the_tools_the_caller_may_call(daemon: Callable[..., Proc]) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    for scopes in (["exai:tools"], ["exai:tool:version", "exai:tool:chat"]):
        token = issue_token(TEST_JWT_SECRET, "newcomer", scopes, 600)
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(f"{proc.url}/mcp", http_client=http)) as client,
        ):
            listed = {tool.name for tool in (await client.list_tools()).tools}
            version = await client.call_tool("version", {})
        assert not version.is_error, version.content
        assert set(version.structured_content["tools"]) == listed, (scopes, listed, version.structured_content)
        assert "status" not in text_of(version)
    assert listed == {"version", "chat", "collect"}  # collect: the pending answers of the tools it may call


@pytest.mark.anyio
async def test_the_dashboard_without_a_token_says_how_to_give_one(daemon: Callable[..., Proc], tmp_path: Path) -> None:
    from tests.test_status_page import _chromium, _render_until

    chromium = _chromium()
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET)
    dom = await _render_until(chromium, tmp_path / "chrome", f"{proc.url}/dashboard", lambda d: "bearer token" in d)
    assert "A valid bearer token is required." in dom and "/dashboard#token=&lt;admin token&gt;" in dom, dom[-3000:]
    assert "exai:admin" in dom


def test_a_server_warns_when_tokens_for_any_audience_pass(daemon: Callable[..., Proc]) -> None:
    """A daemon checking tokens without EXAI_JWT_AUDIENCE takes one minted for another service with the same secret:
    it says so at start, as a JSON log line like every other (a warning printed as text broke JSON logs)."""
    open_to_any = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_MAX_RETRYS="3")
    logs = open_to_any.logs().splitlines()
    warnings = [json.loads(line) for line in logs if "configuration_warning" in line]
    assert len(warnings) == 2 and all(w["level"] == "warning" for w in warnings), logs[:5]
    assert "EXAI_JWT_AUDIENCE is not set" in warnings[1]["detail"], warnings
    assert "did you mean EXAI_MAX_RETRIES?" in warnings[0]["detail"], warnings
    checked = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_JWT_AUDIENCE="exai-team")
    assert "configuration_warning" not in checked.logs(), checked.logs()[:2000]


def test_a_bad_option_is_named_as_the_user_wrote_it(tmp_path: Path) -> None:
    """`serve --port 99999` is the option's mistake, not EXAI_PORT's (which the user never set)."""
    result = run_exai(["serve", "--port", "99999"], {}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    first, fix = result.stderr.strip().splitlines()
    assert first.startswith("--port: ") and "65535" in first and fix == "  fix: correct --port and start again", first


def test_a_client_pointed_at_the_bare_address_is_told_where_mcp_is(daemon: Callable[..., Proc]) -> None:
    proc = daemon()
    for path in ("/", "/sse", "/v1/chat/completions"):
        answer = httpx2.post(f"{proc.url}{path}", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert answer.status_code == 404, (path, answer.status_code)
        assert f"{proc.url}/mcp" in answer.json()["error"]["message"], answer.text
    # What the official SDK shows its user (it dropped a body that was not a JSON-RPC error: "Not Found").

    async def connect() -> None:
        async with Client(f"{proc.url}/"):
            pass

    with pytest.raises(BaseException) as raised:
        asyncio.run(connect())
    assert f"{proc.url}/mcp" in repr(raised.value), repr(raised.value)
