"""The one background loop of the program: run some work every N seconds until stopped, surviving its errors.

Vendor listings, model discovery, retention, call-record upkeep, alert rules and the stress run's samplers all
repeat a piece of work in the background; they share this loop, so stopping, waiting and error handling are
written (and tested) once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from exai.observability.logging import get_logger

log = get_logger(__name__)


async def stop_task(task: asyncio.Task[object]) -> None:
    """Cancel `task` and wait until it has ended. Its own cancellation ends here; a cancellation of the caller that
    arrives while it waits goes on up (swallowing every CancelledError there would let a cancelled caller, a
    Ctrl-C'd run say, carry on as if nothing had happened). A caller already being cancelled when it calls this
    (cleanup in a `finally`) is not cancelled again: its cleanup goes on to the next statement.

    The caller's cancellation is told apart by its count (`Task.cancelling`), read before and after: the error
    raised here may be the task's own even when the caller was cancelled too, and a task that swallows its
    cancellation ends normally while the caller's cancellation was spent on it."""
    caller = asyncio.current_task()
    before = caller.cancelling() if caller is not None else 0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if caller is not None and caller.cancelling() > before:
        raise asyncio.CancelledError


Wait = float | Callable[[], float | None]
"""Seconds between two runs: a number, or a function asked after every run (None: the loop ends there)."""


class BackgroundLoop:
    """Runs `work` (its result is not used) in one background task until `close`: first at once (`at_once`) or
    after the first wait, then again after every wait.

    An exception from `work` is logged as `failed_event` (its type and message, no traceback: a store that is down
    for an hour would fill the log) and the loop goes on; the next run tries again.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[object]],
        every: Wait,
        *,
        at_once: bool = False,
        failed_event: str = "background_work_failed",
    ) -> None:
        self.name = name
        self.work = work
        self.every = every
        self.at_once = at_once
        self.failed_event = failed_event
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Begin in the background and return at once; a loop already started is left as it is."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop the loop (a run under way is cancelled) and wait until it has stopped."""
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    def _next_wait(self) -> float | None:
        return self.every() if callable(self.every) else self.every

    async def _run(self) -> None:
        if not self.at_once:
            wait = self._next_wait()
            if wait is None:
                return
            await asyncio.sleep(wait)
        while True:
            try:
                await self.work()
            except Exception as exc:  # whatever failed may work next time: say so and go on
                log.warning(self.failed_event, loop=self.name, error=f"{type(exc).__name__}: {exc}"[:300])
            wait = self._next_wait()
            if wait is None:
                return
            await asyncio.sleep(wait)
