"""Where the daemon's time goes: `exai serve` (or `exai stdio`) under py-spy while a client makes `chat` calls.

Run: `python bench/profile.py [--calls 3000] [--concurrency 4] [--stdio] [--full | --all] [--out /tmp/exai.collapsed]`
(needs `pip install py-spy`). Prints the daemon's CPU per call (user + system time of its process while the client
runs, from /proc, so py-spy's own work is not counted), the functions seen in the most samples (inclusive, and by
own time) and leaves the collapsed stacks for a flame graph (e.g. speedscope or inferno). Idle samples are not
recorded. `--all` is every feature on: JWT, limits, Redis and PostgreSQL (a schema of its own, dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mcp import Client

from servers import FAST_MODEL, Servers, cpu_seconds, free_port, http_client, stdio_client


async def drive(client: Client, calls: int, concurrency: int) -> None:
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            result = await client.call_tool("chat", {"prompt": f"profile {i}", "model": FAST_MODEL})
            assert not result.is_error, result.content

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def spy_pid(out: Path) -> int:
    """The py-spy process writing to `out` (a stdio client starts it without telling its pid)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out).encode() in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    raise RuntimeError("no py-spy process found")


def summarize(collapsed: Path, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").split("\n"):  # a torn sample may hold other line breaks
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
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


def child_of(pid: int) -> int:
    """The process py-spy started (the daemon)."""
    for _ in range(100):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy started no process")


async def driven(client: Client, daemon: int, args: argparse.Namespace) -> None:
    await drive(client, 50, args.concurrency)  # warm-up: connections, caches, the tokenizer
    before = cpu_seconds(daemon)
    await drive(client, args.calls, args.concurrency)
    used = cpu_seconds(daemon) - before
    print(f"daemon CPU per call: {1000 * used / args.calls:.2f} ms ({args.calls} calls, load {os.getloadavg()})")


async def run(args: argparse.Namespace) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as data_dir:
        servers = Servers(Path(data_dir))
        try:
            servers.start_sim()
            full = args.full or args.all
            env = servers.exai_env("stdio" if args.stdio else "http", full=full, postgres=args.all)
            record = [spy, "record", "--nonblocking", "--format", "raw", "--rate", "500", "-o", str(args.out), "--"]
            if args.stdio:
                async with stdio_client([*record, sys.executable, "-m", "exai", "stdio"], env) as client:
                    await driven(client, child_of(spy_pid(args.out)), args)
                    await asyncio.sleep(1)
                return
            port = free_port()
            servers.spawn([*record, sys.executable, "-m", "exai", "serve"], port, env | {"EXAI_PORT": str(port)})
            proc = servers.procs[-1]
            async with http_client(f"http://127.0.0.1:{port}/mcp", servers.bearer() if full else None) as client:
                await driven(client, child_of(proc.pid), args)
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
    parser.add_argument("--all", action="store_true", help="every feature on: --full and PostgreSQL")
    parser.add_argument("--top", type=int, default=45)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "exai.collapsed")
    args = parser.parse_args()
    asyncio.run(run(args))
    summarize(args.out, args.top)


if __name__ == "__main__":
    main()
