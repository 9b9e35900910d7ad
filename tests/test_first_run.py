"""What a first-time user meets on the command line: busy ports, misspelt settings, piped output, quiet commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import SimControl, sim_env


def _run(args: list[str], env: dict[str, str], **kwargs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exai", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.mark.parametrize("via", ["--port", "EXAI_PORT"])
def test_serve_on_a_busy_port_says_so_in_one_line(sim: SimControl, via: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        args, env = (["serve", "--port", port], {}) if via == "--port" else (["serve"], {"EXAI_PORT": port})
        result = _run(args, {**sim_env(sim), **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "--port or EXAI_PORT" in lines[0], result.stderr
    assert "startup complete" not in result.stderr and "Errno" not in result.stderr
