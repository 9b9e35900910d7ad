"""`exai stress` against a deployment that needs a token: the token never reaches the reports or the command line.

Found by attacking the daemon (issue 17): `--token` was written verbatim into world-readable reports.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl

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


def _assert_private_and_clean(out: Path, token: str) -> dict:
    assert stat.S_IMODE(out.stat().st_mode) == 0o700, oct(out.stat().st_mode)
    for name in ("stress.json", "stress.html"):
        report = out / name
        assert stat.S_IMODE(report.stat().st_mode) == 0o600, (name, oct(report.stat().st_mode))
        assert token not in report.read_text(), f"the token is in {name}"
    return json.loads((out / "stress.json").read_text())


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
