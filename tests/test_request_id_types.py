"""A JSON-RPC request id of the wrong type gets an error answer at once, never a silent 202."""

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
    for wrong in (1.5, 2.0, True, None, {"a": 1}):
        answer = post(proc, {"jsonrpc": "2.0", "id": wrong, "method": "tools/list"}, headers)
        assert answer.status_code == 400, (wrong, answer.status_code, answer.text)
        error = answer.json()["error"]
        assert error["code"] == -32600 and "strings or integers" in error["message"], error
    listed = post(proc, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers)
    assert listed.status_code == 200 and "chat" in listed.text, "a well-typed id is still answered"
