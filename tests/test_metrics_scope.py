"""The `exai:metrics` scope reads /metrics and nothing else: the token a Prometheus scraper keeps on disk."""

from __future__ import annotations

from collections.abc import Callable

import httpx2

from exai.security.auth import new_api_key
from tests.conftest import Proc, SimControl
from tests.test_http_attacks import post, ready_session, sse_result

Daemon = Callable[..., Proc]


def test_a_metrics_token_scrapes_and_can_do_nothing_else(daemon: Daemon, sim: SimControl) -> None:
    key, entry = new_api_key("prometheus", ["exai:metrics"])
    proc = daemon(EXAI_API_KEYS=entry)
    bearer = {"authorization": f"Bearer {key}"}

    scraped = httpx2.get(f"{proc.url}/metrics", headers=bearer, timeout=30)
    assert scraped.status_code == 200 and "exai_tool_calls_total" in scraped.text, scraped.text[:300]
    for path in ("/alerts", "/dashboard/data"):
        refused = httpx2.get(f"{proc.url}{path}", headers=bearer, timeout=30)
        assert refused.status_code == 403 and "exai:admin" in refused.text, (path, refused.text)

    session = ready_session(proc, bearer)
    listed = sse_result(post(proc, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, session))
    assert listed["result"]["tools"] == [], "no tool is visible to a metrics token"
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "status", "arguments": {}}}
    called = sse_result(post(proc, body, session))
    assert called["result"]["isError"] and called["result"]["_meta"]["exai/error"]["code"] == "missing_scope"
