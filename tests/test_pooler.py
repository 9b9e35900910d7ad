"""PostgreSQL behind PgBouncer in transaction mode: no session state survives a transaction, and nothing needs it.

The PgBouncer started here resets every server connection after each transaction (`DISCARD ALL`), so a store
that relied on a session setting (`SET search_path`) or a prepared statement would fail or write to the wrong
schema every time, not only when the pooler happens to hand it another backend.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from mcp import Client
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import Proc, SimControl, free_port, popen_owned
from tests.helpers import text_of

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    """A PgBouncer of this test's own, in transaction mode, in front of the test database."""
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        message = "pgbouncer is not installed (Debian package `pgbouncer`; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: nothing may be skipped)")
        pytest.skip(f"!!! SKIPPED: {message}")
    target = conninfo_to_dict(postgres_url)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="exai-pgbouncer-"))
    (work / "pgbouncer.ini").write_text(
        f"""[databases]
{target["dbname"]} = host={target.get("host", "127.0.0.1")} port={target.get("port", 5432)} \
dbname={target["dbname"]} user={target.get("user", "postgres")}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
server_reset_query = DISCARD ALL
server_reset_query_always = 1
default_pool_size = 5
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {work}/pgbouncer.log
pidfile = {work}/pgbouncer.pid
"""
    )
    as_user = []
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(work, "nobody")
        as_user = ["-u", "nobody"]
    process = popen_owned([binary, *as_user, str(work / "pgbouncer.ini")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"pgbouncer did not start: {stderr}")
            time.sleep(0.05)
        yield f"postgresql://{target.get('user', 'postgres')}@127.0.0.1:{port}/{target['dbname']}"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(work, ignore_errors=True)


async def _call(url: str, tool: str, args: dict[str, object]) -> dict[str, Any]:
    async with Client(f"{url}/mcp") as client:
        result = await client.call_tool(tool, args)
    assert not result.is_error, text_of(result)
    answer: dict[str, Any] = result.structured_content
    return answer


async def test_daemons_behind_pgbouncer_in_transaction_mode_use_their_schema(
    daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str, pgbouncer_url: str
) -> None:
    env = {"EXAI_DATABASE_URL": pgbouncer_url, "EXAI_DATABASE_SCHEMA": pg_schema}
    a, b = daemon(**env), daemon(**env)
    thread = str((await _call(a.url, "chat", {"prompt": "through the pooler", "model": "sim-fast"}))["continuation_id"])
    step = {"step": "s", "total_steps": 9, "next_step_required": True, "continuation_id": thread}
    await asyncio.gather(
        *(_call((a, b)[n % 2].url, "debug", {**step, "step_number": n}) for n in range(1, 5)),
        _call(b.url, "chat", {"prompt": "again", "model": "sim-fast", "continuation_id": thread}),
    )
    shown = await _call(a.url, "threads", {"action": "show", "thread_id": thread})
    assert shown["thread"]["turns"] == 2 + 4 + 2
    with psycopg.connect(postgres_url, autocommit=True) as direct:  # past the pooler: where did the rows go?
        rows = direct.execute(f'SELECT turn_count, version FROM "{pg_schema}".threads WHERE id = %s', (thread,))
        assert rows.fetchall() == [(8, 6)]
        audit = f'SELECT COUNT(*) FROM "{pg_schema}".audit WHERE thread_id = %s'
        deadline = time.monotonic() + 60  # audit rows are written in the background
        while direct.execute(audit, (thread,)).fetchone() == (0,):
            assert time.monotonic() < deadline, "no audit row reached the schema"
            await asyncio.sleep(0.1)
