"""Give the memory a replica freed back to the system.

Python frees a request's objects when it ends, but glibc's malloc keeps the pages it freed in its heap for reuse:
after a burst of large prompts a replica held about 50 MB more resident memory for good (155 → 205 MB after 640
`chat` calls of 100,000 characters, 64 at once), which a container's memory limit and the node's scheduler count
as used. Every EXAI_MEMORY_TRIM_SECONDS, `malloc_trim(0)` hands the free pages back; it runs in a worker thread
(it takes milliseconds on a large heap; ctypes lets the event loop go on meanwhile). Only where the C library is
glibc: elsewhere nothing runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache

from exai.background import BackgroundLoop
from exai.observability.logging import get_logger

log = get_logger(__name__)
WORTH_LOGGING = 2**20
"""Memory given back below this (bytes) is routine, not worth a log line."""


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc's; musl and others have none
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


def resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> int:
    """Return the heap's free pages to the system; the bytes of resident memory that went (0 where it cannot)."""
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return 0
    before = resident_bytes()
    malloc_trim(0)
    return max(0, before - resident_bytes())


class HeapTrimmer:
    def __init__(self, every: float) -> None:
        self._loop = BackgroundLoop("exai-heap-trim", self._trim, every, failed_event="heap_trim_failed")
        self.enabled = every > 0 and _malloc_trim() is not None

    async def _trim(self) -> None:
        returned = await asyncio.to_thread(trim)
        if returned >= WORTH_LOGGING:
            log.info("memory_returned", mb=round(returned / 2**20, 1), resident_mb=round(resident_bytes() / 2**20))

    def start(self) -> None:
        if self.enabled:
            self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
