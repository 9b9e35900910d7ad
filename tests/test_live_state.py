"""One event, one place: the `status` tool, the status page, alerts and /metrics read the same history and the
same health definitions, with the reason for every state."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
import redis.asyncio as aioredis
from mcp import Client

from exai.config import Limits
from exai.observability.alerts import AlertManager, AlertThresholds
from exai.observability.health import Health, limiter_health
from exai.observability.metrics import Metrics
from exai.observability.stats import Stats, percentile
from exai.security.auth import issue_token
from exai.security.limits import RedisLimiter
from exai.server.dashboard import dashboard_snapshot
from exai.server.mcp import build_server
from tests.conftest import TEST_JWT_SECRET, MakeServices, Proc, SimControl, free_port
from tests.helpers import bearer, mcp_client, text_of, tool_error

pytestmark = pytest.mark.anyio
ONLY_SIM_FAST = {"CUSTOM_ALLOWED_MODELS": "sim-fast", "KIMI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
NO_ROUTER = SimpleNamespace(providers={}, available_models=list, breakers=dict)


async def test_breaker_reason_is_the_same_in_status_page_and_alerts(
    sim: SimControl, make_services: MakeServices
) -> None:
    services = await make_services(EXAI_BREAKER_FAILURE_THRESHOLD="2", EXAI_MAX_RETRIES="1", **ONLY_SIM_FAST)
    sim.fault("503", model="sim-fast")
    async with Client(build_server(services)) as client:
        idle = (await client.call_tool("status", {})).structured_content
        failed = await client.call_tool("chat", {"prompt": "x", "model": "sim-fast"})
        status = await client.call_tool("status", {})
    assert idle["providers"][0]["health"] == "idle" and idle["providers"][0]["reason"] == "no upstream calls yet"
    assert tool_error(failed)["category"] == "provider"
    custom = status.structured_content["providers"][0]
    assert custom["health"] == "down"
    assert re.fullmatch(
        r"every model's circuit breaker is open: sim-fast: breaker open since \d\d:\d\d:\d\d UTC after 2 consecutive "
        r"upstream failures \(server x2\), next probe at \d\d:\d\d:\d\d UTC",
        custom["reason"],
    ), custom["reason"]
    assert custom["reason"] in text_of(status)
    assert dashboard_snapshot(services)["providers"] == status.structured_content["providers"]
    breaker = custom["breaker_details"][0]
    assert services.alerts.conditions()["breaker_open:custom/sim-fast"] == ("warning", f"custom/{breaker['reason']}")


async def test_failures_in_the_window_give_degraded_with_the_rate(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_MAX_RETRIES="2", **ONLY_SIM_FAST)
    sim.fault("500", model="sim-fast", count=1)
    async with Client(build_server(services)) as client:
        assert not (await client.call_tool("chat", {"prompt": "x", "model": "sim-fast"})).is_error
    (custom,) = services.health.providers()
    assert custom.health == "degraded" and custom.breakers == {}
    assert custom.reason == "1 of 2 upstream attempts failed in the last 300 s (server x1)"
    assert custom.recent_errors == {"server": 1}


async def test_tokens_and_cost_per_tenant_today_agree_with_metrics(
    sim: SimControl, make_services: MakeServices
) -> None:
    services = await make_services()
    async with Client(build_server(services)) as client:
        await client.call_tool("chat", {"prompt": "count me", "model": "sim-fast"})
        consensus = await client.call_tool(
            "consensus", {"prompt": "two views", "models": [{"model": "sim-fast"}, {"model": "kimi-k2"}]}
        )
        status = await client.call_tool("status", {})
    assert not consensus.is_error
    usage = status.structured_content["usage_today"]
    local = usage["tenants"]["local"]
    metrics = services.metrics.render().decode()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}\{{.*\}} (\S+)$", metrics, re.MULTILINE))

    assert local["calls"] == 2 and local["input_tokens"] + local["output_tokens"] == total("exai_tokens_total") > 0
    assert local["cost_usd"] == pytest.approx(total("exai_cost_usd_total")) and local["cost_usd"] > 0
    assert "since daemon start" in usage["note"] and "since daemon start" in text_of(status)
    page = dashboard_snapshot(services)["usage_today"]["tenants"]["local"]
    assert page["calls"] == 3, "the status call itself is counted once it finished"
    assert page["input_tokens"] == local["input_tokens"] and page["cost_usd"] == local["cost_usd"]


def test_limiter_state_read_duck_typed() -> None:
    assert limiter_health(None).model_dump() == {
        "backend": "none",
        "degraded": False,
        "redis_errors": 0,
        "reason": "no limits configured",
    }
    degraded = SimpleNamespace(redis=object(), failures=4, degraded=True, when_redis_fails="open")
    state = limiter_health(degraded)
    assert state.degraded and state.reason == (
        "limiter degraded: Redis unreachable, per-replica fallback limits in force"
    )
    text = Metrics(lambda: limiter_health(degraded)).render().decode()
    assert "exai_limiter_degraded 1.0" in text and "exai_limiter_redis_errors_total 4.0" in text
    stats = Stats()
    thresholds = AlertThresholds(300, 0.5, 30, 20, 50)
    alerts = AlertManager(thresholds, None, stats, Health(stats, NO_ROUTER, degraded, 300, 30))
    assert alerts.conditions() == {"limiter_degraded": ("critical", state.reason)}


async def test_redis_limiter_errors_are_counted() -> None:
    redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=1)
    limiter = RedisLimiter(redis, Limits(), {}, "open", lease_ttl=60)
    await limiter.acquire("t")
    state = limiter_health(limiter)
    assert state.backend == "redis" and state.redis_errors >= 1
    await redis.aclose()


async def test_daemon_with_redis_down_shows_limiter_errors(daemon: Any, sim: SimControl) -> None:
    proc: Proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    token = issue_token(TEST_JWT_SECRET, "ops", ["exai:tools", "exai:admin"], 600)
    headers = bearer(token)
    async with mcp_client(proc.url, token, timeout=60) as client:
        result = await client.call_tool("chat", {"prompt": "limits?", "model": "sim-fast"})
    assert not result.is_error, text_of(result)
    metrics = httpx2.get(f"{proc.url}/metrics", headers=headers).text
    errors = re.search(r"^exai_limiter_redis_errors_total (\S+)$", metrics, re.MULTILINE)
    assert errors and float(errors.group(1)) >= 1, metrics[-2000:]
    assert re.search(r"^exai_limiter_degraded [01]\.0$", metrics, re.MULTILINE)
    limiter = httpx2.get(f"{proc.url}/dashboard/data", headers=headers).json()["limiter"]
    assert limiter["backend"] == "redis" and limiter["redis_errors"] >= 1


def test_windows_and_series_from_one_second_slots() -> None:
    now = [1_000_000.0]
    stats = Stats(clock=lambda: now[0])
    attempt = SimpleNamespace(provider="p", model="m", outcome="server", latency_ms=5.0)
    stats.attempt_finished(attempt)
    now[0] += 10
    stats.attempt_finished(SimpleNamespace(provider="p", model="m", outcome="ok", latency_ms=5.0))
    assert stats.window(5).attempts == {"p": {"ok": 1}}
    assert stats.window(11).attempts["p"] == {"ok": 1, "server": 1}
    points = stats.series(60, 15)
    assert len(points) == 4 and sum(sum(s.attempts.get("p", {}).values()) for _, s in points) == 2
    now[0] += 901
    assert stats.window(900).attempts == {}


def test_percentile_of_log_histogram() -> None:
    from collections import Counter

    from exai.observability.stats import latency_bucket

    histogram = Counter(latency_bucket(ms) for ms in [10.0] * 90 + [1000.0] * 10)
    assert 10 <= percentile(histogram, 0.5) < 11 and 1000 <= percentile(histogram, 0.95) < 1100
    assert percentile(Counter(), 0.5) == 0.0
