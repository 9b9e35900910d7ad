"""Each configured vendor is asked which models it serves; a model it does not list is never used.

Also: listings are bounded in time and size (a trickling or flooding endpoint never holds the daemon, `/healthz`
answers throughout, memory stays bounded), and model ids with control characters are never shown.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from exai.config import load_settings
from exai.providers.bounded import FetchError, get_json_bounded
from exai.providers.listings import fetch_listing
from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error, wait_until
from tests.hostile_listing import hostile_listing

pytestmark = pytest.mark.anyio
KIMI_ONLY = {"ANTHROPIC_API_KEY": "", "CUSTOM_API_URL": "", "CUSTOM_MODELS": ""}


def _drop_from_listing(sim: SimControl, *dropped: str) -> None:
    every = sim.client.post(f"{sim.url}/_sim/models", json={}).json()["vendor_models"]
    kept = [m for m in every if m not in dropped]
    sim.client.post(f"{sim.url}/_sim/models", json={"vendor_models": kept}).raise_for_status()


async def _listmodels(client: Client) -> dict[str, Any]:
    result = await client.call_tool("listmodels", {})
    assert not result.is_error, result.content
    return result.structured_content or {}


async def _listing_arrived(client: Client, provider: str) -> dict[str, Any]:
    listed: dict[str, Any] = {}

    async def probe() -> bool:
        nonlocal listed
        listed = await _listmodels(client)
        flagged = any(m["provider"] == provider and m.get("listed_by_vendor") is not None for m in listed["models"])
        return flagged or any(p["name"] == provider and p.get("not_listed") for p in listed["providers"])

    await wait_until(probe, "the vendor listing arrived", every=0.2)
    return listed


@pytest.mark.timeout(600)  # a daemon and an `exai models` process on a busy machine
async def test_a_model_the_vendor_does_not_list_is_never_routed_to(
    daemon: Callable[..., Proc], sim: SimControl, tmp_path: Path
) -> None:
    _drop_from_listing(sim, "kimi-k2.6")
    proc = daemon(**KIMI_ONLY)
    async with Client(f"{proc.url}/mcp") as client:
        listed = await _listing_arrived(client, "kimi")
        kimi = next(p for p in listed["providers"] if p["name"] == "kimi")
        assert kimi["not_listed"] == ["kimi-k2.6"]
        assert "kimi-k2.6" not in {m["name"] for m in listed["models"]}
        assert all(m["listed_by_vendor"] for m in listed["models"] if m["provider"] == "kimi")

        auto = await client.call_tool("chat", {"prompt": "which model?", "model": "auto"})
        assert not auto.is_error, auto.content
        assert auto.structured_content["model"] == "kimi-k2.5", "the best model the vendor lists"

        sim.fault("500", model="kimi-k2.5")  # the first choice fails: the fallback must skip kimi-k2.6 too
        fallen = await client.call_tool("chat", {"prompt": "fall back", "model": "auto"})
        assert not fallen.is_error, fallen.content
        assert fallen.structured_content["model"] not in ("kimi-k2.5", "kimi-k2.6")
        sim.clear_faults()

        for name in ("kimi-k2.6", "kimi"):
            named = await client.call_tool("chat", {"prompt": "named", "model": name})
            error = tool_error(named)
            assert error["category"] == "not_found" and error["code"] == "model_not_listed", error
            assert "kimi-k2.5" in error["message"] and "kimi" in error["message"], error["message"]
            assert "kimi-k2.5" in error["details"]["usable"]
    assert sim.count("requests:kimi-k2.6") == 0
    env = {**os.environ, "KIMI_API_KEY": "sk-test", "KIMI_BASE_URL": sim.openai_url, "EXAI_DATA_DIR": str(tmp_path)}
    shown = await anyio.run_process([sys.executable, "-m", "exai", "models", "--json"], env=env, check=False)
    listed_by_vendor = {m["name"]: m["listed_by_vendor"] for m in json.loads(shown.stdout)}
    assert listed_by_vendor["kimi-k2.6"] is False and listed_by_vendor["kimi-k2.5"] is True, listed_by_vendor


async def test_until_a_listing_arrives_or_when_it_fails_nothing_is_filtered(
    daemon: Callable[..., Proc], sim: SimControl
) -> None:
    sim.fault("401", model="/v1/models", count=1)  # the vendor's listing fails once with 401
    proc = daemon(**KIMI_ONLY)
    async with Client(f"{proc.url}/mcp") as client:
        named = await client.call_tool("chat", {"prompt": "still served", "model": "kimi-k2.6"})
        assert not named.is_error, named.content
        listed = await _listmodels(client)
        assert {m.get("listed_by_vendor") for m in listed["models"] if m["provider"] == "kimi"} == {None}
    assert "vendor_listing_failed" in proc.logs()


async def test_anthropic_listing_pages_are_followed_within_one_deadline() -> None:
    pages = {
        None: {"data": [{"id": "claude-opus-4-7"}], "has_more": True, "last_id": "claude-opus-4-7"},
        "claude-opus-4-7": {"data": [{"id": "claude-sonnet-4-6"}], "has_more": False, "last_id": "claude-sonnet-4-6"},
    }

    def anthropic(request: httpx2.Request) -> httpx2.Response:
        assert request.headers["x-api-key"] == "sk-ant" and request.headers["anthropic-version"]
        return httpx2.Response(200, json=pages[request.url.params.get("after_id")])

    config = load_settings(anthropic_api_key="sk-ant").provider("anthropic")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(anthropic)) as http:
        ids, refused = await fetch_listing(http, config, 5.0, 100_000)
    assert ids == ["claude-opus-4-7", "claude-sonnet-4-6"] and refused == 0


async def test_a_listing_past_the_size_cap_is_refused_whole() -> None:
    body = json.dumps({"data": [{"id": f"model-{i}"} for i in range(50_000)]}).encode()
    config = load_settings(kimi_api_key="k").provider("kimi")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(lambda _: httpx2.Response(200, content=body))) as http:
        with pytest.raises(FetchError, match="cap"):
            await fetch_listing(http, config, 5.0, 100_000)


async def test_a_listing_cut_by_a_reset_names_the_failure() -> None:
    """A connection reset carries no message of its own: the error names its class rather than ending in ": "."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/models"
    try:
        async with httpx2.AsyncClient() as http:
            with pytest.raises(FetchError) as caught:
                await get_json_bounded(http, url, headers={}, deadline=10.0, max_bytes=1000)
    finally:
        server.close()
    assert str(caught.value) == f"cannot reach {url}: ReadError"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(600)  # a daemon and CLI processes on a busy machine
