"""Consensus asks every expert at once, and one expert's unexpected failure cancels the others."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from mcp import Client

from exai.server.mcp import build_server
from tests.conftest import SimControl
from tests.helpers import build_services, tool_error

pytestmark = pytest.mark.anyio


async def test_an_unexpected_failure_cancels_the_other_experts(
    sim: SimControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = await build_services(monkeypatch, sim)
    router = services.router
    original = router.generate

    async def generate(request: Any, **options: Any) -> Any:
        if options["plan"].first.name == "sim-smart":
            while sim.stats()["in_flight"] < 1:  # the other expert's request has reached the upstream
                await asyncio.sleep(0.05)
            raise RuntimeError("a defect in one expert's path")
        return await original(request, **options)

    monkeypatch.setattr(router, "generate", generate)
    sim.fault("hang", model="sim-fast")
    args = {"prompt": "q", "models": [{"model": "sim-fast"}, {"model": "sim-smart"}]}
    async with Client(build_server(services)) as client:
        result = await client.call_tool("consensus", args)
    assert tool_error(result)["category"] == "internal"
    ceiling = time.monotonic() + 60
    while sim.count("disconnects") < 1:
        assert time.monotonic() < ceiling, "the hanging expert's upstream request was never cancelled"
        await asyncio.sleep(0.05)
    await services.close()
