"""The status page in headless Chromium, against a real daemon: what an operator needs, rendered and escaped."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import call_tool, text_of

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]
ADMIN = ["exai:tools", "exai:admin"]
HOSTILE_TENANT = "ann<img src=x onerror=alert(1)>"
RENDER_CEILING_SECONDS = 120


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI=true: nothing may be skipped)")
        pytest.skip("!!! SKIPPED: chromium is not installed (apt-get install chromium)")
    return found


async def _call(url: str, token: str, tool: str, args: dict[str, Any], request_id: str | None = None) -> Any:
    return await call_tool(url, tool, args, token, headers={"X-Request-ID": request_id} if request_id else None)


def _dump_dom(chromium: str, profile: Path, url: str) -> str:
    """The page's DOM after it has run for a while (virtual time also waits for the page's fetches)."""
    out = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    return out.stdout


async def _render_until(chromium: str, profile: Path, url: str, ready: Callable[[str], bool]) -> str:
    """Render the page again and again until `ready` holds for its DOM (a generous ceiling, no fixed budget)."""
    deadline = time.monotonic() + RENDER_CEILING_SECONDS
    dom = ""
    while time.monotonic() < deadline:
        dom = await asyncio.to_thread(_dump_dom, chromium, profile, url)
        if ready(dom):
            return dom
        await asyncio.sleep(0.5)
    pytest.fail(f"the status page never showed what was expected; last DOM:\n{dom[-4000:]}")


def _rows(dom: str, table: str) -> list[list[str]]:
    """The text of each cell of each row of a table (markup removed, entities kept as the page escaped them)."""
    body = re.search(rf'<table id="{table}">(.*?)</table>', dom, re.DOTALL)
    assert body, f"no table {table}"
    return [
        [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.DOTALL)]
        for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.DOTALL)
    ]


async def test_status_page_shows_calls_models_fallbacks_and_charts(
    daemon: Callable[..., Proc], sim: SimControl, tmp_path: Path
) -> None:
    chromium = _chromium()
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_RATE_LIMIT_CONCURRENCY="50",
        EXAI_FALLBACK_CHAIN="sim-smart",
        EXAI_FALLBACK_FROM_EXPLICIT_MODEL="true",
        EXAI_MAX_RETRIES="1",
        EXAI_BREAKER_FAILURE_THRESHOLD="100",
    )
    admin = issue_token(TEST_JWT_SECRET, "ops", ADMIN, 600)
    user = issue_token(TEST_JWT_SECRET, HOSTILE_TENANT, ["exai:tools"], 600)
    page = f"{proc.url}/dashboard#token={admin}"

    sim.fault("503", model="sim-fast")  # every call asked of sim-fast is answered by sim-smart
    for i in range(3):
        result = await _call(proc.url, user, "chat", {"prompt": f"fb {i}", "model": "sim-fast"}, f"corr-fb-{i}")
        assert not result.is_error, text_of(result)
    failed = await _call(proc.url, user, "chat", {"prompt": "x", "model": "no-such-model"}, "corr-bad-model")
    assert failed.is_error
    sim.clear_faults()

    def shows_calls(dom: str) -> bool:
        return "corr-bad-model" in dom and "corr-fb-2" in dom and "<polyline" in dom

    dom = await _render_until(chromium, tmp_path / "chrome", page, shows_calls)
    header, *calls = _rows(dom, "calls")
    assert header == [
        "time (UTC)",
        "tool",
        "tenant",
        "model asked → answered",
        "fallbacks",
        "retries",
        "outcome",
        "latency",
        "correlation id",
    ]
    row = dict(zip(header, next(r for r in calls if r[-1] == "corr-fb-2"), strict=True))
    assert row["tool"] == "chat" and row["model asked → answered"] == "sim-fast → custom/sim-smart", row
    assert row["fallbacks"] == "sim-smart" and int(row["retries"]) >= 1 and row["outcome"] == "ok", row
    assert row["latency"].endswith(" ms")
    failed_row = dict(zip(header, next(r for r in calls if r[-1] == "corr-bad-model"), strict=True))
    assert failed_row["outcome"] == "error: unknown_model", failed_row
    # every user value is escaped: the hostile tenant name shows as text, never as markup
    escaped = html.escape(HOSTILE_TENANT, quote=False)
    assert "<img" not in dom and row["tenant"] == escaped
    usage = {r[0]: r for r in _rows(dom, "usage")[1:]}
    assert int(usage[escaped][2]) > 0, "tokens per tenant today"
    assert "since daemon start" in dom
    # per provider the reason for its state; the limiter; the daemon's own resources; the charts
    providers = {r[0]: r for r in _rows(dom, "providers")[1:]}
    assert providers["custom"][1] == "degraded", providers
    assert "upstream attempts failed in the last 300 s (server x" in providers["custom"][2], providers
    assert providers["kimi"][1:] == ["idle", "no upstream calls yet"], providers
    assert "limits counted in this process" in dom
    assert re.search(r'id="process">\d+ MB / [\d.]+% / \d+ of \d+<', dom), "memory, CPU and open files"
    for chart in ("chart-calls", "chart-latency", "chart-errors"):
        assert re.search(rf'id="{chart}"[^>]*><polyline', dom), chart

    sim.latency(8000)
    load = asyncio.gather(*(_call(proc.url, user, "chat", {"prompt": f"load {i}"}) for i in range(6)))
    during = await _render_until(
        chromium, tmp_path / "chrome", page, lambda d: bool(re.search(r'id="inflight">[1-9]\d*<', d))
    )
    assert "in flight" in during
    await load
    # a token without the admin scope sees the refusal, not the data
    not_admin = issue_token(TEST_JWT_SECRET, "bob", ["exai:tools"], 600)
    denied = await _render_until(
        chromium, tmp_path / "chrome2", f"{proc.url}/dashboard#token={not_admin}", lambda d: "exai:admin" in d
    )
    assert "corr-fb" not in denied
