"""A client process of the load: `python -m exai.stress.worker PLAN_JSON EPOCH`; one JSON line per finished call.

One Python process cannot drive a thousand concurrent calls on its own, so the load is split over several of these.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

from exai.stress.results import Sample
from exai.stress.workload import LoadPlan, run_plan


def _emit(sample: Sample) -> None:
    sys.stdout.write(json.dumps([sample.t, sample.ms, sample.ok, sample.category, sample.tool, sample.marker]) + "\n")
    sys.stdout.flush()


def main() -> None:
    plan = LoadPlan(**json.loads(sys.argv[1]))
    asyncio.run(run_plan(plan, _emit, float(sys.argv[2])))


async def run_workers(
    processes: int, plan: LoadPlan, epoch: float, on_sample: Callable[[Sample], None], ceiling: float
) -> None:
    """Split `plan`'s sessions over `processes` worker processes and wait for all (killed at `ceiling` s)."""
    shares = [plan.sessions // processes + (1 if i < plan.sessions % processes else 0) for i in range(processes)]
    children = []
    for index, sessions in enumerate(s for s in shares if s):
        rate = plan.rate * sessions / plan.sessions  # an open loop's rate is shared like its sessions
        part = LoadPlan(**{**asdict(plan), "sessions": sessions, "prefix": f"{plan.prefix}-p{index}", "rate": rate})
        children.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "exai.stress.worker",
                json.dumps(asdict(part)),
                repr(epoch),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                limit=2**20,
            )
        )

    async def read(child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for line in child.stdout:
            on_sample(Sample(*json.loads(line)))
        await child.wait()

    try:
        async with asyncio.timeout(ceiling):
            await asyncio.gather(*(read(child) for child in children))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()


if __name__ == "__main__":
    main()
