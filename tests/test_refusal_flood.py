"""Calls to unknown or forbidden tools count against the tenant's rate limit and cannot flood the audit log.

Found by attacking the daemon (issue 17): a tenant limited to 30 calls a minute made 1,000 unknown-tool calls in
11 s, and each wrote an audit row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import wait_until_sync
from tests.test_http_attacks import bearer, post, ready_session, sse_result

Daemon = Callable[..., Proc]
LIMIT = 30
FLOOD = 60


def _call(proc: Proc, headers: dict[str, str], number: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    return sse_result(post(proc, body, headers))


def _code(answer: dict[str, Any]) -> str:
    """The error code of a JSON-RPC error or of a tool error result."""
    code: str = (
        answer["error"]["data"]["code"] if "error" in answer else answer["result"]["_meta"]["exai/error"]["code"]
    )
    return code


def _audit_rows(tenant: str) -> list[dict[str, Any]]:
    listed = subprocess.run(
        [sys.executable, "-m", "exai", "audit", "--json", "--tenant", tenant, "--limit", "5000"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in listed.stdout.splitlines()]


@pytest.mark.timeout(400)  # a few hundred calls on a busy shared machine
def test_probing_for_tools_spends_the_rate_limit_and_writes_few_audit_rows(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(
        EXAI_JWT_SECRET=TEST_JWT_SECRET,
        EXAI_TENANT_LIMITS=json.dumps({"mallory": {"requests_per_minute": LIMIT}}),
        EXAI_MAX_SESSIONS_PER_TENANT="10",
    )
    mallory = ready_session(proc, bearer("mallory", ["exai:tool:chat"]))
    probes: list[tuple[str, dict[str, Any]]] = [(f"no-such-tool-{n}", {}) for n in range(FLOOD)]
    probes += [("consensus", {"prompt": "x", "models": []})] * FLOOD  # a tool this token may not use
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda n: _code(_call(proc, mallory, n, *probes[n])), range(len(probes))))
    minutes = 1 + int((time.monotonic() - started) // 60)  # the limit is per sliding minute

    admitted = codes.count("unknown_tool") + codes.count("missing_scope")
    assert admitted <= LIMIT * minutes, f"{admitted} refusals in {minutes} minute(s) passed a limit of {LIMIT}"
    assert codes.count("rate_limited_rpm") >= len(probes) - LIMIT * minutes, codes[-5:]
    chat = _call(proc, mallory, 9999, "chat", {"prompt": "and now a real call", "model": "sim-fast"})
    assert chat["result"]["_meta"]["exai/error"]["code"] == "rate_limited_rpm", "the probes used up the minute"
    assert sim.count("requests") == 0

    alice = ready_session(proc, bearer("alice"))
    answer = _call(proc, alice, 1, "chat", {"prompt": "unaffected", "model": "sim-fast"})
    assert not answer["result"].get("isError"), "another tenant is not limited"

    # The audit writer flushes every 0.5 s: once alice's later call is written, so are mallory's refusals.
    wait_until_sync(lambda: len(_audit_rows("alice")) == 1, "the last call's audit row")
    rows = _audit_rows("mallory")
    kinds = {(r["tool"], r["outcome"]) for r in rows}
    most = LIMIT * minutes + len(kinds) * (minutes + 1)  # the admitted calls, and the first refusal of each kind
    assert len(rows) <= most, f"{len(rows)} audit rows for {len(probes) + 1} refusals: {kinds}"
    assert ("(unknown)", "rate_limited") in kinds and ("consensus", "rate_limited") in kinds, kinds
    assert "no-such-tool" not in json.dumps(rows), "an unknown tool's name is never recorded"
