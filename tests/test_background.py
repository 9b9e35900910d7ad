"""The one background loop: runs again after an error, stops when its wait says so, and stops on close."""

from __future__ import annotations

import asyncio

import pytest

from exai.background import BackgroundLoop
from tests.helpers import wait_until


def _running(loop: BackgroundLoop) -> bool:
    """Whether the loop runs, read through a call (mypy keeps `loop.running` narrowed past calls that change it)."""
    return loop.running


pytestmark = pytest.mark.anyio


async def test_an_error_is_logged_and_the_loop_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("the store is down")

    loop = BackgroundLoop("exai-test-loop", work, 0.01, at_once=True, failed_event="test_work_failed")
    loop.start()
    try:
        await wait_until(lambda: len(runs) >= 3, "the loop ran again after its first run failed")
        assert loop.running
    finally:
        await loop.close()
    assert not _running(loop)
    logged = capsys.readouterr()
    assert "test_work_failed" in logged.out + logged.err and "the store is down" in logged.out + logged.err


async def test_a_wait_of_none_ends_the_loop_and_close_stops_a_wait() -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(1)

    ending = BackgroundLoop("exai-test-ends", work, lambda: None if len(runs) >= 2 else 0.01, at_once=True)
    ending.start()
    await wait_until(lambda: not ending.running, "the loop ended when its wait said None")
    assert len(runs) == 2
    waiting = BackgroundLoop("exai-test-waits", work, 3600)  # not at once: the first run is an hour away
    waiting.start()
    await asyncio.sleep(0)
    assert waiting.running
    await waiting.close()
    assert not _running(waiting) and len(runs) == 2, "closed during its first wait: it never ran"


async def test_closing_a_loop_keeps_the_callers_own_cancellation() -> None:
    """A caller cancelled while it waits for the loop to stop (Ctrl-C during a stress run's cleanup, say) is still
    cancelled afterwards: only the loop's own cancellation ends in `close`."""
    cleaning = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(3600)
        finally:  # a run whose cleanup takes a while: the caller waits on it
            cleaning.set()
            await asyncio.sleep(30)

    loop = BackgroundLoop("exai-test-loop", work, 60, at_once=True)
    loop.start()
    await asyncio.sleep(0)  # the first run begins

    async def close_then_go_on() -> str:
        await loop.close()
        return "went on after being cancelled"

    caller = asyncio.create_task(close_then_go_on())
    await wait_until(cleaning.is_set, "the loop's run began its cleanup")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()


async def test_cleanup_of_a_cancelled_caller_closes_every_loop_and_goes_on() -> None:
    """A caller already cancelled, closing loops in its `finally`, closes all of them and reaches the end of its
    cleanup; its cancellation still ends it."""

    async def idle() -> None:
        await asyncio.sleep(3600)

    loops = [BackgroundLoop(f"exai-test-loop-{n}", idle, 60, at_once=True) for n in range(2)]
    cleaned: list[str] = []
    started = asyncio.Event()

    async def work_then_clean_up() -> None:
        for loop in loops:
            loop.start()
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            for loop in loops:
                await loop.close()
            cleaned.append("done")

    caller = asyncio.create_task(work_then_clean_up())
    await started.wait()
    await asyncio.sleep(0)  # the loops' first runs begin
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cleaned == ["done"], "the cleanup stopped at the first loop it closed"
    assert not any(_running(loop) for loop in loops)
