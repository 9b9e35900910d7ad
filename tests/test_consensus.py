"""Consensus asks every expert at once, and one expert's unexpected failure cancels the others."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client

from exai.server.mcp import build_server
from tests.conftest import MakeServices, SimControl
from tests.helpers import tool_error, wait_until

pytestmark = pytest.mark.anyio


async def test_an_unexpected_failure_cancels_the_other_experts(
    sim: SimControl, monkeypatch: pytest.MonkeyPatch, make_services: MakeServices
) -> None:
    services = await make_services()
    router = services.router
    original = router.generate

    async def generate(request: Any, **options: Any) -> Any:
        if options["plan"].first.name == "sim-smart":
            await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the other expert's request reached the upstream")
            raise RuntimeError("a defect in one expert's path")
        return await original(request, **options)

    monkeypatch.setattr(router, "generate", generate)
    sim.fault("hang", model="sim-fast")
    args = {"prompt": "q", "models": [{"model": "sim-fast"}, {"model": "sim-smart"}]}
    async with Client(build_server(services)) as client:
        result = await client.call_tool("consensus", args)
    assert tool_error(result)["category"] == "internal"
    await wait_until(lambda: sim.count("disconnects") >= 1, "the hanging expert's upstream request was cancelled")
