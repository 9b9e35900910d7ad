"""Pure units: catalogue, settings, quirks, breaker, backoff, classification."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import get_args

import pytest

from exai.config import load_settings
from exai.conversations.state import ThreadState, WorkflowRun, WorkflowStep, record_step
from exai.errors import InvalidInput
from exai.provider_specs import PROVIDER_SPECS
from exai.providers.base import classify_status, parse_retry_after
from exai.providers.catalogue import EFFORT_ORDER, Catalogue, ModelInfo
from exai.providers.quirks import anthropic_params, effort_for, openai_params, temperature_for
from exai.providers.resilience import BreakerState, BreakerView, CircuitBreaker, backoff_delay
from exai.providers.types import GenerateRequest, Message, ThinkingMode
from exai.storage.base import ThreadRecord
from exai.tools import enabled_tools


def _model(catalogue: Catalogue, name: str) -> ModelInfo:
    """The catalogue's entry for `name`, checked to be there."""
    info = catalogue.get(name)
    assert info is not None, name
    return info


def _state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read through a call (mypy keeps `breaker.state` narrowed past calls that change it)."""
    return breaker.state


def test_catalogue_has_real_limits_for_every_model() -> None:
    catalogue = Catalogue.load()
    assert all(m.context_window > 0 and m.max_output_tokens > 0 for m in catalogue.models.values())
    for name in (
        "kimi-k2-0905-preview",
        "kimi-k2-thinking",
        "kimi-k2.6",
        "glm-5.1",
        "glm-4.6",
        "glm-4.5",
        "glm-4.5-air",
        "glm-4.5-flash",
        "glm-4.5v",
        "gpt-5",
        "claude-sonnet-4-5",
    ):
        assert catalogue.get(name) is not None, name
    assert _model(catalogue, "KIMI").name == "kimi-k2.6"
    assert _model(catalogue, "glm-4.6").reasoning_field == "reasoning_content"
    assert _model(catalogue, "glm-4.5v").images


def test_user_models_file_adds_and_overrides(tmp_path: Path) -> None:
    user = tmp_path / "models.toml"
    user.write_text(
        '[models."glm-4.6"]\nprovider = "glm"\ncontext_window = 1000\nmax_output_tokens = 100\n'
        '[models."my-model"]\nprovider = "custom"\ncontext_window = 4096\nmax_output_tokens = 512\n'
    )
    catalogue = Catalogue.load(user, ["llama3.2:131072"])
    assert _model(catalogue, "glm-4.6").context_window == 1000
    assert _model(catalogue, "my-model").provider == "custom"
    assert _model(catalogue, "llama3.2").context_window == 131072
    user.write_text('[models.bad]\nprovider = "glm"\ncontext_window = 0\nmax_output_tokens = 1\n')
    with pytest.raises(InvalidInput, match="context_window"):
        Catalogue.load(user)
    with pytest.raises(InvalidInput, match="CUSTOM_MODELS"):
        Catalogue.load(custom_models=["x:0"])
    tagged = Catalogue.load(custom_models=["qwen3:8b"], custom_context=4096).get("qwen3:8b")
    assert tagged is not None and tagged.context_window == 4096, "an Ollama tag is part of the name"


def test_settings_read_aliases_lists_and_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-moon")
    monkeypatch.setenv("ZAI_API_KEY", "sk-zai")
    monkeypatch.setenv("GLM_BASE_URL", "https://open.bigmodel.cn/api/paas/v4/")
    monkeypatch.setenv("KIMI_ALLOWED_MODELS", "kimi-k2, kimi-k2-thinking")
    (tmp_path / "exai.toml").write_text('port = 9999\ndisabled_tools = ["status"]\n')
    settings = load_settings()
    kimi, glm = settings.provider("kimi"), settings.provider("glm")
    assert kimi.api_key == "sk-moon" and kimi.allows("kimi-k2") and not kimi.allows("moonshot-v1-8k")
    assert glm.api_key == "sk-zai" and glm.base_url == "https://open.bigmodel.cn/api/paas/v4"
    assert settings.port == 9999 and settings.disabled_tools == ["status"]
    assert "sk-moon" not in repr(settings)


def test_unknown_disabled_tool_is_a_config_error() -> None:
    with pytest.raises(InvalidInput, match="chatt"):
        enabled_tools("standard", ["chatt"])


def test_temperature_rules() -> None:
    catalogue = Catalogue.load()
    assert temperature_for(_model(catalogue, "gpt-5"), 0.2) == 1.0
    assert temperature_for(_model(catalogue, "o3"), 0.2) is None
    assert temperature_for(_model(catalogue, "kimi-k2"), 1.7) == 1.0
    assert temperature_for(_model(catalogue, "gpt-4.1"), 1.7) == 1.7


CATALOGUE = Catalogue.load()
THINKING_LEVELS: tuple[ThinkingMode, ...] = get_args(ThinkingMode)
ACCEPTED_EFFORTS = {
    # What each vendor's API documents as accepted, written down independently of the catalogue.
    "gpt-5": {"minimal", "low", "medium", "high"},
    "gpt-5-mini": {"minimal", "low", "medium", "high"},
    "gpt-5-nano": {"minimal", "low", "medium", "high"},
    "o3": {"low", "medium", "high"},
    "o4-mini": {"low", "medium", "high"},
    "gpt-5.1": {"none", "low", "medium", "high"},
    "gpt-5.2": {"none", "low", "medium", "high", "xhigh"},
    "gpt-5.4": {"none", "low", "medium", "high", "xhigh"},
    "gpt-5.4-mini": {"none", "low", "medium", "high", "xhigh"},
    "gpt-5.4-nano": {"none", "low", "medium", "high", "xhigh"},
    "gpt-5.5": {"none", "low", "medium", "high", "xhigh"},
}


@pytest.mark.parametrize("thinking", THINKING_LEVELS)
@pytest.mark.parametrize("name", sorted(CATALOGUE.models))
def test_every_model_is_sent_only_parameters_it_accepts(name: str, thinking: ThinkingMode) -> None:
    model = CATALOGUE.models[name]
    request = GenerateRequest(messages=[Message(role="user", content="q")], thinking=thinking)
    request = request.model_copy(update={"temperature": 0.7})
    if PROVIDER_SPECS[model.provider].wire == "anthropic":
        params = anthropic_params(request, model)
        assert params["max_tokens"] <= model.max_output_tokens
        if "thinking" in params and model.thinking_style == "anthropic_adaptive":
            assert params["thinking"] == {"type": "adaptive"} and thinking != "off"
            assert set(params["extra_body"]) == {"output_config"}, "no temperature with adaptive thinking"
        elif "thinking" in params:
            assert model.thinking_style == "anthropic_budget" and thinking != "off"
            assert 1024 <= params["thinking"]["budget_tokens"] < params["max_tokens"]
            assert "extra_body" not in params, "no temperature while extended thinking is on"
        return
    params = openai_params(request, model)
    other = {"max_tokens", "max_completion_tokens"} - {model.max_tokens_param}
    assert params[model.max_tokens_param] <= model.max_output_tokens and not other & set(params)
    if model.thinking_style == "openai_effort":
        assert params["reasoning_effort"] in model.reasoning_efforts
        assert params["reasoning_effort"] in ACCEPTED_EFFORTS[name]
    else:
        assert "reasoning_effort" not in params
    extra = params.get("extra_body", {})
    assert ("thinking" in extra) == (model.thinking_style == "switch")
    rule = model.temperature
    if rule.kind == "none":
        assert "temperature" not in params
    elif rule.kind == "fixed":
        assert params["temperature"] == rule.value
    else:
        assert rule.min <= params["temperature"] <= rule.max


def test_efforts_are_listed_for_every_reasoning_model_and_grow_with_the_level() -> None:
    reasoning = {n for n, m in CATALOGUE.models.items() if m.thinking_style == "openai_effort"}
    assert reasoning == set(ACCEPTED_EFFORTS)
    for name in reasoning:
        efforts = [effort_for(CATALOGUE.models[name], level) for level in THINKING_LEVELS]
        assert efforts == sorted(efforts, key=EFFORT_ORDER.index), (name, efforts)
    assert effort_for(_model(CATALOGUE, "o3"), "off") == "low", "o3 cannot switch reasoning off"
    assert effort_for(_model(CATALOGUE, "gpt-5"), "max") == "high"
    off = GenerateRequest(messages=[Message(role="user", content="q")], thinking="off")
    assert openai_params(off, _model(CATALOGUE, "glm-4.5"))["extra_body"] == {"thinking": {"type": "disabled"}}


def test_an_effort_model_without_its_efforts_is_refused(tmp_path: Path) -> None:
    user = tmp_path / "models.toml"
    user.write_text(
        '[models.o9]\nprovider = "openai"\ncontext_window = 1000\nmax_output_tokens = 100\n'
        'thinking_style = "openai_effort"\n'
    )
    with pytest.raises(InvalidInput, match="reasoning_efforts"):
        Catalogue.load(user)


def test_breaker_states_with_a_fake_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
    breaker.record_failure("bad_request")
    breaker.record_failure("context_too_long")
    assert breaker.state == "closed", "request errors say nothing about upstream health"
    breaker.record_failure("server")
    breaker.record_failure("timeout")
    assert _state(breaker) == "open" and not breaker.allow()
    assert breaker.view().failures == {"server": 1, "timeout": 1}, "what the status page says it opened after"
    now[0] = 10
    assert _state(breaker) == "half_open"
    assert breaker.allow() and not breaker.allow(), "one probe at a time"
    breaker.record_success()
    assert _state(breaker) == "closed" and breaker.times_opened == 1
    assert breaker.view() == BreakerView("closed", None, {}), "a success ends the streak"


def test_one_tenants_failures_keep_out_that_tenant_and_an_outage_keeps_out_everyone() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0], tenants_apart=True)
    breaker.record_success("alice")  # alice uses the model too
    for _ in range(2):
        breaker.record_failure("timeout", "mallory")
    assert breaker.state_for("mallory") == "open" and not breaker.allow("mallory")
    assert breaker.state_for("alice") == "closed" and breaker.allow("alice"), "another tenant judges the upstream"
    assert breaker.view().state == "open" and breaker.view().open_for == ("mallory",)
    breaker.record_failure("server", "alice")  # one failure of alice's, beside mallory's two: not yet an outage
    assert breaker.state_for("alice") == "closed" and breaker.state_for("bob") == "closed"
    breaker.record_failure("server", "alice")  # every tenant but the worst one failed `threshold` times
    assert all(breaker.state_for(t) == "open" for t in ("alice", "bob", "mallory", None))
    assert breaker.view().open_for == () and breaker.retry_in("bob") == 10, "open for everyone"


def test_a_tenant_that_fails_no_longer_counts_as_answered_lately() -> None:
    """Alice's answer from before the trouble must not make bob's and her own failures look like bob's alone."""
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: 0.0, tenants_apart=True)
    breaker.record_success("alice")
    for _ in range(2):
        breaker.record_failure("server", "bob")
    assert breaker.view().open_for == ("bob",), "alice had answers lately: bob's own failures"
    breaker.record_failure("server", "alice")
    assert breaker.view().open_for == (), "alice fails too: it counts as open, for the metric and the alert"


