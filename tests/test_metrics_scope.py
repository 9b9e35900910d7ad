"""The `exai:metrics` scope reads /metrics and nothing else: the token a Prometheus scraper keeps on disk."""

from __future__ import annotations

from collections.abc import Callable

import httpx2

from exai.security.auth import new_api_key
from tests.conftest import Proc, SimControl
from tests.test_http_attacks import open_session

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

    refused = open_session(proc, bearer)  # no tool to call: no MCP session (tasks, sessions of its tenant)
    assert refused.status_code == 403 and "exai:tools" in refused.text, refused.text
