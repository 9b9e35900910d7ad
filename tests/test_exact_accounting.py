"""The tenant's token counter equals the usage the upstream reported; only what it did not report is estimated.

Counted where it is kept (the tenant's counter in Redis) and compared with the audit log and with the usage the
simulator reported for each answer.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from exai.conversations.tokens import count_tokens
from exai.security.auth import issue_token
from exai.security.limits import DAY, tenant_keys
from tests.conftest import Proc, SimControl
from tests.helpers import mcp_client
from tests.test_accounting import audit_rows

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
SECRET = "exact-accounting-secret-long-enough-0123456789"


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def test_the_counter_charges_reported_usage_and_estimates_only_the_rest(
    daemon: Daemon, sim: SimControl, tmp_path: Path, redis_url: str
) -> None:
    base, _, _ = redis_url.rpartition("/")
    redis_db = f"{base}/{random.randint(1, 15)}"
    tenant = f"acct-{os.urandom(4).hex()}"
    proc = daemon(EXAI_JWT_SECRET=SECRET, EXAI_REDIS_URL=redis_db)
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    reported: dict[str, dict[str, Any]] = {}
    async with mcp_client(proc.url, token, timeout=120) as client:
        plain = await client.call_tool("chat", {"prompt": "count me exactly please", "model": "sim-fast"})
        reported["plain"] = plain.structured_content
        continued = await client.call_tool(
            "chat",
            {
                "prompt": "and now again",
                "model": "sim-fast",
                "continuation_id": plain.structured_content["continuation_id"],
            },
        )
        reported["continued"] = continued.structured_content
        streamed = await client.call_tool(
            "chat", {"prompt": "stream me", "model": "sim-fast"}, progress_callback=_ignore_progress
        )
        reported["streamed"] = streamed.structured_content
        sim.fault("no_usage", model="sim-smart", count=1)
        unreported = await client.call_tool(
            "chat", {"prompt": "a stream without usage", "model": "sim-smart"}, progress_callback=_ignore_progress
        )
        reported["unreported"] = unreported.structured_content
        sim.fault("hang", model="sim-large")
        consensus = await client.call_tool(
            "consensus",
            {
                "prompt": "Adopt tabs?",
                "models": [{"model": "sim-fast", "stance": "for"}, {"model": "sim-large", "stance": "against"}],
                "per_model_timeout_seconds": 3,
            },
        )
    for name, data in reported.items():
        assert data is not None, name
    assert consensus.structured_content["succeeded"] == 1 and consensus.structured_content["failed"] == 1
    assert sim.count("requests:sim-large") >= 1, "the timed-out member was asked"

    data_env = {"EXAI_DATA_DIR": str(tmp_path / "data"), "EXAI_JWT_SECRET": SECRET}
    rows = [r for r in audit_rows(data_env, expected=6) if r["tenant"] == tenant]
    by_call = {r["correlation_id"]: r for r in rows if r["tool"] == "chat"}
    for name in ("plain", "continued", "streamed"):
        row, usage = by_call[reported[name]["correlation_id"]], reported[name]["usage"]
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0, name
        assert (row["input_tokens"], row["output_tokens"]) == (usage["input_tokens"], usage["output_tokens"]), name
    estimated = by_call[reported["unreported"]["correlation_id"]]
    assert reported["unreported"]["usage"] == {  # the upstream reported none: the caller sees what it is charged
        "input_tokens": estimated["input_tokens"],
        "output_tokens": estimated["output_tokens"],
        "estimated": True,
    }
    assert estimated["output_tokens"] == count_tokens(reported["unreported"]["answer"]), "the answer is counted"
    assert estimated["input_tokens"] > 0, "the prompt is estimated"

    members = sorted((r["model"], r["outcome"], r["error_category"]) for r in rows if r["tool"] == "consensus")
    assert members == [("sim-fast", "ok", None), ("sim-large", "error", "timeout")], "one row per model call"
    assert len(rows) == 6

    key = f"{tenant_keys(tenant)}:tokens:{int(time.time() // DAY)}"
    counter = int(redis.Redis.from_url(redis_db).get(key) or 0)
    assert counter == sum(r["input_tokens"] + r["output_tokens"] for r in rows), "the counter is the audit's sum"
