"""`exai stress --quick all` as a real process: every scenario must pass, and the reports must be written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(420)
def test_quick_stress_run_passes_every_scenario(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    if postgres_url != "postgresql://postgres@127.0.0.1:5432/test" or not redis_url.startswith(
        "redis://127.0.0.1:6379"
    ):
        pytest.skip("the stress run's storage scenario uses the PostgreSQL and Redis on their default ports")
    out = tmp_path / "report"
    finished = subprocess.run(
        [sys.executable, "-m", "exai", "stress", "--quick", "all", "--out", str(out)],
        env={**os.environ, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    report = json.loads((out / "stress.json").read_text())
    failed = {
        s["name"]: [c for c in s["checks"] if not c["passed"]] or s["notes"]
        for s in report["scenarios"]
        if not s["passed"]
    }
    assert finished.returncode == 0 and not failed, f"failed: {json.dumps(failed, indent=1)}\n{finished.stderr[-3000:]}"
    assert [s["name"] for s in report["scenarios"]] == [
        "load",
        "recovery",
        "failover",
        "storage",
        "faults",
        "security",
        "soak",
    ]
    assert all(s["checks"] for s in report["scenarios"]), "every scenario judged something"
    html = (out / "stress.html").read_text()
    assert "<svg" in html and not any(tag in html for tag in ("<script", "<link", " src=")), "opens offline"
