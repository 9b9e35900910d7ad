"""Building in-process services against the simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from mcp_types import CallToolResult

from exai.app import Services
from exai.config import load_settings
from tests.conftest import SimControl, sim_env


async def build_services(monkeypatch: pytest.MonkeyPatch, sim: SimControl, **extra: str) -> Services:
    """Services against the simulator, started (store open and migrated) like the daemon's."""
    for name, value in sim_env(sim, **extra).items():
        monkeypatch.setenv(name, value)
    services = Services.build(load_settings())
    await services.start()
    return services


def tool_error(result: CallToolResult) -> dict[str, Any]:
    """The error of a tool-error result, checked to be readable by every client.

    No structured content (clients validate it against the output schema even on errors); the whole error is
    in the text, and as data under `_meta["exai/error"]`.
    """
    assert result.is_error, result
    assert result.structured_content is None, result.structured_content
    error = (result.meta or {})["exai/error"]
    text = result.content[0].text  # type: ignore[union-attr]
    assert error["message"] in text and error["correlation_id"] in text, text
    return error


async def wait_until(condition: Callable[[], bool], what: str, ceiling: float = 90.0) -> None:
    """Poll `condition` until it holds; fail after a generous ceiling (the machine may be busy)."""
    deadline = time.monotonic() + ceiling
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.1)


async def cancel_once_upstream(call: Callable[[], Awaitable[Any]], sim: SimControl) -> None:
    """Start `call`, wait until its request is held at the simulator, then cancel it as a client would."""
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await call()

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await wait_until(lambda: sim.stats()["in_flight"] >= 1, "the call's request reached the upstream")
        scope.cancel()