def test_a_thread_over_the_workflow_text_bound_can_still_shrink() -> None:
    """A thread stored before the bound (or filled by another tool's run) takes a step that makes it smaller, as the
    remedy advises; one that makes it larger is refused."""
    state, record = ThreadState(), ThreadRecord(tenant="t", title="t", expires_at=0.0)
    big, more = WorkflowStep(step="x" * 2_500_000), WorkflowStep(step="y" * 600_000)
    state.workflows["debug"] = WorkflowRun(steps={1: big, 2: more})
    record_step("debug", 2, WorkflowStep(step="shorter"), 2, final=True)(state, record)
    assert state.stored_chars == 2_500_007 + 2 * 160, "still over the bound, but smaller: taken"
    with pytest.raises(InvalidInput) as refused:
        record_step("analyze", 1, WorkflowStep(step="z"), 1, final=False)(state, record)
    assert refused.value.code == "workflow_too_large"


def test_each_tenant_probes_for_itself_and_a_failed_probe_keeps_out_only_its_tenant() -> None:
    """A tenant that sends a poison prompt as its probe cannot hold a healed model shut for the others."""
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0], tenants_apart=True)
    for tenant in ("alice", "alice", "bob", "bob"):
        breaker.record_failure("server", tenant)  # an outage: both tenants failed
    assert breaker.state_for("carol") == "open"
    now[0] = 10
    mallorys, bobs, bobs_other, carols = object(), object(), object(), object()
    assert breaker.allow("mallory", mallorys) and breaker.allow("bob", bobs), "one probe per tenant"
    assert not breaker.allow("bob", bobs_other), "the tenant's other calls wait for its probe"
    breaker.record_failure("timeout", "mallory", mallorys)  # the poison probe
    assert breaker.state_for("mallory") == "open" and breaker.retry_in("mallory") == 10
    assert breaker.state_for("carol") == "half_open" and breaker.allow("carol", carols), "no one else's clock moved"
    breaker.release_probe(bobs_other)  # a call that is not the probe leaves it
    breaker.record_failure("bad_request", "bob", bobs_other)
    assert not breaker.allow("bob", object())
    breaker.release_probe(bobs)  # the probe cut without a verdict frees it
    assert breaker.allow("bob", object())
    breaker.record_success()  # carol's probe: the model is healthy again, for everyone
    assert breaker.view() == BreakerView("closed", None, {}) and breaker.allow("mallory")
    assert breaker.times_opened == 3, "for alice alone, for everyone (the outage), for mallory again"


