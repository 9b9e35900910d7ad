"""The daemon's own figures from /metrics: histograms (gateway overhead, storage), process RSS and open files."""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from dataclasses import dataclass

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from exai.background import BackgroundLoop


@dataclass
class Scrape:
    values: dict[str, float]  # samples summed over labels (`name`) and per label value (`name:value`)
    buckets: dict[str, dict[float, float]]  # histogram name -> upper bound -> cumulative count (summed over labels)

    def bucket_delta(self, earlier: Scrape | None, histogram: str) -> dict[float, float]:
        now = self.buckets.get(histogram, {})
        before = earlier.buckets.get(histogram, {}) if earlier else {}
        return {le: count - before.get(le, 0.0) for le, count in now.items()}

    def delta(self, earlier: Scrape, name: str) -> float:
        """How much a counter (or a histogram's `_sum` or `_count`) grew since `earlier`."""
        return self.values.get(name, 0.0) - earlier.values.get(name, 0.0)


async def scrape(http: httpx2.AsyncClient, url: str) -> Scrape:
    """One reading; a histogram's buckets are kept summed (`name`) and per label value (`name:value`)."""
    response = await http.get(f"{url}/metrics", timeout=10)
    response.raise_for_status()
    return parse(response.text)


def parse(exposition: str) -> Scrape:
    """A reading from Prometheus' text format."""
    values: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[family.name][bound] += sample.value
                for label, value in sample.labels.items():
                    if label != "le":
                        buckets[f"{family.name}:{value}"][bound] += sample.value
            else:
                values[sample.name] += sample.value
                for value in sample.labels.values():
                    values[f"{sample.name}:{value}"] += sample.value
    return Scrape(dict(values), {k: dict(v) for k, v in buckets.items()})


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of cumulative bucket counts, interpolated inside its bucket (as Prometheus does)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


class ResourceMonitor:
    """Reads a daemon's RSS and open file descriptors, and the machine's 1-minute load average, every `interval`
    seconds while a scenario runs."""

    def __init__(self, url: str, started: float, headers: dict[str, str] | None = None, interval: float = 1.0) -> None:
        self.url = url
        self.started = started
        self.interval = interval
        self.readings: list[tuple[float, float, float]] = []
        self.loads: list[tuple[float, float]] = []  # (t, 1-minute load average)
        self._http = httpx2.AsyncClient(headers=headers or {})
        self._sampling = BackgroundLoop("exai-stress-resources", self.read_once, interval, at_once=True)

    async def read_once(self) -> tuple[float, float, float] | None:
        with contextlib.suppress(httpx2.HTTPError):
            values = (await scrape(self._http, self.url)).values
            reading = (
                round(time.monotonic() - self.started, 1),
                round(values.get("process_resident_memory_bytes", 0.0) / 2**20, 1),
                values.get("process_open_fds", 0.0),
            )
            self.readings.append(reading)
            self.loads.append((reading[0], round(os.getloadavg()[0], 2)))
            return reading
        return None

    def start(self) -> None:
        self._sampling.start()

    async def stop(self) -> None:
        await self._sampling.close()
        await self._http.aclose()
