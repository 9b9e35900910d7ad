"""Every call is accounted once: usage of every model call, refusals in the audit log, limits without auth."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from exai.security.auth import issue_token
from tests.conftest import Proc, SimControl, sim_env
from tests.helpers import mcp_client, text_of, tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
SECRET = "accounting-secret-that-is-long-enough-0123456789"


def audit_rows(env: dict[str, str], expected: int) -> list[dict[str, Any]]:
    """The daemon's audit log through `exai audit --json`, once it holds `expected` rows (it is written behind)."""
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "exai", "audit", "--json", "--limit", "500"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def audit_table(env: dict[str, str]) -> str:
    listing = subprocess.run(
        [sys.executable, "-m", "exai", "audit"], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr[-500:]
    return listing.stdout


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_every_model_call_of_consensus_counts_in_limits_metrics_and_audit(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    # Limits without auth apply to the one local tenant once set: a small daily token budget.
    proc = daemon(EXAI_RATE_LIMIT_TOKENS_PER_DAY="200")  # room for both experts' prompts, not their answers
    models = [{"model": "sim-fast", "stance": "for"}, {"model": "sim-smart", "stance": "against"}]
    async with Client(f"{proc.url}/mcp") as client:
        first = await client.call_tool("consensus", {"prompt": "Adopt tabs?", "models": models})
        assert not first.is_error, first.content
        assert first.structured_content["succeeded"] == 2
        refused = await client.call_tool("chat", {"prompt": "one more", "model": "sim-fast"})
    error = tool_error(refused)
    assert error["code"] == "rate_limited_tokens", "consensus' tokens reach the tenant's daily budget"

    scraped = httpx2.get(f"{proc.url}/metrics").text
    for model in ("sim-fast", "sim-smart"):
        assert metric(scraped, "exai_tokens_total", model=model, direction="out") > 0, model
    assert metric(scraped, "exai_tool_calls_total", tool="chat", outcome="rate_limited") == 1

    rows = audit_rows({"EXAI_DATA_DIR": str(tmp_path / "data")}, expected=3)
    consensus_rows = [r for r in rows if r["tool"] == "consensus"]
    assert sorted(r["model"] for r in consensus_rows) == ["sim-fast", "sim-smart"], "one audit row per model"
    assert all(r["output_tokens"] > 0 and r["outcome"] == "ok" for r in consensus_rows)
    assert len({r["correlation_id"] for r in consensus_rows}) == 1
    assert [r["outcome"] for r in rows if r["tool"] == "chat"] == ["rate_limited"]


async def test_refused_calls_are_audited(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    proc = daemon(EXAI_JWT_SECRET=SECRET, EXAI_RATE_LIMIT_RPM="4")
    narrow = issue_token(SECRET, "mallory[/bold]", ["exai:tool:chat"], 600)
    async with mcp_client(proc.url, narrow, headers={"X-Request-ID": "probe-1"}, timeout=120) as client:
        denied = [await client.call_tool("threads", {}) for _ in range(2)]
        for probe in ("admin_shell", "status2"):
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool(probe, {})
        limited = [await client.call_tool("chat", {"prompt": "hi", "model": "sim-fast"}) for _ in range(3)]
    assert all(tool_error(r)["code"] == "missing_scope" for r in denied)
    assert all(tool_error(r)["code"] == "rate_limited_rpm" for r in limited), "refusals spent the 4 calls a minute"
    rows = audit_rows({"EXAI_DATA_DIR": str(tmp_path / "data"), "EXAI_JWT_SECRET": SECRET}, expected=5)
    outcomes = sorted(r["outcome"] for r in rows if r["tenant"] == "mallory[/bold]")
    assert outcomes.count("denied") == 2, outcomes
    assert [r["tool"] for r in rows if r["outcome"] == "error"].count("(unknown)") == 2, "probes are audited"
    assert outcomes.count("rate_limited") == 1, "a repeated rate-limited refusal leaves one row a minute"
    logged = [json.loads(line) for line in proc.logs().splitlines() if '"tool_error"' in line]
    codes = sorted(line["code"] for line in logged)
    assert codes == [*["missing_scope"] * 2, "rate_limited_rpm", *["unknown_tool"] * 2], "one line a minute for those"
    assert len(outcomes) == 5, outcomes
    escape = issue_token(SECRET, "ev\x1b[31mil", ["exai:tools"], 600)
    refused = httpx2.post(f"{proc.url}/mcp", json={}, headers={"Authorization": f"Bearer {escape}"})
    assert refused.status_code == 401, "a tenant name with control characters is refused"
    listing = audit_table({"EXAI_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "300"})
    assert "mallory[/bold]" in listing, "tenant names are shown as plain text, never as markup"


async def test_hostile_correlation_ids_are_replaced_not_echoed(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    for hostile in ("café", "[/bold]", "x" * 65, "a b"):
        async with mcp_client(proc.url, headers={"X-Request-ID": hostile.encode()}, timeout=120) as client:
            result = await client.call_tool("chat", {"prompt": "hi", "model": "sim-fast"})
        assert not result.is_error, result.content
        cid = result.structured_content["correlation_id"]
        assert cid != hostile and re.fullmatch(r"[0-9a-f]{16}", cid), cid
    assert sim.count("requests") >= 4, "the calls reached the upstream"
    assert all(not set(r["headers"].get("x-request-id", "")) - set("0123456789abcdef") for r in sim.requests(4))


async def test_control_characters_are_refused_and_errors_quote_little(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    async with Client(f"{proc.url}/mcp") as client:
        nul = await client.call_tool("chat", {"prompt": "a\x00b", "model": "sim-fast"})
        nested = await client.call_tool(
            "consensus", {"prompt": "p", "models": [{"model": "sim-fast", "stance_prompt": "\x1b[31m"}]}
        )
        huge = await client.call_tool(
            "thinkdeep",
            {"step": "s", "step_number": 1, "total_steps": 1, "next_step_required": True, "findings": "f" * 300_000},
        )
        fine = await client.call_tool("chat", {"prompt": "tabs\tand\nnewlines\u202e are fine", "model": "sim-fast"})
    assert "U+0000" in tool_error(nul)["message"]
    assert "U+001B" in tool_error(nested)["message"]
    assert tool_error(huge)["details"]["fields"] == ["findings"]
    assert len(text_of(huge)) < 1000, "errors never echo a large value"
    assert not fine.is_error
    assert max(len(line) for line in proc.logs().splitlines()) < 5000


async def test_secrets_stay_out_of_console_logs_when_storage_fails(
    daemon: Daemon, sim: SimControl, postgres_url: str, pg_schema: str
) -> None:
    password = "Sup3rS3cret-db-password"
    url = postgres_url.replace("postgres@", f"postgres:{password}@", 1)
    assert password in url, "the test database URL names the postgres user"
    webhook = "http://127.0.0.1:9/hooks/T0KEN-webhook-secret-abcdef"
    proc = daemon(
        EXAI_LOG_JSON="false",
        EXAI_DATABASE_URL=url,
        EXAI_DATABASE_SCHEMA=pg_schema,
        EXAI_ALERT_WEBHOOK_URL=webhook,
    )
    async with Client(f"{proc.url}/mcp") as client:
        ok = await client.call_tool("chat", {"prompt": "hi", "model": "sim-fast"})
        assert not ok.is_error
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{pg_schema}" CASCADE')
        broken = await client.call_tool("chat", {"prompt": "hi again", "model": "sim-fast"})
    assert broken.is_error
    logs = proc.logs()
    assert "Traceback" in logs, "the storage failure is logged with its traceback"
    secrets = [password, webhook.rsplit("/", 1)[1], *sim_env(sim).values()]
    for secret in (s for s in secrets if "secret" in s.lower()):
        for piece in (secret, secret[:12], secret[-12:]):
            assert piece not in logs, f"{piece!r} leaked into the console log"


async def test_nested_text_is_limited_and_long_workflows_still_complete(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon()
    step = {"step_number": 1, "total_steps": 1, "next_step_required": True}
    big_issue = [{"severity": "low", "description": "x" * 3_500_000}]
    async with Client(f"{proc.url}/mcp") as client:
        nested = await client.call_tool("thinkdeep", {"step": "s", **step, "issues_found": big_issue})
        stance = await client.call_tool(
            "consensus", {"prompt": "p", "models": [{"model": "sim-fast", "stance_prompt": "y" * 3_500_000}]}
        )
        # Four steps of text near every field's limit: over a million characters reach the expert in the end.
        full = "word " * 19_000
        thread = None
        for number in range(1, 5):
            args = {"step": full, "findings": full, "hypothesis": full, "step_number": number, "total_steps": 4}
            result = await client.call_tool(
                "thinkdeep",
                {**args, "next_step_required": number < 4, "model": "sim-large", "continuation_id": thread},
            )
            assert not result.is_error, text_of(result)[:300]
            thread = result.structured_content["continuation_id"]
    assert tool_error(nested)["code"] == "invalid_arguments" and "issues_found.0.description" in text_of(nested)
    assert tool_error(stance)["code"] == "invalid_arguments"
    assert result.structured_content["status"] == "complete"


async def test_the_daily_token_budget_holds_for_concurrent_many_model_calls(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    budget = 5000
    proc = daemon(EXAI_RATE_LIMIT_TOKENS_PER_DAY=str(budget))
    prompt = "word " * 1000  # about a thousand tokens for every model asked
    models = [{"model": ("sim-fast", "sim-smart")[i % 2], "stance_prompt": f"expert {i}"} for i in range(4)]
    async with Client(f"{proc.url}/mcp") as client:
        results = await asyncio.gather(
            *(client.call_tool("consensus", {"prompt": prompt, "models": models}) for _ in range(4))
        )
    answered = sum(r.structured_content["succeeded"] for r in results if not r.is_error)
    assert 0 < answered < 16, "some experts are refused once the budget is spoken for"
    rows = audit_rows({"EXAI_DATA_DIR": str(tmp_path / "data")}, expected=answered)
    sent = sum(r["input_tokens"] for r in rows)
    assert sent <= budget, f"{sent} input tokens were sent against a budget of {budget}"
