"""Two builds of the daemon side by side: its CPU per `chat` call and the calls' median latency, in alternated
blocks, in one run.

A change that saves a few percent of CPU is lost in the spread between two runs on a shared machine (the same
code's CPU per call moved from 3.0 to 4.7 ms between two days here). Both daemons run at once against one
simulator, and blocks of calls alternate between them in a new random order every round, so whatever else the
machine does falls on both alike; the claims are the ratios of their medians (CPU per call, and each block's
median call latency as the client sees it: at `--concurrency 1`, what a change on the call's path saves).

  A: this checkout as it is.
  B: `--base REV` (that commit, from a worktree of this repository, which is removed after), and/or `--path DIR`
     (put first on B's PYTHONPATH: a library installed with `pip install --target DIR`, say), and/or `--env K=V`
     (a setting of B's only).

Run: `python bench/ab.py --base HEAD~1 [--all | --full] [--rounds 8] [--calls 600] [--concurrency 32]`.
`--full` is JWT auth, per-tenant limits and Redis; `--all` is every feature on (`--full` and PostgreSQL, each
daemon in a schema of its own, dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client

from servers import FAST_MODEL, Servers, cpu_seconds, free_port, http_client

REPOSITORY = Path(__file__).resolve().parent.parent


async def block(client: Client, pid: int, calls: int, concurrency: int) -> tuple[float, float]:
    """Milliseconds of the daemon's CPU per call over `calls` calls, `concurrency` at a time, and their median
    latency in milliseconds."""
    queue = iter(range(calls))
    latencies: list[float] = []

    async def worker() -> None:
        for i in queue:
            started = time.perf_counter()
            result = await client.call_tool("chat", {"prompt": f"ab {i}", "model": FAST_MODEL})
            latencies.append(time.perf_counter() - started)
            assert not result.is_error, result.content

    before = cpu_seconds(pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return 1000 * (cpu_seconds(pid) - before) / calls, 1000 * statistics.median(latencies)


def daemon_b_env(args: argparse.Namespace, worktree: Path | None) -> dict[str, str]:
    paths = [str(p) for p in args.path] + ([str(worktree / "src")] if worktree else [])
    extra = dict(item.split("=", 1) for item in args.env)
    return extra | ({"PYTHONPATH": os.pathsep.join(paths)} if paths else {})


async def run(args: argparse.Namespace, worktree: Path | None) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        servers = Servers(Path(data_dir))
        try:
            servers.start_sim()
            full = args.full or args.all
            sides: dict[str, tuple[str, int]] = {}
            for side, extra in (("A", {}), ("B", daemon_b_env(args, worktree))):
                port = free_port()
                env = servers.exai_env(f"http-{side}", full=full, postgres=args.all) | extra | {"EXAI_PORT": str(port)}
                url = servers.spawn([sys.executable, "-m", "exai", "serve"], port, env) + "/mcp"
                sides[side] = (url, servers.procs[-1].pid)
            bearer = servers.bearer() if full else None
            async with http_client(sides["A"][0], bearer) as a, http_client(sides["B"][0], bearer) as b:
                clients = {"A": a, "B": b}
                for side, client in clients.items():  # warm-up: connections, caches, the tokenizer
                    await block(client, sides[side][1], 100, args.concurrency)
                figures: dict[str, list[float]] = {"A": [], "B": []}
                latencies: dict[str, list[float]] = {"A": [], "B": []}
                for round_ in range(args.rounds):
                    order = random.sample(list(clients), 2)
                    for side in order:
                        cpu, latency = await block(clients[side], sides[side][1], args.calls, args.concurrency)
                        figures[side].append(cpu)
                        latencies[side].append(latency)
                    print(
                        f"round {round_ + 1}: "
                        + ", ".join(f"{s} {figures[s][-1]:.2f} ms CPU, p50 {latencies[s][-1]:.2f} ms" for s in "AB")
                    )
        finally:
            servers.close()
    for what, sides_figures in (("ms of CPU per call", figures), ("ms call latency p50", latencies)):
        for side, values in sides_figures.items():
            print(f"{side}: median {statistics.median(values):.2f} {what} (min {min(values):.2f}, "
                  f"max {max(values):.2f}, {len(values)} blocks of {args.calls})")  # fmt: skip
        a, b = statistics.median(sides_figures["A"]), statistics.median(sides_figures["B"])
        print(f"B ÷ A, {what}: {b / a:.3f}")
    print(f"load average {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="B runs this commit (a worktree of this repository)")
    parser.add_argument("--path", type=Path, action="append", default=[], help="first on B's PYTHONPATH")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="a setting of B's only")
    parser.add_argument("--full", action="store_true", help="JWT auth, per-tenant limits and Redis")
    parser.add_argument("--all", action="store_true", help="every feature on: --full and PostgreSQL")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=600, help="calls per block")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if not (args.base or args.path or args.env):
        parser.error("B is the same as A: give --base, --path or --env")
    if any("=" not in item for item in args.env):
        parser.error("--env takes K=V")
    worktree = Path(tempfile.mkdtemp(prefix="exai-ab-")) / "tree" if args.base else None
    if worktree:
        subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "add", "-q", "--detach", str(worktree), args.base],
                       check=True)  # fmt: skip
    try:
        asyncio.run(run(args, worktree))
    finally:
        if worktree:
            subprocess.run(["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(worktree)], check=False)


if __name__ == "__main__":
    main()
