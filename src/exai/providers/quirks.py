"""Where the catalogue's vendor quirk flags turn into request parameters: the one place they apply."""

from __future__ import annotations

from typing import Any

from exai.providers.catalogue import EFFORT_ORDER, ModelInfo, ReasoningEffort
from exai.providers.types import GenerateRequest, ThinkingMode

_WANTED_EFFORT: dict[ThinkingMode, ReasoningEffort] = {
    "off": "none",
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "xhigh",
}
_BUDGET: dict[ThinkingMode, int] = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "max": 32000}
_ADAPTIVE_EFFORT: dict[ThinkingMode, str] = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "high",
}
DEFAULT_MAX_OUTPUT = 8192


def will_think(model: ModelInfo, request: GenerateRequest) -> bool:
    """Whether the model will think for this request: one that can, asked to; or one that always does. Such a
    request is streamed (a model that streams its reasoning shows it is alive while it thinks) and may stay silent
    longer before its first word (see the router's attempt limit). Other requests stay whole: a stream's usage needs
    `stream_options`, which not every endpoint takes."""
    if model.thinking_style == "native":
        return True
    if model.thinking_style == "openai_effort":  # o3 and GPT-5 cannot switch reasoning off: "off" is their least
        return effort_for(model, request.thinking) != "none"
    return request.thinking != "off" and model.thinking_style != "none"


def temperature_for(model: ModelInfo, requested: float | None) -> float | None:
    """The temperature to send: clamped into the model's range, its fixed value, or none at all."""
    rule = model.temperature
    if rule.kind == "none":
        return None
    if rule.kind == "fixed":
        return rule.value
    if requested is None:
        return None
    return min(max(requested, rule.min), rule.max)


def effort_for(model: ModelInfo, thinking: ThinkingMode) -> ReasoningEffort:
    """The model's accepted effort nearest at or above the level asked for (its strongest if none is).

    So `off` is the least thinking a model allows: o3 cannot switch reasoning off and gets "low".
    """
    wanted = EFFORT_ORDER.index(_WANTED_EFFORT[thinking])
    accepted = model.reasoning_efforts
    return next((e for e in accepted if EFFORT_ORDER.index(e) >= wanted), accepted[-1])


def max_output_for(model: ModelInfo, requested: int | None) -> int:
    return min(requested or min(DEFAULT_MAX_OUTPUT, model.max_output_tokens), model.max_output_tokens)


def openai_params(request: GenerateRequest, model: ModelInfo) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create`, message list excluded."""
    params: dict[str, Any] = {model.max_tokens_param: max_output_for(model, request.max_output_tokens)}
    extra_body: dict[str, Any] = {}
    temperature = temperature_for(model, request.temperature)
    if temperature is not None:
        params["temperature"] = temperature
    if model.thinking_style == "openai_effort":
        params["reasoning_effort"] = effort_for(model, request.thinking)
    elif model.thinking_style == "switch":  # GLM, and Kimi from K2.5 on: thinking on or off, nothing between
        extra_body["thinking"] = {"type": "disabled" if request.thinking == "off" else "enabled"}
    if extra_body:
        params["extra_body"] = extra_body
    return params


def anthropic_params(request: GenerateRequest, model: ModelInfo) -> dict[str, Any]:
    """Keyword arguments for `messages.create`, message list excluded."""
    thinking_on = model.thinking_style == "anthropic_budget" and request.thinking != "off"
    budget = _BUDGET.get(request.thinking, 0) if thinking_on else 0
    # The thinking budget counts against max_tokens, so room for the answer is added on top of it.
    wanted = request.max_output_tokens or (budget + min(DEFAULT_MAX_OUTPUT, model.max_output_tokens))
    max_tokens = min(wanted, model.max_output_tokens)
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if request.system:
        params["system"] = request.system
    if model.thinking_style == "anthropic_adaptive" and request.thinking != "off":
        # Claude 4.6 on: the model decides how long to think, the effort steers it (4.7 refuses budget_tokens).
        params["thinking"] = {"type": "adaptive"}
        params["extra_body"] = {"output_config": {"effort": _ADAPTIVE_EFFORT[request.thinking]}}
    elif thinking_on and max_tokens > 2048:
        params["thinking"] = {"type": "enabled", "budget_tokens": min(budget, max_tokens - 1024)}
    else:
        # Anthropic requires the default temperature while extended thinking is on. The SDK no longer
        # names the parameter, so it travels in the body for the models that still accept it.
        temperature = temperature_for(model, request.temperature)
        if temperature is not None:
            params["extra_body"] = {"temperature": temperature}
    return params


UNDECLARED_REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where OpenAI-compatible servers put a model's reasoning (vLLM, LM Studio, DeepSeek: `reasoning_content`; Ollama,
newer vLLM: `reasoning`), read for a model whose entry names no field: a Custom endpoint's reasoning model streamed
its thinking unread, so a cut call was charged its prompt alone."""


def reasoning_from(model: ModelInfo, payload: Any) -> str | None:
    """The reasoning text a vendor returns beside the answer (Kimi and GLM: `reasoning_content`)."""
    if payload is None:
        return None
    for field in (model.reasoning_field,) if model.reasoning_field else UNDECLARED_REASONING_FIELDS:
        if isinstance(payload, dict):  # a message as JSON
            value = payload.get(field)
        else:
            value = getattr(payload, field, None)
            if value is None:
                value = (getattr(payload, "model_extra", None) or {}).get(field)
        if isinstance(value, str) and value:
            return value
    return None
