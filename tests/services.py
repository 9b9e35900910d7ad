"""Real PostgreSQL and Redis for the tests: the machine's own, or throwaway ones started here.

Order: EXAI_TEST_DATABASE_URL / EXAI_TEST_REDIS_URL if set; else the services on 127.0.0.1:5432 and :6379;
else a throwaway server started from the binaries (initdb/pg_ctl, redis-server) if they exist; else the tests
that need them are skipped with a loud reason -- except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.conftest import free_port, popen_owned, worker_index

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
# The suite's own database numbers on the shared Redis, never 0: 13 for a run in one process, 13 + n for
# pytest-xdist worker n (tests/test_replicas.py `own_redis_db` takes 1 to 12).
REDIS_DATABASES = (13, 14, 15)


def _reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _unavailable(what: str) -> NoReturn:
    message = f"{what} is not available: no server on its default port and no binary to start one"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: nothing may be skipped)")
    pytest.skip(f"!!! SKIPPED: {message}")


def _which_pg(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("EXAI_TEST_DATABASE_URL"):
        yield url
        return
    if _reachable(5432):
        yield DEFAULT_PG
        return
    initdb, pg_ctl = _which_pg("initdb"), _which_pg("pg_ctl")
    if not (initdb and pg_ctl):
        _unavailable("PostgreSQL")
    data = Path(tempfile.mkdtemp(prefix="exai-pg-"))
    port = free_port()
    user = ["sudo", "-u", "nobody"] if os.geteuid() == 0 else []
    if user:
        shutil.chown(data, "nobody")
    subprocess.run([*user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True)
    try:
        subprocess.run(
            [*user, pg_ctl, "-D", str(data), "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if url := os.environ.get("EXAI_TEST_REDIS_URL"):
        yield url
        return
    if _reachable(6379):
        worker = worker_index()
        if worker >= len(REDIS_DATABASES):
            pytest.fail(f"the shared Redis has databases for {len(REDIS_DATABASES)} test workers; run fewer (-n)")
        yield f"redis://127.0.0.1:6379/{REDIS_DATABASES[worker]}"
        return
    binary = shutil.which("redis-server")
    if not binary:
        _unavailable("Redis")
    port = free_port()
    process = popen_owned(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not _reachable(port):
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(10)