async def test_a_trickling_listing_never_holds_the_daemon(daemon: Callable[..., Proc], sim: SimControl) -> None:
    with hostile_listing("trickle") as endpoint:
        started = time.monotonic()
        proc = daemon(
            CUSTOM_API_URL=endpoint.url,
            CUSTOM_MODELS="",
            KIMI_BASE_URL=endpoint.url,
            EXAI_MODEL_LISTING_TIMEOUT_SECONDS="4",
        )
        healthy_after = time.monotonic() - started
        await wait_until(lambda: endpoint.requests >= 2, "both listings are being trickled to the daemon")
        trickling_while_probed = "custom_models_not_discovered" not in proc.logs()
        worst = 0.0
        async with httpx2.AsyncClient(timeout=10) as http:
            for _ in range(5):
                asked = time.monotonic()
                assert (await http.get(f"{proc.url}/healthz")).status_code == 200
                worst = max(worst, time.monotonic() - asked)
                await anyio.sleep(0.2)
        await wait_until(lambda: "custom_models_not_discovered" in proc.logs(), "discovery gave up", ceiling=60)
        await wait_until(lambda: "vendor_listing_failed" in proc.logs(), "the vendor listing gave up", ceiling=60)
        assert "within 4 s" in proc.logs()
        async with Client(f"{proc.url}/mcp") as client:  # Anthropic (the simulator) answers meanwhile
            answered = await client.call_tool("chat", {"prompt": "still here", "model": "claude-sonnet-4-6"})
        assert not answered.is_error, answered.content
    assert trickling_while_probed and worst < 5 and healthy_after < 60, (worst, healthy_after)


