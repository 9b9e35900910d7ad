"""The daemon's own resource use (memory, CPU, open files), read by prometheus-client's process collector.

The same collector feeds `/metrics` (process_* series) and the status page, so both show the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import ProcessCollector


@dataclass
class ProcessUsage:
    rss_bytes: float
    cpu_seconds: float
    cpu_percent: float
    """CPU use since the previous reading (since start for the first one), as a share of one core."""
    open_fds: float
    max_fds: float


class ProcessMeter:
    def __init__(self) -> None:
        self.collector = ProcessCollector(registry=None)
        self._last: tuple[float, float] | None = None

    def read(self) -> ProcessUsage:
        values = {sample.name: sample.value for family in self.collector.collect() for sample in family.samples}
        now, cpu = time.time(), values.get("process_cpu_seconds_total", 0.0)
        then, cpu_then = self._last or (values.get("process_start_time_seconds", now), 0.0)
        self._last = (now, cpu)
        return ProcessUsage(
            rss_bytes=values.get("process_resident_memory_bytes", 0.0),
            cpu_seconds=round(cpu, 2),
            cpu_percent=round(100 * (cpu - cpu_then) / max(now - then, 1e-3), 1),
            open_fds=values.get("process_open_fds", 0.0),
            max_fds=values.get("process_max_fds", 0.0),
        )
