"""Give the memory a replica freed back to the system.

Python frees a request's objects when it ends, but glibc's malloc keeps the pages it freed in its heap for reuse:
after a burst of large prompts a replica held about 50 MB more resident memory for good (155 → 205 MB after 640
`chat` calls of 100,000 characters, 64 at once), which a container's memory limit and the node's scheduler count
as used. Every EXAI_MEMORY_TRIM_SECONDS (60), `malloc_trim(0)` hands the free pages back. It runs in a worker
thread, but it holds each of malloc's arenas while it walks it, and the event loop's allocations of more than 512
bytes wait for the main arena meanwhile: a trim took 0.4-0.8 ms (16 ms at most) on a replica busy with large
prompts, and about 50 ms on a heap of 380 MB freed in holes. Once a minute that is nothing; every second, under
steady load, a call faulted in about 20 pages more (pages handed back, then taken again). Where the C library has
no `malloc_trim` (musl, macOS) or there is no /proc, nothing runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from exai.background import BackgroundLoop
from exai.observability.logging import get_logger

log = get_logger(__name__)
WORTH_LOGGING = 2**20
"""Memory handed back below this (bytes) is routine, not worth a log line."""
STATM = Path("/proc/self/statm")


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, from the C library already loaded in this process (no search for its file)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None or not STATM.exists():
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


def resident_bytes() -> int:
    """This process's resident memory, from /proc."""
    return int(STATM.read_bytes().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class HeapTrimmer:
    """Hands freed heap memory back every `every` seconds; 0: never."""

    def __init__(self, every: float) -> None:
        self._malloc_trim = _malloc_trim() if every > 0 else None
        self._loop = BackgroundLoop("exai-heap-trim", self._trim, every, failed_event="heap_trim_failed")

    async def _trim(self) -> None:
        assert self._malloc_trim is not None  # started only with it
        before = resident_bytes()
        await asyncio.to_thread(self._malloc_trim, 0)
        after = resident_bytes()
        if before - after >= WORTH_LOGGING:
            log.info("memory_returned", mb=round((before - after) / 2**20, 1), resident_mb=after >> 20)

    def start(self) -> None:
        if self._malloc_trim is not None:
            self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