@pytest.mark.parametrize("apart", [False, True])
def test_with_one_tenant_the_breaker_is_a_plain_breaker(apart: bool) -> None:
    """A daemon one tenant uses alone, with authentication on or off: an outage shows as open for everyone (the status
    page's "down", the metric, the alert), and a late failure pushes the next probe back, as a plain breaker does."""
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=lambda: now[0], tenants_apart=apart)
    breaker.record_success("local")
    for n in range(3):
        assert breaker.allow("local"), n
        breaker.record_failure("connection", "local")
    assert breaker.state_for("local") == "open" and not breaker.allow("local")
    assert breaker.view().state == "open" and breaker.view().open_for == (), "open for everyone"
    now[0] = 9
    breaker.record_failure("timeout", "local")  # a call admitted before it opened fails now
    now[0] = 10
    assert breaker.state_for("local") == "open" and breaker.retry_in("local") == 9
    now[0] = 19
    probe = object()
    assert breaker.allow("local", probe) and not breaker.allow("local", object()), "one probe"
    breaker.record_failure("server", "local", probe)
    assert breaker.state_for("local") == "open" and breaker.times_opened == 2
    breaker.record_success("local")
    assert breaker.state_for("local") == "closed"


def test_backoff_is_jittered_exponential_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 0.5, 8, None, rng) for attempt in range(6)]
    assert all(0 <= d <= min(8, 0.5 * 2**i) for i, d in enumerate(delays))
    assert backoff_delay(0, 0.5, 8, 30.0, rng) == 30.0


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, "", "auth"),
        (403, "", "auth"),
        (429, "", "rate_limit"),
        (400, "context_length_exceeded", "context_too_long"),
        (400, "prompt is too long", "context_too_long"),
        (400, "content_filter", "content_filter"),
        (400, "bad temperature", "bad_request"),
        (404, "no such model", "model_not_found"),
        (413, "Request Entity Too Large", "request_too_large"),
        (413, "prompt is too long", "context_too_long"),
        (402, "Insufficient credits", "quota"),
        (429, '{"error": {"type": "insufficient_quota"}}', "quota"),
        (400, '{"error": {"code": "1211", "message": "Model does not exist"}}', "model_not_found"),
        (400, '{"error": {"code": "1220", "message": "You do not have permission"}}', "auth"),
        (500, "", "server"),
        (502, "", "server"),
        (529, "overloaded", "server"),
        (504, "", "timeout"),
        (408, "", "timeout"),
    ],
)
def test_status_classification(status: int, body: str, kind: str) -> None:
    assert classify_status(status, body).kind == kind


