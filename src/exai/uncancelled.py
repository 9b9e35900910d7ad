"""Work that must finish even when its caller is cancelled: giving a slot back, settling or recording tokens.

An anyio shield (`CancelScope(shield=True)`) holds off anyio's cancellations only: asyncio's `Task.cancel`, which
is how a call is cut (a client's `notifications/cancelled`, a task cancelled, a daemon stopping), still lands at the
next await inside it. `to_the_end` runs the work as a task of its own and waits for it under both shields: a
cancelled caller waits for the work to finish, then is cancelled (whatever the work returned or raised: the
cancellation is what the caller asked for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Await `work` (a coroutine, or a task already running) to its end whatever cancels the caller meanwhile."""
    task = asyncio.ensure_future(work)
    cancelled = False
    with anyio.CancelScope(shield=True):
        while True:
            try:
                result = await asyncio.shield(task)
                break
            except asyncio.CancelledError:
                if task.cancelled():  # the work itself was cancelled (the loop closing): nothing to wait for
                    raise
                cancelled = True
            except BaseException as failure:
                if cancelled:
                    raise asyncio.CancelledError from failure
                raise
    if cancelled:
        raise asyncio.CancelledError
    return result
