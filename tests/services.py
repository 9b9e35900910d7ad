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


def _account_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _which_pg(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


class PrivateCluster:
    """A throwaway PostgreSQL cluster of this test run's own (initdb, pg_ctl), which a test may crash: `crash()`
    stops it in immediate mode (no shutdown checkpoint; WAL still in the server's buffers is thrown away, as when
    the server is killed) and starts it again."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = _which_pg("initdb"), _which_pg("pg_ctl")
        if not (initdb and self.pg_ctl):
            _unavailable("PostgreSQL's initdb and pg_ctl")
        self.user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root: as the postgres account, or nobody without one
            account = "postgres" if _account_exists("postgres") else "nobody"
            self.user = [shutil.which("runuser") or "runuser", "-u", account, "--"]
        self.data = Path(tempfile.mkdtemp(prefix="exai-pg-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        try:
            if self.user:
                shutil.chown(self.data, self.user[2])
            initialized = subprocess.run(
                [*self.user, initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync"],
                capture_output=True,
            )
            assert initialized.returncode == 0, f"initdb failed: {initialized.stderr.decode()[-2000:]}"
        except BaseException:
            shutil.rmtree(self.data, ignore_errors=True)
            raise

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        assert self.pg_ctl is not None
        return subprocess.run([*self.user, self.pg_ctl, "-D", str(self.data), *args], capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        log = str(self.data / "server.log")  # not our pipes: the server would hold them open, and us waiting on them
        started = self._ctl("-o", options, "-l", log, "-w", "-t", "120", "start")
        assert started.returncode == 0, f"pg_ctl start failed: {started.stderr.decode()[-2000:]}"

    def crash(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")
        self.start()

    def remove(self) -> None:
        self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivateCluster]:
    """A PostgreSQL cluster for one test alone, started; removed after it."""
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("EXAI_TEST_DATABASE_URL"):
        yield url
        return
    if _reachable(5432):
        yield DEFAULT_PG
        return
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.remove()


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