def test_retry_after_is_read_in_both_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0, "a date in the past means now"
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 50 <= (classify_status(429, "", in_a_minute).retry_after or 0) <= 60


def test_every_provider_spec_has_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Provider settings are derived from the specs: each spec's variables reach its ProviderConfig."""
    from exai.config import load_settings
    from exai.provider_specs import PROVIDER_SPECS

    for spec in PROVIDER_SPECS.values():
        monkeypatch.setenv(spec.key_env[-1], f"key-of-{spec.name}")
        monkeypatch.setenv(spec.base_url_env, f"https://{spec.name}.example/v1/")
        monkeypatch.setenv(spec.allowed_env, f"{spec.name}-a, {spec.name}-b")
    configs = load_settings().providers()
    for spec in PROVIDER_SPECS.values():
        config = configs[spec.name]
        assert config.api_key == f"key-of-{spec.name}" and config.base_url == f"https://{spec.name}.example/v1"
        assert config.allowed == {f"{spec.name}-a", f"{spec.name}-b"}


@pytest.mark.anyio
async def test_work_run_to_the_end_finishes_under_asyncio_cancels_and_the_cancel_still_wins() -> None:
    """asyncio's `Task.cancel` lands inside an anyio shield; `to_the_end` lets the work finish, then cancels."""
    import asyncio

    from exai.uncancelled import to_the_end

    started, go_on, done = asyncio.Event(), asyncio.Event(), []

    async def work(fails: bool) -> str:
        started.set()
        await go_on.wait()
        done.append(fails)
        if fails:
            raise RuntimeError("Redis said no")
        return "given back"

    for fails in (False, True):
        started.clear()
        go_on.clear()
        caller = asyncio.ensure_future(to_the_end(work(fails)))
        await started.wait()
        caller.cancel()
        caller.cancel()  # twice: a second cut does not tear the work either
        await asyncio.sleep(0)
        go_on.set()
        with pytest.raises(asyncio.CancelledError) as cut:
            await caller
        assert done[-1] is fails, "the work ran to its end"
        assert isinstance(cut.value.__cause__, RuntimeError) is fails, "an error after the cut is the cut's cause"
    assert await to_the_end(asyncio.sleep(0, "as it returned")) == "as it returned"


def test_progress_pacing_lets_a_burst_through_then_a_rate() -> None:
    """A stream's first chunks are each heard; a flood of tiny ones is not relayed chunk by chunk."""
    from exai.tools.chat import Pacing

    held = Pacing(burst=3, per_second=0)
    assert [held.allows() for _ in range(5)] == [True, True, True, False, False]
    flowing = Pacing(burst=1, per_second=1e9)
    assert all(flowing.allows() for _ in range(100))
