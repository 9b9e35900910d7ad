"""`exai stress --quick all` as a real process: every scenario must pass, and the reports must be written."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from exai.server.mcp import build_server
from tests.conftest import MakeServices, SimControl, popen_owned
from tests.helpers import text_of, wait_until_sync

pytestmark = [pytest.mark.stress, pytest.mark.slow]


@pytest.mark.timeout(1900)
def test_quick_stress_run_passes_every_scenario(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    if postgres_url != "postgresql://postgres@127.0.0.1:5432/test" or not redis_url.startswith(
        "redis://127.0.0.1:6379"
    ):
        reason = "the stress run uses the PostgreSQL (db test) and Redis on their default ports, which are not up"
        pytest.fail(reason) if os.environ.get("CI") == "true" else pytest.skip(reason)
    out = tmp_path / "report"
    finished = subprocess.run(
        [sys.executable, "-m", "exai", "stress", "--quick", "all", "--out", str(out)],
        env={**os.environ, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=1800,  # about 6 minutes on a quiet 2-core machine; a busy one may take several times that
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
        "long",
    ]
    assert all(s["checks"] for s in report["scenarios"]), "every scenario judged something"
    for s in report["scenarios"]:
        names = {c["name"] for c in s["checks"]}
        assert {"paid, then failed", "stopped what it started"} <= names, s["name"]
    assert 1 <= report["isolation"]["redis_db"] <= 15 and report["isolation"]["tenant"].startswith("stress-")
    html = (out / "stress.html").read_text()
    assert "<svg" in html and not any(tag in html for tag in ("<script", "<link", " src=")), "opens offline"


@pytest.mark.parametrize(
    ("argument", "message"),
    [(["--redis-db", "16"], "--redis-db 16 is not a Redis database number"), (["--tenant", "a b"], "--tenant 'a b'")],
)
def test_bad_isolation_arguments_are_refused_with_what_to_do(argument: list[str], message: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "exai", "stress", "load", *argument], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 2 and message in finished.stderr, finished.stderr


@pytest.mark.anyio
async def test_a_hanging_provider_costs_one_attempt_then_the_call_falls_back(
    sim: SimControl, make_services: MakeServices
) -> None:
    """Found by the failover scenario: a hang used to hold every call until its deadline, with no fallback."""
    services = await make_services(
        EXAI_ATTEMPT_TIMEOUT_SECONDS="10",  # the fallback's healthy attempt must fit too, on a busy machine
        EXAI_MAX_RETRIES="0",
        EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true",
        EXAI_FALLBACK_CHAIN="sim-fast",
        EXAI_CALL_DEADLINE_SECONDS="60",
    )
    sim.fault("hang", model="kimi-k2-0905-preview")
    async with Client(build_server(services)) as client:
        result = await client.call_tool("chat", {"prompt": "still answered", "model": "kimi-k2"})
    assert not result.is_error, text_of(result)
    assert result.structured_content["model"] == "sim-fast"
    assert sim.count("disconnects") >= 1, "the hanging request was abandoned after one attempt"


def _descendants(root: int) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) in frontier and fields[0] != "Z":
                    children.add(int(stat.parent.name))
        found |= children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_everything_and_writes_a_partial_report(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "report"
    # Started with SIGINT ignored, as a background job of a non-interactive shell (CI) starts it: the run used to
    # count the signal and go on through the next scenario.
    earlier = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = popen_owned(
            [sys.executable, "-m", "exai", "stress", "--quick", "recovery", "security", "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, earlier)
    started: set[int] = set()

    def simulator_and_daemon_started() -> bool:
        started.update(_descendants(run.pid))
        return run.poll() is not None or len(started) >= 2

    try:
        wait_until_sync(simulator_and_daemon_started, "the run started its simulator and daemon", 300, every=0.2)
        assert run.poll() is None, "the run ended before it was interrupted"
        run.send_signal(sig)
        _, stderr = run.communicate(timeout=240)
        assert run.returncode == 130, stderr[-2000:]
        assert not [pid for pid in started if _alive(pid)], "a process of the run outlived it"
    finally:  # whatever failed above: nothing of the run survives the test
        for pid in [run.pid, *started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait(30)
    report = json.loads((out / "stress.json").read_text())
    assert report["interrupted"] and not report["passed"]
    assert "security" not in [s["name"] for s in report["scenarios"]], "the run went on after it was interrupted"
