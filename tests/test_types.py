"""The type checker passes on src/ and tests/: mypy, configured in pyproject.toml ([tool.mypy]), run as the suite runs.

A failure prints mypy's own report. The cache (.mypy_cache) makes a rerun after a small change take seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_error_in_src_or_tests() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "src", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert checked.returncode == 0, f"mypy found type errors in src/ or tests/:\n{checked.stdout}{checked.stderr}"
