"""A JSON-RPC request id of the wrong type, or a string id too long to hold, gets an error answer at once (never a
silent 202, never echoed back)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Proc, SimControl
from tests.test_http_attacks import post, ready_session

Daemon = Callable[..., Proc]


@pytest.mark.parametrize("stateless", [False, True])
def test_a_request_id_of_the_wrong_type_is_answered(daemon: Daemon, sim: SimControl, stateless: bool) -> None:
    proc = daemon(EXAI_STATELESS_HTTP=str(stateless).lower())
    headers = ready_session(proc) if not stateless else {"mcp-protocol-version": "2025-06-18"}
    for wrong, said in [
        *((w, "strings or integers") for w in (1.5, 2.0, True, None, {"a": 1})),
        ("x" * 100_000, "100,000 characters"),
        (10**4_000, "64-bit"),
        (-(2**63) - 1, "64-bit"),
    ]:
        answer = post(proc, {"jsonrpc": "2.0", "id": wrong, "method": "tools/list"}, headers)
        assert answer.status_code == 400, (str(wrong)[:40], answer.status_code, answer.text[:200])
        error = answer.json()["error"]
        assert error["code"] == -32600 and said in error["message"], error
        assert len(answer.content) < 1_000, "a refused id is not echoed back"
    for good in (3, "y" * 256, 2**63 - 1, -(2**63)):
        listed = post(proc, {"jsonrpc": "2.0", "id": good, "method": "tools/list"}, headers)
        assert listed.status_code == 200 and "chat" in listed.text, "a well-typed id is still answered"
