"""`exai install CLIENT`: write (or print) a client's MCP configuration for this server.

Three ways to connect: the local daemon (`exai serve` on 127.0.0.1:8765), a stdio server the client starts itself
(`exai stdio`), or a shared daemon at a URL with a bearer token read from an environment variable (the token
itself is never written: each client expands the variable when it connects). The entry is merged into the
client's user-level file; every other server and setting in that file is kept. A file that cannot be read as
its format is left untouched and reported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exai.errors import InvalidInput

CLIENTS = ("claude-code", "codex", "cursor", "vscode", "gemini")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Connection:
    """How the client reaches the server: `url` (HTTP) or `command` (stdio); `token_env` names the token's variable."""

    url: str | None = None
    command: list[str] | None = None
    token_env: str | None = None


@dataclass(frozen=True)
class Plan:
    path: Path
    text: str
    """The whole file as it will be written."""
    entry: str
    """The part for this server, to show with --print."""


def exai_command() -> list[str]:
    """The command that runs this installation's `exai`, as an absolute path (clients start it without a shell)."""
    beside = Path(sys.executable).parent / "exai"  # the virtualenv's own script, whatever PATH says
    if beside.is_file():
        return [str(beside.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "exai"]


def local_url(host: str, port: int) -> str:
    """The MCP URL of the daemon `exai serve` runs with these settings (EXAI_HOST, EXAI_PORT), reached from this
    machine: a wildcard address is reached on loopback."""
    reach = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{reach}]:{port}/mcp" if ":" in reach else f"http://{reach}:{port}/mcp"


def connection(*, stdio: bool, url: str | None, token_env: str | None, local: str) -> Connection:
    """How the client connects: `exai stdio`, the daemon at `url`, or the local daemon at `local`."""
    if stdio and url:
        raise InvalidInput("--stdio and --url exclude each other.", remedy="Give one of them.")
    if token_env is not None and not ENV_NAME.fullmatch(token_env):
        raise InvalidInput(f"--token-env {token_env[:40]!r} is not a variable name.", remedy="e.g. EXAI_TOKEN")
    if stdio:
        return Connection(command=[*exai_command(), "stdio"])
    if url is not None and not url.startswith(("http://", "https://")):
        raise InvalidInput(f"--url {url[:80]!r} is not an http(s) URL.", remedy="e.g. https://team-host:8765/mcp")
    return Connection(url=url or local, token_env=token_env)


def _home() -> Path:
    return Path.home()


def config_path(client: str) -> Path:
    home = _home()
    if client == "claude-code":
        return home / ".claude.json"
    if client == "codex":
        return Path(os.environ.get("CODEX_HOME") or home / ".codex") / "config.toml"
    if client == "cursor":
        return home / ".cursor" / "mcp.json"
    if client == "gemini":
        return home / ".gemini" / "settings.json"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Code" / "User" / "mcp.json"
    return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "Code" / "User" / "mcp.json"


def _bearer(client: str, variable: str) -> str:
    """The Authorization header value with the client's own syntax for an environment variable."""
    reference = {"cursor": f"${{env:{variable}}}", "vscode": f"${{env:{variable}}}", "gemini": f"${variable}"}
    return f"Bearer {reference.get(client, f'${{{variable}}}')}"


def json_entry(client: str, conn: Connection) -> dict[str, Any]:
    if conn.command is not None:
        entry: dict[str, Any] = {"command": conn.command[0], "args": conn.command[1:]}
        return {"type": "stdio", **entry} if client in ("claude-code", "vscode") else entry
    assert conn.url is not None
    key = "httpUrl" if client == "gemini" else "url"
    entry = {key: conn.url}
    if client in ("claude-code", "vscode"):
        entry = {"type": "http", **entry}
    if conn.token_env:
        entry["headers"] = {"Authorization": _bearer(client, conn.token_env)}
    return entry


def _plan_json(client: str, path: Path, name: str, conn: Connection) -> Plan:
    servers_key = "servers" if client == "vscode" else "mcpServers"
    document: dict[str, Any] = {}
    if path.exists():
        try:
            loaded: Any = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(
                f"{path} is not valid JSON ({exc}); it was left as it is (comments and trailing commas, which "
                "the client may accept, would be lost if it were rewritten).",
                remedy=f"Add the entry by hand (`exai install {client} --print` shows it), or fix the file.",
            ) from None
        if not isinstance(loaded, dict) or not isinstance(loaded.get(servers_key, {}), dict):
            raise InvalidInput(
                f"{path} has no '{servers_key}' object where one is expected; it was left as it is.",
                remedy=f"Fix the file, or add the entry by hand: `exai install {client} --print`.",
            )
        document = loaded
    document.setdefault(servers_key, {})[name] = json_entry(client, conn)
    return Plan(path, json.dumps(document, indent=2) + "\n", entry(client, name, conn))


def entry(client: str, name: str, conn: Connection) -> str:
    """The part of the client's configuration for this server, as it is to be pasted (the file is not read)."""
    if client == "codex":
        return toml_table(name, conn)
    servers_key = "servers" if client == "vscode" else "mcpServers"
    return json.dumps({servers_key: {name: json_entry(client, conn)}}, indent=2)


def toml_table(name: str, conn: Connection) -> str:
    """Codex's `[mcp_servers.<name>]` table (strings in TOML's basic form, which JSON's escaping writes)."""
    lines = [f"[mcp_servers.{_toml_key(name)}]"]
    if conn.command is not None:
        lines += [f"command = {json.dumps(conn.command[0])}", f"args = {json.dumps(conn.command[1:])}"]
    else:
        lines.append(f"url = {json.dumps(conn.url)}")
        if conn.token_env:
            lines.append(f"bearer_token_env_var = {json.dumps(conn.token_env)}")
    return "\n".join(lines) + "\n"


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _plan_codex(path: Path, name: str, conn: Connection) -> Plan:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(
            f"{path} is not valid TOML ({exc}); it was left as it is.",
            remedy="Add the entry by hand (`exai install codex --print` shows it), or fix the file.",
        ) from None
    table = entry("codex", name, conn)
    kept = _without_table(text, name).rstrip("\n")
    return Plan(path, f"{kept}\n\n{table}" if kept else table, table)


def _without_table(text: str, name: str) -> str:
    """`text` without the `[mcp_servers.<name>]` table (and its sub-tables, such as its `env`)."""
    headers = {f"[mcp_servers.{name}]", f"[mcp_servers.{json.dumps(name)}]", f"[mcp_servers.{_toml_key(name)}]"}
    prefixes = tuple(h[:-1] + "." for h in headers)
    kept, skipping = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped in headers or stripped.startswith(prefixes)
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


def plan(client: str, name: str, conn: Connection) -> Plan:
    path = config_path(client)
    if client == "codex":
        return _plan_codex(path, name, conn)
    return _plan_json(client, path, name, conn)


def write(planned: Plan) -> None:
    """Write the file whole (a temporary file renamed over it), keeping its permissions when it exists."""
    planned.path.parent.mkdir(parents=True, exist_ok=True)
    partial = planned.path.with_name(f".{planned.path.name}.exai-{os.getpid()}")
    partial.write_text(planned.text, encoding="utf-8")
    if planned.path.exists():
        shutil.copymode(planned.path, partial)
    os.replace(partial, planned.path)
