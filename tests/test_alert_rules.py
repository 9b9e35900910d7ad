"""The Prometheus alert rules (deploy/prometheus-alerts.yml): checked and unit-tested by Debian's `promtool`, every
alert with a test that fires it, every metric a rule reads exported by the real daemon, and a short PostgreSQL
outage seen in two real scrapes firing ExaiStorageErrors.

.ci/run installs `promtool` with Debian's `prometheus` package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import httpx2
import psycopg
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from exai.observability.events import Outcome
from exai.observability.metrics import LIMITER_OPERATIONS, RATE_LIMITS, STORAGE_OPERATIONS, TOOL_OUTCOMES
from exai.security.limits import _rejected
from tests.conftest import Proc, SimControl
from tests.container_engine import unavailable
from tests.helpers import text_of, wait_until

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus-alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts.test.yml"
SCRAPED_ELSEWHERE = {"up"}
"""Series Prometheus makes itself."""


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        unavailable("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    return subprocess.run([str(binary), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names are unique"
    assert set(names) - fired == set(), "alerts without a unit test that fires them"
    wanted = {"ExaiReplicaDown", "ExaiNotScraped", "ExaiInternalErrors", "ExaiTimeoutErrorRate", "ExaiNetworkErrorRate"}
    wanted |= {"ExaiStorageErrors", "ExaiProviderErrorsToClients", "ExaiSaturated", "ExaiTaskBacklog"}
    assert wanted <= set(names), wanted - set(names)
    assert "ExaiLimiterDegraded" in names


def test_the_known_labels_are_the_ones_the_code_uses() -> None:
    assert set(TOOL_OUTCOMES) == set(get_args(Outcome))
    for limit in RATE_LIMITS:
        assert _rejected(limit, 1, 1.0).code == f"rate_limited_{limit}"
    source = ROOT / "src" / "exai"
    threads = (source / "conversations" / "threads.py").read_text()
    records = (source / "server" / "call_records.py").read_text()
    timed = set(re.findall(r'_timed\("(\w+)"\)', threads)) | set(re.findall(r'on_storage\("(\w+)"', records))
    assert timed == set(STORAGE_OPERATIONS)
    limits = (source / "security" / "limits.py").read_text()
    assert set(re.findall(r'self\._run\(\s*"(\w+)"', limits)) == set(LIMITER_OPERATIONS)


def scrape(proc: Proc) -> dict[str, float]:
    """Every sample of /metrics: `name{label="value",...}` -> value."""
    answered = httpx2.get(f"{proc.url}/metrics", timeout=30)
    assert answered.status_code == 200, answered.text
    samples = {}
    for family in text_string_to_metric_families(answered.text):
        for sample in family.samples:
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def rule_metric_names() -> set[str]:
    words = set()
    for rule in alert_rules():
        words |= set(re.findall(r"\b([a-z_]+)(?=\{|\[|\)| ==| >=| >|$)", rule["expr"], re.M))
    return {w for w in words if w.startswith("exai_") or w == "up"}


async def chat(url: str, prompt: str) -> Any:
    async with Client(streamable_http_client(f"{url}/mcp")) as client:
        return await client.call_tool("chat", {"prompt": prompt, "model": "sim-fast"})


async def test_a_short_postgres_outage_in_real_scrapes_fires_the_storage_alert(
    daemon: Callable[..., Proc], sim: SimControl, postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    proc = daemon(EXAI_DATABASE_URL=postgres_url, EXAI_DATABASE_SCHEMA=pg_schema)
    before = scrape(proc)
    for category in ("internal", "timeout", "network", "storage", "provider"):
        assert before[f'exai_errors_total{{category="{category}"}}'] == 0, "exported at 0 from the start"
    assert before['exai_storage_errors_total{operation="append_turns"}'] == 0
    assert before['exai_tool_calls_total{outcome="error", tool="chat"}'] == 0
    assert not (await chat(proc.url, "before the outage")).is_error
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the tables vanish as in a failed-over database
        conn.execute(f'DROP SCHEMA "{pg_schema}" CASCADE')
    failed = await chat(proc.url, "during the outage")
    assert failed.is_error and "store" in text_of(failed), text_of(failed)
    after = scrape(proc)
    assert after['exai_errors_total{category="storage"}'] == 1, "the call failed with a storage error"
    assert after['exai_storage_errors_total{operation="create_call"}'] == 1, "its record was the write refused"
    await wait_until(  # the built-in alerts (status page, webhook) count it too, not only thread writes
        lambda: "storage" in {a["name"] for a in httpx2.get(f"{proc.url}/alerts").json()["active"]},
        "the built-in storage alert fired",
    )
    names = {key.split("{")[0] for key in after}
    missing = rule_metric_names() - names - SCRAPED_ELSEWHERE
    assert missing == set(), f"rules read metrics the daemon does not export: {missing}"
    # Two real scrapes a minute apart, then the later values held: the first error ever is an increase from 0.
    series = []
    for key, value in before.items():
        if key.startswith(("exai_storage_errors_total", "exai_errors_total")):
            labelled = key.replace("{", '{job="exai", instance="10.244.1.7:8765", ', 1)
            series.append({"series": labelled, "values": f"{value:g} {after[key]:g}x5"})
    case = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "0m", "alertname": "ExaiStorageErrors", "exp_alerts": []},
                    {
                        "eval_time": "2m",
                        "alertname": "ExaiStorageErrors",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": {"summary": "storage operations are failing (PostgreSQL or SQLite)"},
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "outage.test.yml").write_text(yaml.safe_dump(case))
    tested = promtool("test", "rules", "outage.test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
