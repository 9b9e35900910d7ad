"""The capacity search's rules, on steps given by the test (no processes): what makes the knee, what makes the
throughput, and what ends the search."""

from __future__ import annotations

from typing import Any

import pytest

from exai.stress import capacity
from exai.stress.capacity import Deployment, Step, find_knee

pytestmark = pytest.mark.anyio


def _step(rate: float, completed: float, overhead_p95_ms: float, errors: int = 0) -> Step:
    return Step(rate, completed, round(rate * 20), errors, 1.0, overhead_p95_ms, 80.0, 4.0, 0.5, 5.0, 1.0, 4.0, 0.1)


async def _search(monkeypatch: pytest.MonkeyPatch, measured: list[Step]) -> capacity.Capacity:
    """Run the search over `measured`, one step per offered rate, against nothing."""
    queue = iter(measured)

    async def step(*args: Any, **kwargs: Any) -> Step:
        return next(queue)

    async def warm_up(*args: Any) -> None:
        return None

    class Ctx:
        def scale(self, full: int, quick: int) -> int:
            return full

        def progress(self, done: float, total: float, note: str) -> None:
            return None

    monkeypatch.setattr(capacity, "step", step)
    monkeypatch.setattr(capacity, "warm_up", warm_up)
    rates = [s.offered_per_s for s in measured]
    return await find_knee(Ctx(), Deployment("test", "", []), 0, rates, 20.0, [])  # type: ignore[arg-type]  # stand-in


async def test_the_knee_is_the_last_step_within_the_bound_and_the_search_goes_on_past_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = [_step(10, 10, 2.5), _step(20, 20, 4.9), _step(40, 39.5, 9.0), _step(60, 58, 30.0), _step(90, 60, 900.0)]
    found = await _search(monkeypatch, steps)
    assert found.knee is steps[1]
    assert found.throughput is steps[3], "over the bound but keeping up: still carried"
    assert found.steps == steps, "falling behind over the bound ends the search, after that step"


async def test_an_error_ends_the_search_and_is_neither_knee_nor_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [_step(10, 10, 2.5), _step(20, 20, 3.0, errors=1), _step(40, 40, 3.0)]
    found = await _search(monkeypatch, steps)
    assert found.knee is steps[0] and found.throughput is steps[0] and found.steps == steps[:2]


async def test_a_step_within_the_bound_but_behind_goes_on_and_later_steps_past_the_bound_are_no_knee(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behind by the clock (client processes starting late, say) but within the bound: the overhead says the
    deployment is fine, so the search goes on; once a step misses the bound, no later step is a knee."""
    steps = [_step(10, 6, 2.5), _step(20, 20, 8.0), _step(40, 40, 3.0), _step(60, 20, 40.0)]
    found = await _search(monkeypatch, steps)
    assert found.knee is steps[0]
    assert found.throughput is steps[2] and found.steps == steps


async def test_no_step_within_the_bound_is_no_knee_but_a_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [_step(10, 10, 150.0), _step(20, 20, 22.0), _step(40, 25, 800.0)]
    found = await _search(monkeypatch, steps)
    assert found.knee is None and found.throughput is steps[1] and found.steps == steps
