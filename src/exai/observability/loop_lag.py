"""How late the daemon's event loop runs what is due: the wait every await of every call pays beside its own work.

A latency measured around an await (a storage write, a limiter round trip) includes this wait: on a busy replica a
0.3 ms PostgreSQL commit reads as several milliseconds, because the call that waits for it resumes only when the
loop gets to it. `exai_event_loop_lag_seconds` tells the two apart: a slow database shows in the storage latency
alone, a busy replica in both. A timer due PROBE_SECONDS after the previous sample notes how late it ran (about 20
wake-ups a second). A long stall is one sample however long it lasts, so quantiles understate stalls: the
histogram's sum (total lag sampled) and its top buckets show them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from exai.background import BackgroundLoop

PROBE_SECONDS = 0.05


class LoopLagProbe:
    def __init__(self, observe: Callable[[float], None], every: float = PROBE_SECONDS) -> None:
        self.observe = observe
        self.every = every
        self._due: float | None = None
        self._loop = BackgroundLoop("exai-loop-lag", self._note, self._wait)

    def _wait(self) -> float:
        self._due = time.perf_counter() + self.every
        return self.every

    async def _note(self) -> None:
        if self._due is not None:
            self.observe(max(0.0, time.perf_counter() - self._due))

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
