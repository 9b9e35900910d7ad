"""`exai install CLIENT` writes each client's configuration under a temporary HOME: the local daemon, stdio, or a
shared daemon with the token read from an environment variable; read back from the files it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import SimControl, sim_env

SHARED = "https://team-host:8765/mcp"
FILES = {
    "claude-code": ".claude.json",
    "codex": ".codex/config.toml",
    "cursor": ".cursor/mcp.json",
    "vscode": ".config/Code/User/mcp.json",
    "gemini": ".gemini/settings.json",
}
TOKEN_REFERENCE = {
    "claude-code": "Bearer ${EXAI_TOKEN}",
    "cursor": "Bearer ${env:EXAI_TOKEN}",
    "vscode": "Bearer ${env:EXAI_TOKEN}",
    "gemini": "Bearer $EXAI_TOKEN",
}


def install(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k not in ("CODEX_HOME", "XDG_CONFIG_HOME")}
    return subprocess.run(
        [sys.executable, "-m", "exai", "install", *args],
        env={**inherited, **(env or {}), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def read_entry(home: Path, client: str, name: str = "exai") -> dict[str, Any]:
    path = home / FILES[client]
    entry: dict[str, Any]
    if client == "codex":
        entry = tomllib.loads(path.read_text())["mcp_servers"][name]
        return entry
    key = "servers" if client == "vscode" else "mcpServers"
    entry = json.loads(path.read_text())[key][name]
    return entry


@pytest.mark.parametrize("client", list(FILES))
def test_install_writes_each_way_of_connecting_and_keeps_the_rest(client: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = home / FILES[client]
    path.parent.mkdir(parents=True)
    if client == "codex":
        path.write_text('model = "o3"\n\n[mcp_servers.other]\ncommand = "other-server"\n')
    else:
        servers = "servers" if client == "vscode" else "mcpServers"
        path.write_text(json.dumps({"theme": "dark", servers: {"other": {"command": "other-server"}}}))

    printed = install(home, client, "--url", SHARED, "--token-env", "EXAI_TOKEN", "--print")
    assert printed.returncode == 0 and str(path) in printed.stdout and SHARED in printed.stdout, printed.stderr
    assert "exai" not in path.read_text(), "--print writes nothing"

    assert install(home, client).returncode == 0
    local = read_entry(home, client)
    assert local.get("url", local.get("httpUrl")) == "http://127.0.0.1:8765/mcp" and "headers" not in local

    # the local daemon where EXAI_HOST and EXAI_PORT put it (it was always 127.0.0.1:8765)
    moved = install(home, client, "--print", env={"EXAI_PORT": "18111", "EXAI_HOST": "0.0.0.0"})
    assert "http://127.0.0.1:18111/mcp" in moved.stdout, moved.stdout + moved.stderr

    assert install(home, client, "--stdio").returncode == 0
    stdio = read_entry(home, client)
    assert Path(stdio["command"]).is_file() and stdio["args"] == ["stdio"], stdio

    shared = install(home, client, "--url", SHARED, "--token-env", "EXAI_TOKEN")
    assert shared.returncode == 0 and str(path) in shared.stdout, shared.stderr
    entry = read_entry(home, client)
    if client == "codex":
        assert entry == {"url": SHARED, "bearer_token_env_var": "EXAI_TOKEN"}
        document = tomllib.loads(path.read_text())
        assert document["model"] == "o3" and document["mcp_servers"]["other"] == {"command": "other-server"}
        assert path.read_text().count("[mcp_servers.exai]") == 1, "the entry is replaced, not repeated"
        return
    assert entry.get("url", entry.get("httpUrl")) == SHARED
    assert entry["headers"] == {"Authorization": TOKEN_REFERENCE[client]}
    assert client != "gemini" or "httpUrl" in entry
    assert client not in ("claude-code", "vscode") or entry["type"] == "http"
    document = json.loads(path.read_text())
    assert document["theme"] == "dark" and read_entry(home, client, "other") == {"command": "other-server"}


def test_a_file_that_cannot_be_read_is_left_alone_and_bad_input_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".cursor").mkdir(parents=True)
    broken = home / ".cursor" / "mcp.json"
    broken.write_text("{ not json")
    refused = install(home, "cursor")
    assert refused.returncode == 2 and "is not valid JSON" in refused.stderr and "fix:" in refused.stderr
    assert broken.read_text() == "{ not json"
    # VS Code's own mcp.json may hold comments and trailing commas: the suggested --print shows the entry anyway
    # (it said "not valid JSON" again, and pointed at itself).
    (home / ".config" / "Code" / "User").mkdir(parents=True)
    jsonc = home / ".config" / "Code" / "User" / "mcp.json"
    jsonc.write_text('{\n  // my servers\n  "servers": {},\n}\n')
    shown = install(home, "vscode", "--print")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.split("\n", 1)[1])["servers"]["exai"]["type"] == "http", shown.stdout
    unknown = install(home, "emacs")
    assert unknown.returncode == 2 and "claude-code, codex, cursor, vscode, gemini" in unknown.stderr
    assert install(home, "gemini", "--url", "ftp://x").returncode == 2


@pytest.mark.anyio
async def test_the_stdio_entry_starts_a_working_server(sim: SimControl, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert install(home, "claude-code", "--stdio").returncode == 0
    entry = read_entry(home, "claude-code")
    server = StdioServerParameters(command=entry["command"], args=entry["args"], env={**os.environ, **sim_env(sim)})
    async with Client(server) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert "chat" in names
