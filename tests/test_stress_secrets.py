"""`exai stress` against a deployment that needs a token: the token never reaches the reports or the command line.

Found by attacking the daemon (issue 17): `--token` was written verbatim into world-readable reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.test_stress import _descendants

pytestmark = [pytest.mark.stress, pytest.mark.slow]

Daemon = Callable[..., Proc]


def _stress(args: list[str], out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exai", "stress", "--quick", *args, "--out", str(out)],
        env={**os.environ, "COLUMNS": "160", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_private_and_clean(out: Path, token: str) -> dict[str, Any]:
    assert stat.S_IMODE(out.stat().st_mode) == 0o700, oct(out.stat().st_mode)
    for name in ("stress.json", "stress.html"):
        report = out / name
        assert stat.S_IMODE(report.stat().st_mode) == 0o600, (name, oct(report.stat().st_mode))
        assert token not in report.read_text(), f"the token is in {name}"
    summary: dict[str, Any] = json.loads((out / "stress.json").read_text())
    return summary


def test_the_token_comes_from_the_environment_and_never_reaches_the_reports(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_BREAKER_COOLDOWN_SECONDS="2")
    token = issue_token(TEST_JWT_SECRET, "ops", ["exai:admin"], 900)
    where = ["--url", proc.url, "--sim-url", sim.url]

    from_env = _stress(["recovery", *where], tmp_path / "env", EXAI_TOKEN=token)
    report = _assert_private_and_clean(tmp_path / "env", token)
    recovery = report["scenarios"][0]
    assert recovery["passed"], f"the daemon accepted EXAI_TOKEN: {recovery['checks']}\n{from_env.stderr[-2000:]}"
    assert token not in from_env.stdout + from_env.stderr

    # The old way still works, and is recorded with the value replaced; an existing open folder is closed too.
    (tmp_path / "argv").mkdir(mode=0o755)
    (tmp_path / "argv").chmod(0o755)
    from_argv = _stress(["security", *where, "--token", token], tmp_path / "argv")
    report = _assert_private_and_clean(tmp_path / "argv", token)
    assert "--token '***'" in report["command"] or "--token ***" in report["command"], report["command"]
    assert token not in from_argv.stdout + from_argv.stderr


def _command_lines(pids: set[int]) -> set[str]:
    """Their command lines ("" for one that has just exited is left out)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            found.add(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found - {""}


def test_no_process_of_a_run_carries_the_token_on_its_command_line(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    """`ps` shows every user the command lines: the load's client processes get their plan (and the token in it)
    through a pipe. Every descendant of the run is read while it runs."""
    limits = {
        "EXAI_RATE_LIMIT_CONCURRENCY": "500",
        "EXAI_RATE_LIMIT_RPM": "100000",
        "EXAI_MAX_SESSIONS_PER_TENANT": "500",
    }
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, **limits)
    token = issue_token(TEST_JWT_SECRET, "ops", ["exai:tools", "exai:admin"], 900)
    out = tmp_path / "report"
    command = [sys.executable, "-m", "exai", "stress", "--quick", "load", "--url", proc.url, "--sim-url", sim.url]
    run = subprocess.Popen(
        [*command, "--out", str(out)],
        env={**os.environ, "COLUMNS": "160", "EXAI_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 600
        while run.poll() is None and time.monotonic() < deadline:
            seen |= _command_lines(_descendants(run.pid))
            time.sleep(0.05)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(120)
    workers = [line for line in seen if "exai.stress.worker" in line]
    assert workers, f"the run's client processes were seen: {sorted(seen)}"
    carrying = [line[:200] for line in seen if token in line or "eyJ" in line]
    assert not carrying, f"a process of the run has a token on its command line: {carrying}"
    report = json.loads((out / "stress.json").read_text())
    assert report["scenarios"][0]["passed"], report["scenarios"][0]["checks"]
