"""The simulator's control API: faults, latency, counters."""

from __future__ import annotations

from typing import Any

import httpx2


class SimControl:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx2.AsyncClient(timeout=10)

    async def fault(self, kind: str, model: str = "*", **options: Any) -> None:
        response = await self.http.post(f"{self.url}/_sim/faults", json={"kind": kind, "model": model, **options})
        response.raise_for_status()

    async def clear_faults(self) -> None:
        (await self.http.delete(f"{self.url}/_sim/faults")).raise_for_status()

    async def latency(self, ms: float, model: str = "*", jitter_ms: float = 0.0) -> None:
        body = {"ms": ms, "model": model, "jitter_ms": jitter_ms}
        (await self.http.post(f"{self.url}/_sim/latency", json=body)).raise_for_status()

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get(f"{self.url}/_sim/stats")
        response.raise_for_status()
        return dict(response.json())

    async def requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return list((await self.http.get(f"{self.url}/_sim/requests", params={"limit": limit})).json())

    async def markers(self, markers: list[str]) -> dict[str, dict[str, int]]:
        """How often the simulator received and answered each marker's prompt (see `driver.mark`)."""
        counts: dict[str, dict[str, int]] = {}
        for start in range(0, len(markers), 2000):
            response = await self.http.post(f"{self.url}/_sim/markers", json={"markers": markers[start : start + 2000]})
            response.raise_for_status()
            counts |= response.json()
        return counts

    async def reset(self) -> None:
        (await self.http.post(f"{self.url}/_sim/reset")).raise_for_status()

    async def close(self) -> None:
        await self.http.aclose()
