"""Consensus asks every expert at once, and one expert's unexpected failure cancels the others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from mcp import Client

from exai.server.mcp import build_server
from tests.conftest import MakeServices, Proc, SimControl
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


async def test_a_members_own_timeout_never_lengthens_the_servers_call_deadline(
    daemon: Callable[..., Proc], sim: SimControl
) -> None:
    """`per_model_timeout_seconds` replaced the operator's EXAI_CALL_DEADLINE_SECONDS: a tenant could ask for 600 s
    on a server that allows 2 (and was capped at 600 on a server that allows more). It may now only shorten it."""
    proc = daemon(EXAI_CALL_DEADLINE_SECONDS="2", EXAI_CLIENT_WAIT_SECONDS="0")
    sim.fault("hang", model="sim-fast", hang_seconds=30)
    args = {"prompt": "q", "models": [{"model": "sim-fast"}], "per_model_timeout_seconds": 600}
    async with Client(f"{proc.url}/mcp") as client:
        result = await client.call_tool("consensus", args)
    assert not result.is_error, result
    [opinion] = (result.structured_content or {})["opinions"]
    assert not opinion["ok"] and "deadline of 2 s" in opinion["error"]["message"], opinion
    assert sim.count("requests:sim-fast") == 1, "retried past the server's deadline"
