"""A client process of the load: `python -m exai.stress.worker EPOCH`, its plan (a JSON line) on stdin; one JSON
line per finished call on stdout.

One Python process cannot drive a thousand concurrent calls on its own, so the load is split over several of these.
The plan holds the run's token: it goes through a pipe, never the command line (which any user can read in `ps`).
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
    sys.stdout.write(json.dumps(asdict(sample)) + "\n")
    sys.stdout.flush()


def main() -> None:
    plan = LoadPlan(**json.loads(sys.stdin.readline()))
    asyncio.run(run_plan(plan, _emit, float(sys.argv[1])))


async def run_workers(
    processes: int, plan: LoadPlan, epoch: float, on_sample: Callable[[Sample], None], ceiling: float
) -> None:
    """Split `plan`'s sessions over `processes` worker processes and wait for all (killed at `ceiling` s)."""
    shares = [plan.sessions // processes + (1 if i < plan.sessions % processes else 0) for i in range(processes)]
    children: list[asyncio.subprocess.Process] = []

    async def spawn(part: LoadPlan) -> None:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exai.stress.worker",
            repr(epoch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=2**20,
        )
        children.append(child)
        assert child.stdin is not None
        child.stdin.write(json.dumps(asdict(part)).encode() + b"\n")  # the token with it: a pipe, not argv
        await child.stdin.drain()
        child.stdin.close()

    async def read(child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for line in child.stdout:
            on_sample(Sample(**json.loads(line)))
        await child.wait()

    try:
        for index, sessions in enumerate(s for s in shares if s):
            rate = plan.rate * sessions / plan.sessions  # an open loop's rate is shared like its sessions
            prefix = f"{plan.prefix}-p{index}"
            await spawn(LoadPlan(**{**asdict(plan), "sessions": sessions, "prefix": prefix, "rate": rate}))
        async with asyncio.timeout(ceiling):
            await asyncio.gather(*(read(child) for child in children))
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()


if __name__ == "__main__":
    main()
