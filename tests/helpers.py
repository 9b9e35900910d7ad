"""Building in-process services against the simulator."""

from __future__ import annotations

import pytest

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
