"""One tenant's failing calls cannot open a model's circuit breaker for every other tenant.

A breaker is shared by the daemon's tenants, so a tenant whose prompts never finish within the attempt's time limit
(an answer asked to run for hours, say) used to open it for everyone after a few calls: a denial of service with a
narrow token. The breaker now keeps out that tenant alone; everyone only once the other tenants' own failures
reach the threshold too (tests/test_units.py has the rule with an injected clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import mcp_client, text_of, tool_error

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
Daemon = Callable[..., Proc]


async def _chat(proc: Proc, tenant: str, prompt: str) -> CallToolResult:
    token = issue_token(TEST_JWT_SECRET, tenant, ["exai:tools"], 900)
    async with mcp_client(proc.url, token) as client:
        return await _ask(client, prompt)


async def _ask(client: Client, prompt: str) -> CallToolResult:
    args: dict[str, Any] = {"prompt": prompt, "model": "sim-fast"}
    return await client.call_tool("chat", args)


async def test_one_tenants_poison_prompts_open_the_breaker_for_that_tenant_alone(
    daemon: Daemon, sim: SimControl
) -> None:
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_BREAKER_FAILURE_THRESHOLD="2",
        EXAI_BREAKER_COOLDOWN_SECONDS="600",  # no half-open probe in the middle of the test
        EXAI_ATTEMPT_TIMEOUT_SECONDS="2",
        EXAI_MAX_RETRIES="0",
    )
    sim.fault("hang", model="sim-fast", hang_seconds=300, prompt_contains="poison")
    for n in range(2):
        failed = await _chat(proc, "mallory", f"poison {n}")
        assert tool_error(failed)["category"] == "timeout", text_of(failed)
    own = await _chat(proc, "mallory", "an honest question")
    assert tool_error(own)["code"] == "breakers_open", "the tenant whose calls failed meets the open breaker"
    sent = sim.count("requests")
    answered = await _chat(proc, "alice", "hello")
    assert not answered.is_error, text_of(answered)
    assert sim.count("requests") == sent + 1
    again = await _chat(proc, "mallory", "an honest question")
    assert not again.is_error, "another tenant's success closed the breaker: " + text_of(again)


async def test_failures_of_two_tenants_are_an_outage_and_open_the_breaker_for_all(
    daemon: Daemon, sim: SimControl
) -> None:
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_BREAKER_FAILURE_THRESHOLD="2",
        EXAI_BREAKER_COOLDOWN_SECONDS="600",
        EXAI_MAX_RETRIES="0",
    )
    sim.fault("503", model="sim-fast")
    for n in range(2):
        assert tool_error(await _chat(proc, "mallory", f"question {n}"))["code"] != "breakers_open"
    assert tool_error(await _chat(proc, "mallory", "again"))["code"] == "breakers_open"
    for n in range(2):  # alice's calls still go upstream: one failure of hers beside mallory's is no outage
        judged = await _chat(proc, "alice", f"hello {n}")
        assert tool_error(judged)["code"] != "breakers_open", (n, text_of(judged))
    sent = sim.count("requests")
    assert sent == 4
    for tenant in ("bob", "alice", "mallory"):
        refused = await _chat(proc, tenant, "hello")
        assert tool_error(refused)["code"] == "breakers_open", (tenant, text_of(refused))
    assert sim.count("requests") == sent, "with the upstream failing two tenants, nothing more was sent"


async def test_a_poison_probe_cannot_hold_a_healed_model_shut_for_the_others(daemon: Daemon, sim: SimControl) -> None:
    """After an outage each tenant probes for itself: mallory sending a never-ending prompt as the first probe after
    the cooldown keeps out mallory for another cooldown, and no one else."""
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_BREAKER_FAILURE_THRESHOLD="2",
        EXAI_BREAKER_COOLDOWN_SECONDS="10",  # carol is refused within it however slow the machine; then waited out
        EXAI_ATTEMPT_TIMEOUT_SECONDS="2",
        EXAI_MAX_RETRIES="0",
    )
    sim.fault("503", model="sim-fast", count=4)
    for tenant in ("alice", "alice", "bob", "bob"):
        assert tool_error(await _chat(proc, tenant, "hello"))["code"] != "breakers_open"
    assert tool_error(await _chat(proc, "carol", "hello"))["code"] == "breakers_open", "an outage: open for all"
    sim.fault("hang", model="sim-fast", hang_seconds=300, prompt_contains="poison")  # the upstream has healed
    deadline = time.monotonic() + 120
    while (probe := tool_error(await _chat(proc, "mallory", "poison")))["code"] == "breakers_open":
        assert time.monotonic() < deadline, "the cooldown never ended"
        await anyio.sleep(0.5)
    assert probe["category"] == "timeout", probe
    answered = await _chat(proc, "alice", "hello again")
    assert not answered.is_error, "mallory's failed probe kept out alice: " + text_of(answered)
