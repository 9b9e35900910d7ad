"""Where the daemon's time goes: `exai serve` (or `exai stdio`) under py-spy while a client makes `chat` calls.

Run: `python bench/profile.py [--calls 3000] [--concurrency 4] [--stdio] [--out /tmp/exai.collapsed]`
(needs `pip install py-spy`). Prints the functions seen in the most samples (inclusive, and by own time) and
leaves the collapsed stacks for a flame graph (e.g. speedscope or inferno). Idle samples are not recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

from mcp import Client

from servers import FAST_MODEL, Servers, free_port, http_client, stdio_client


async def drive(client: Client, calls: int, concurrency: int) -> None:
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            result = await client.call_tool("chat", {"prompt": f"profile {i}", "model": FAST_MODEL})
            assert not result.is_error, result.content

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def summarize(collapsed: Path, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" for f in
                  stack.split(";")]  # fmt: skip
        samples = int(count)
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("own", own)):
        print(f"\n-- {title} --")
        for frame, samples in counter.most_common(top):
            print(f"{100 * samples / total:5.1f}%  {frame}")


async def run(args: argparse.Namespace) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as data_dir:
        servers = Servers(Path(data_dir))
        try:
            servers.start_sim()
            env = servers.exai_env("stdio" if args.stdio else "http", full=args.full)
            record = [spy, "record", "--format", "raw", "--rate", "500", "-o", str(args.out), "--"]
            if args.stdio:
                async with stdio_client([*record, sys.executable, "-m", "exai", "stdio"], env) as client:
                    await drive(client, args.calls, args.concurrency)
                    await asyncio.sleep(1)
                return
            port = free_port()
            servers.spawn([*record, sys.executable, "-m", "exai", "serve"], port, env | {"EXAI_PORT": str(port)})
            proc = servers.procs[-1]
            async with http_client(f"http://127.0.0.1:{port}/mcp", servers.bearer() if args.full else None) as client:
                await drive(client, args.calls, args.concurrency)
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(60)
        finally:
            servers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stdio", action="store_true", help="profile `exai stdio` instead of `exai serve`")
    parser.add_argument("--full", action="store_true", help="with auth (HTTP), per-tenant limits and Redis")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "exai.collapsed")
    args = parser.parse_args()
    asyncio.run(run(args))
    summarize(args.out, args.top)


if __name__ == "__main__":
    main()
