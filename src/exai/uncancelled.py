"""Work that must finish even when its caller is cancelled: giving a slot back, settling or recording tokens.

An anyio shield (`CancelScope(shield=True)`) holds off anyio's cancellations only: asyncio's `Task.cancel`, which
is how a call is cut (a client's `notifications/cancelled`, a task cancelled, a daemon stopping), still lands at the
next await inside it. `to_the_end` runs the work as a task of its own and waits for it under both shields: a
cancelled caller waits for the work to finish, then is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Await `work` to its end whatever cancels the caller meanwhile; the caller's cancellation is raised after."""
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
    if cancelled:
        raise asyncio.CancelledError
    return result
