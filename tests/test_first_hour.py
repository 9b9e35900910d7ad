"""A first hour without dead ends: a store that cannot be opened is two lines and exit 2 (serve, stdio, db upgrade),
`exai doctor` checks the store, Redis, the JWKS and the file roots a line each and fails on any, `exai serve` logs
one start line saying where and how it serves, and JSON logs stay JSON (no raw deprecation warning)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx2
import pytest

from tests.conftest import TEST_JWT_SECRET, Proc, SimControl, free_port, sim_env
from tests.helpers import run_exai

STORE_DOWN = "Cannot open the store"


def unreachable_postgres() -> str:
    return f"postgresql://postgres:hunter2-secret@127.0.0.1:{free_port()}/exai"


@pytest.mark.parametrize("command", [["serve"], ["stdio"], ["db", "upgrade"], ["audit"]])
def test_an_unreachable_database_is_two_lines_and_exit_2(command: list[str], sim: SimControl, tmp_path: Path) -> None:
    url = unreachable_postgres()
    done = run_exai(command, {**sim_env(sim), "EXAI_DATABASE_URL": url, "EXAI_PORT": str(free_port())}, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith(f"{STORE_DOWN} (PostgreSQL at 127.0.0.1:{url.rsplit(':', 1)[1]})"), lines[0]
    assert "Connection refused" in lines[0], lines[0]
    assert lines[1].startswith("  fix: start PostgreSQL there, or correct EXAI_DATABASE_URL"), lines[1]
    assert "hunter2" not in done.stderr + done.stdout


def test_an_unwritable_data_directory_is_two_lines_and_exit_2(sim: SimControl, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**sim_env(sim), "EXAI_DATA_DIR": str(blocker / "data"), "EXAI_PORT": str(free_port())}
    done = run_exai(["serve"], env, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stderr
    assert lines[0].startswith(f"{STORE_DOWN} (SQLite at {blocker}/data/exai.db)"), lines[0]
    assert lines[1].startswith("  fix: make EXAI_DATA_DIR writable"), lines[1]


@pytest.fixture
def jwks_server() -> Iterator[Callable[[bytes], str]]:
    """A loopback HTTP server answering every GET with the given body."""
    servers: list[HTTPServer] = []

    def serve(body: bytes) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/jwks"

    yield serve
    for server in servers:
        server.shutdown()


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_doctor_checks_store_redis_jwks_and_file_roots_and_fails_on_any(
    sim: SimControl, tmp_path: Path, jwks_server: Callable[[bytes], str], postgres_url: str, redis_url: str
) -> None:
    roots = tmp_path / "repo"
    roots.mkdir()
    down = {
        **sim_env(sim),
        "EXAI_DATABASE_URL": unreachable_postgres(),
        "EXAI_REDIS_URL": f"redis://:redis-secret@127.0.0.1:{free_port()}/5",
        "EXAI_JWT_JWKS_URL": jwks_server(b"<html>not a key set</html>"),
        "EXAI_FILE_ROOTS": f"{roots},{tmp_path / 'missing'}",
    }
    failed = run_exai(["doctor", "--timeout", "3"], down, cwd=tmp_path)
    assert failed.returncode != 0, failed.stdout
    lines = {line.split(":", 1)[0]: line for line in failed.stdout.splitlines() if line.startswith(("ok", "FAIL"))}
    assert lines["FAIL  store"].endswith("(fix: start PostgreSQL there, or correct EXAI_DATABASE_URL)"), lines
    assert "Connection refused" in lines["FAIL  store"]
    assert "(fix: start Redis there, or correct EXAI_REDIS_URL)" in lines["FAIL  redis"], lines
    assert "EXAI_JWT_JWKS_URL" in lines["FAIL  jwks"], lines
    assert f"FAIL  file root: {tmp_path / 'missing'}: not a directory" in failed.stdout
    assert f"ok    file root: {roots}: readable" in failed.stdout
    assert "hunter2" not in failed.stdout + failed.stderr and "redis-secret" not in failed.stdout + failed.stderr
    up = {
        **down,
        "EXAI_DATABASE_URL": postgres_url,
        "EXAI_REDIS_URL": redis_url,
        "EXAI_JWT_JWKS_URL": jwks_server(json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}]}).encode()),
        "EXAI_FILE_ROOTS": str(roots),
    }
    passed = run_exai(["doctor", "--timeout", "3"], up, cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    for name in ("store", "redis", "jwks", "file root"):
        assert f"ok    {name}: " in passed.stdout, passed.stdout
    assert "FAIL" not in passed.stdout


def log_records(proc: Proc) -> list[dict[str, object]]:
    lines = [line for line in proc.logs().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line that is not JSON: {line[:300]}")
    return records


def test_serve_logs_one_start_line_and_json_logs_stay_json(
    daemon: Callable[..., Proc], sim: SimControl, tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_FILE_ROOTS=str(tmp_path),
        EXAI_STATELESS_HTTP="true",
        EXAI_DATABASE_URL=postgres_url,
        EXAI_DATABASE_SCHEMA=pg_schema,
    )
    records = log_records(proc)
    assert not [r for r in records if "Warning" in str(r.get("event", ""))], "no raw warning at start"
    serving = [r for r in records if r.get("event") == "serving"]
    assert len(serving) == 1, records
    line = serving[0]
    assert line["mcp_url"] == f"http://127.0.0.1:{proc.port}/mcp"
    assert line["auth"] == "jwt-hs256"
    assert line["storage"] == "postgresql" and isinstance(line["schema_version"], int) and line["schema_version"] > 0
    assert line["file_roots"] == [str(tmp_path.resolve())]
    assert line["stateless"] is True


@pytest.mark.parametrize("command", [["token", "issue", "--sub", "alice"], ["token", "apikey", "--tenant", "alice"]])
@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_tokens_with_unknown_scopes_are_refused(command: list[str], tmp_path: Path) -> None:
    env = {"EXAI_JWT_SECRET": TEST_JWT_SECRET}
    for wrong in ("exai:tool", "exai:tools,exai:tool:chatt"):
        refused = run_exai([*command, "--scopes", wrong], env, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stdout == "", refused.stdout
        first, fix = refused.stderr.strip().splitlines()
        assert first.startswith("Unknown scope '") and "exai:tools" not in first.split(":", 1)[0], first
        assert fix.startswith("  fix: use exai:tools, exai:admin, exai:metrics, exai:tool:chat"), fix
    for right in ("exai:tool:chat exai:tool:version", "exai:metrics"):
        made = run_exai([*command, "--scopes", right], env, cwd=tmp_path)
        assert made.returncode == 0 and made.stdout.strip(), made.stderr


@pytest.mark.anyio
async def test_the_status_page_shows_retries_and_the_model_of_failed_calls(
    daemon: Callable[..., Proc], sim: SimControl
) -> None:
    from tests.helpers import call_tool

    proc = daemon(EXAI_MAX_RETRIES="2")
    sim.fault("503", model="sim-fast", count=1)
    retried = await call_tool(proc.url, "chat", {"prompt": "retried marker-r1", "model": "sim-fast"})
    assert not retried.is_error
    sim.fault("500", model="*")
    failed = await call_tool(proc.url, "chat", {"prompt": "failed marker-f1", "model": "sim-fast"})
    assert failed.is_error
    sent = sum("marker-f1" in json.dumps(entry["body"]) for entry in sim.requests(limit=200))
    rows = httpx2.get(f"{proc.url}/dashboard/data", timeout=30).json()["recent_calls"]
    failed_row, retried_row = rows[0], rows[1]
    assert failed_row["outcome"] == "error" and retried_row["outcome"] == "ok", rows
    assert retried_row["models"][0]["retries"] == 1 and retried_row["models"][0]["model"] == "sim-fast"
    [model] = failed_row["models"]
    assert model["requested"] == "sim-fast" and model["provider"] == "custom" and model["model"], model
    assert sent >= 3 and model["retries"] == sent - 1, (sent, model)
