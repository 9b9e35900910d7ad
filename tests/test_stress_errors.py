"""The stress client says what really failed: the MCP SDK's transport runs a task group per session, so a transport
error in it reaches the client as an `ExceptionGroup`; the category and message are those of the error inside."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import httpx2
import pytest
from mcp import Client

from exai.stress.driver import call, describe
from exai.stress.results import Sample
from exai.stress.workload import LoadPlan, run_plan

pytestmark = [pytest.mark.stress]


def test_an_exception_group_is_described_by_the_errors_it_wraps() -> None:
    timeout = httpx2.ReadTimeout("timed out")
    group = ExceptionGroup("unhandled errors in a TaskGroup", [timeout])
    assert describe(group) == ("ReadTimeout", "ReadTimeout: timed out")
    nested = BaseExceptionGroup("outer", [asyncio.CancelledError(), ExceptionGroup("inner", [group])])
    assert describe(nested) == ("ReadTimeout", "ReadTimeout: timed out"), "a sibling's cancellation is no cause"
    both = ExceptionGroup("two", [timeout, httpx2.RemoteProtocolError("Server disconnected")])
    assert describe(both) == (
        "ReadTimeout+RemoteProtocolError",
        "ReadTimeout: timed out; RemoteProtocolError: Server disconnected",
    )
    reset = ConnectionResetError(104, "Connection reset by peer")
    try:
        try:
            raise OSError() from reset  # as anyio's BrokenResourceError, then httpcore's ReadError: no message
        except OSError as quiet:
            raise httpx2.ReadError("") from quiet
    except httpx2.ReadError as silent:
        said = "ReadError: ConnectionResetError: [Errno 104] Connection reset by peer"
        assert describe(ExceptionGroup("tg", [silent])) == ("ReadError", said), "said by its cause"


@pytest.mark.anyio
async def test_a_session_the_server_breaks_is_reported_as_the_real_error() -> None:
    """A server that reads the request and closes the connection: the SDK's transport task fails with httpx's
    RemoteProtocolError inside its task group; the sample says so, not `session:ExceptionGroup`."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    samples: list[Sample] = []
    plan = LoadPlan(f"http://127.0.0.1:{port}/mcp", sessions=1, slots_per_session=1, operations_per_slot=1, ceiling=60)
    try:
        await run_plan(plan, samples.append, time.monotonic())
    finally:
        server.close()
        await server.wait_closed()
    [sample] = samples
    assert not sample.ok and sample.category == "session:RemoteProtocolError", sample
    assert "Server disconnected" in sample.detail, sample


@pytest.mark.anyio
async def test_a_call_cut_off_by_its_sessions_failure_is_handed_over_with_its_marker() -> None:
    """The SDK's task group cancels every call of a session whose transport failed: each is handed to `on_cut`
    with its marker, so the session's failure counts per call and the simulator can say whether it was paid."""
    entered = asyncio.Event()

    class Stuck:
        async def call_tool(self, tool: str, args: dict[str, Any]) -> None:
            entered.set()
            await asyncio.Event().wait()

    cut: list[Sample] = []
    task = asyncio.create_task(call(cast(Client, Stuck()), "chat", {"prompt": "hi"}, 0.0, 60, on_cut=cut.append))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [sample] = cut
    assert not sample.ok and sample.tool == "chat" and sample.marker.startswith("simmark-"), sample
