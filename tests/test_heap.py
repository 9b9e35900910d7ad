"""A replica gives the memory it freed back to the system (`exai.heap`), through a real daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Proc
from tests.helpers import mcp_client, text_of, wait_until

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
PROMPT = "lorem ipsum dolor " * 5_500  # about 100,000 characters, the largest prompt taken by default


async def test_memory_freed_after_a_burst_of_large_prompts_goes_back_to_the_system(daemon: Daemon) -> None:
    """256 calls of 100,000 characters, 32 at once: the replica's heap (its anonymous resident memory) grew by about
    50 MiB and stayed there once they were over (glibc keeps the pages it freed); now half of it or more goes back."""
    # Only providers on the wire these calls load: a configured Anthropic provider's SDK is imported on a background
    # thread a moment after start (about 30 MiB), which on a busy machine came after the memory looked steady, so
    # `before` left it out (103 MiB against 135) and the heap could never shrink to half of a growth counting it.
    proc = daemon(EXAI_MEMORY_TRIM_SECONDS="1", ANTHROPIC_API_KEY="")
    status = Path(f"/proc/{proc.process.pid}/status")

    def rss_mib() -> float:  # the heap's share: mapped files (libraries, the token tables) come and go on their own
        return int(status.read_text().split("RssAnon:")[1].split()[0]) / 1024

    readings: list[float] = []

    def steady() -> bool:  # two readings a trim apart within 1 MiB: background loading (SDKs, token tables) is done
        readings.append(rss_mib())
        return len(readings) > 1 and abs(readings[-1] - readings[-2]) < 1

    async with mcp_client(proc.url) as client:
        for n in range(20):
            await client.call_tool("chat", {"prompt": f"warm-up {n}", "model": "sim-fast"})
        await wait_until(steady, "the replica's memory holds steady after its start", every=1.5)
        before = peak = readings[-1]
        prompts = iter(range(256))

        async def caller() -> None:
            nonlocal peak
            for n in prompts:
                result = await client.call_tool("chat", {"prompt": f"{n} {PROMPT}", "model": "sim-fast"})
                assert not result.is_error, text_of(result)
                peak = max(peak, rss_mib())

        await asyncio.gather(*(caller() for _ in range(32)))
    grown = peak - before
    assert grown > 12, f"the burst grew the replica by {grown:.0f} MiB only: it says nothing about giving memory back"
    await wait_until(
        lambda: rss_mib() - before < grown / 2, f"the replica's heap ({before:.0f} MiB before) shrinks back"
    )
    assert '"event": "memory_returned"' in proc.logs()