@pytest.mark.timeout(600)  # a daemon and CLI processes on a busy machine
async def test_a_huge_listing_keeps_memory_bounded(daemon: Callable[..., Proc]) -> None:
    with hostile_listing("huge") as endpoint:
        proc = daemon(CUSTOM_API_URL=endpoint.url, CUSTOM_MODELS="", EXAI_MODEL_LISTING_TIMEOUT_SECONDS="30")
        await wait_until(lambda: "custom_models_not_discovered" in proc.logs(), "discovery refused the listing")
        assert "more than the cap of 4,000,000 bytes" in proc.logs()
        rss = _rss_mb(proc.process.pid)
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{proc.url}/healthz")).status_code == 200
    assert endpoint.sent_bytes < 50_000_000, "the daemon stopped reading at the cap"
    assert rss < 250, f"{rss:.0f} MB"


@pytest.mark.timeout(600)  # a daemon and CLI processes on a busy machine
async def test_model_ids_with_control_characters_are_never_shown(daemon: Callable[..., Proc], tmp_path: Path) -> None:
    evil = ["good-model", "red\x1b[31malert", "two\nlines", "bidi\u202eexe", "bell\x07", "x" * 500]
    with hostile_listing("ids", ids=evil) as endpoint:
        proc = daemon(CUSTOM_API_URL=endpoint.url, CUSTOM_MODELS="", KIMI_BASE_URL=endpoint.url)
        async with Client(f"{proc.url}/mcp") as client:
            listed = await _listing_arrived(client, "kimi")
            text = text_of(await client.call_tool("listmodels", {}))
            named = tool_error(await client.call_tool("chat", {"prompt": "p", "model": "kimi-k2.6"}))
        env = {**os.environ, "CUSTOM_API_URL": endpoint.url, "EXAI_DATA_DIR": str(tmp_path)}
        as_json = await anyio.run_process([sys.executable, "-m", "exai", "models", "--json"], env=env, check=False)
        as_table = await anyio.run_process([sys.executable, "-m", "exai", "models"], env=env, check=False)
    cli_json, cli_table = as_json.stdout.decode(), as_table.stdout.decode()
    custom = [m["name"] for m in listed["models"] if m["provider"] == "custom"]
    assert custom == ["good-model"], custom
    assert named["details"]["listed"] == ["good-model"]
    assert [m["name"] for m in json.loads(cli_json)] == ["good-model"], cli_json
    for shown in (text, json.dumps(listed), json.dumps(named), cli_json, cli_table, proc.logs()):
        assert not any(bad in shown for bad in ("\x1b", "\x07", "\u202e", "two\nlines")), shown


@pytest.mark.timeout(600)  # two `exai doctor` processes, each importing both SDKs
@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
async def test_doctor_live_makes_one_tiny_call_per_provider_and_reports_it(sim: SimControl, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "EXAI_DATA_DIR": str(tmp_path),
        "COLUMNS": "300",
        "KIMI_API_KEY": "sk-test",
        "KIMI_BASE_URL": sim.openai_url,
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": sim.url,
    }
    quiet = await anyio.run_process([sys.executable, "-m", "exai", "doctor"], env=env, check=False)
    assert quiet.returncode == 0, quiet.stdout.decode()
    assert sim.count("requests") == 0, "without --live, no model is called"
    live = await anyio.run_process([sys.executable, "-m", "exai", "doctor", "--live"], env=env, check=False)
    out = live.stdout.decode()
    assert live.returncode == 0, out
    assert "kimi-k2.6" in out and "claude-opus-4-7" in out and " ms " in out and " in / " in out, out
    assert sim.count("requests:kimi-k2.6") == 1 and sim.count("requests:claude-opus-4-7") == 1
    assert sim.count("requests") == 2, "one tiny call per configured provider"
