"""Building in-process services against the simulator."""

from __future__ import annotations

from typing import Any

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
