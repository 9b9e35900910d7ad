"""Settings are defined once: renamed settings keep their old names with a warning, contradictions stop start-up,
settings without effect are said, and every setting is in the README's settings table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exai.config import RENAMED, load_settings
from exai.config_checks import env_names, setting_warnings
from exai.config_problems import CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE, ConfigError
from exai.provider_specs import PROVIDER_SPECS

RENAMED_VALUES = {
    # old variable: (a value, the field that must hold it)
    "EXAI_RETRY_BASE_DELAY": ("0.25", "retry_base_delay_seconds"),
    "EXAI_RETRY_MAX_DELAY": ("9.5", "retry_max_delay_seconds"),
    "EXAI_MAX_FILES_BYTES": ("123456", "max_file_bytes_per_call"),
}


def _exai(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exai", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_every_renamed_setting_is_covered() -> None:
    assert set(RENAMED_VALUES) == set(RENAMED)


@pytest.mark.parametrize("old", list(RENAMED_VALUES))
def test_an_old_name_still_sets_the_renamed_setting_with_a_warning(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    value, field = RENAMED_VALUES[old]
    monkeypatch.setenv(old, value)
    settings = load_settings()
    assert getattr(settings, field) == float(value)
    new = env_names(field)[0]
    warnings = setting_warnings(settings)
    assert any(old in w and "deprecated" in w and new in w for w in warnings), warnings
    assert not any("not an EX-AI setting" in w for w in warnings), warnings


def test_the_new_name_wins_over_the_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXAI_RETRY_MAX_DELAY", "3")
    monkeypatch.setenv("EXAI_RETRY_MAX_DELAY_SECONDS", "4")
    assert load_settings().retry_max_delay_seconds == 4


def test_an_old_key_in_the_toml_file_still_applies_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "exai.toml").write_text("retry_base_delay = 0.125\nmax_files_bytes = 4096\n")
    settings = load_settings()
    assert (settings.retry_base_delay_seconds, settings.max_file_bytes_per_call) == (0.125, 4096)
    warnings = setting_warnings(settings)
    assert any("retry_base_delay (in exai.toml)" in w and "retry_base_delay_seconds" in w for w in warnings)


def test_a_variable_name_in_the_toml_file_applies(tmp_path: Path) -> None:
    """The file accepts variable names as keys; they set the setting instead of being silently dropped."""
    (tmp_path / "exai.toml").write_text("EXAI_PORT = 9123\nEXAI_RETRY_MAX_DELAY_SECONDS = 2\n")
    settings = load_settings()
    assert (settings.port, settings.retry_max_delay_seconds) == (9123, 2)


def test_the_real_process_warns_about_an_old_name(tmp_path: Path) -> None:
    result = _exai(["models"], {"EXAI_RETRY_BASE_DELAY": "0.2"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "warning: EXAI_RETRY_BASE_DELAY (in the environment) is deprecated and still read for now: "
        "rename it EXAI_RETRY_BASE_DELAY_SECONDS"
    ) in result.stderr


CONTRADICTIONS = {
    # what the user wrote: (where the report points, what it says, what the fix names)
    "attempt beyond deadline": (
        {"EXAI_ATTEMPT_TIMEOUT_SECONDS": "60", "EXAI_CALL_DEADLINE_SECONDS": "30"},
        "EXAI_ATTEMPT_TIMEOUT_SECONDS",
        "is 60, above EXAI_CALL_DEADLINE_SECONDS (30)",
    ),
    "retry base above max": (
        {"EXAI_RETRY_BASE_DELAY_SECONDS": "10"},
        "EXAI_RETRY_BASE_DELAY_SECONDS",
        "is 10, above EXAI_RETRY_MAX_DELAY_SECONDS (8)",
    ),
    "deadline beyond the task ttl": (
        {"EXAI_CALL_DEADLINE_SECONDS": "100000"},
        "EXAI_CALL_DEADLINE_SECONDS",
        "is 100000, above EXAI_TASK_TTL_SECONDS (86400)",
    ),
    "tenant share above the provider's slots": (
        {"EXAI_PROVIDER_CONCURRENCY": "4", "EXAI_PROVIDER_CONCURRENCY_PER_TENANT": "5"},
        "EXAI_PROVIDER_CONCURRENCY_PER_TENANT",
        "is 5, above EXAI_PROVIDER_CONCURRENCY (4)",
    ),
    "file above the per-call cap": (
        {"EXAI_MAX_FILE_BYTES": "5000", "EXAI_MAX_FILE_BYTES_PER_CALL": "4000"},
        "EXAI_MAX_FILE_BYTES",
        "is 5000, above EXAI_MAX_FILE_BYTES_PER_CALL (4000)",
    ),
}


@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_contradicting_settings_are_one_problem_with_the_fix(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env, where, what = CONTRADICTIONS[case]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    (problem,) = raised.value.problems
    assert problem.where == where and problem.what.startswith(what), problem
    assert problem.fix.startswith(f"set {where} to at most"), problem


def test_a_default_gives_way_to_a_written_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lowering the deadline (or the retry cap, or the provider's slots) alone is no contradiction: the defaults of
    the attempt timeout, the base delay and the tenant share are capped by it in the code, as before."""
    monkeypatch.setenv("EXAI_CALL_DEADLINE_SECONDS", "1")
    monkeypatch.setenv("EXAI_RETRY_MAX_DELAY_SECONDS", "0.1")
    monkeypatch.setenv("EXAI_PROVIDER_CONCURRENCY", "1")
    monkeypatch.setenv("EXAI_MAX_FILE_BYTES_PER_CALL", "1000")
    settings = load_settings()
    assert settings.call_deadline_seconds == 1 and settings.attempt_timeout_seconds == 45


def test_a_contradiction_in_the_toml_file_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "exai.toml").write_text("# resilience\ncall_deadline_seconds = 30\nattempt_timeout_seconds = 40\n")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    (problem,) = raised.value.problems
    assert problem.where == "exai.toml:3", problem


def test_session_settings_in_stateless_mode_are_said_to_do_nothing(tmp_path: Path) -> None:
    env = {"EXAI_STATELESS_HTTP": "true", "EXAI_SESSION_IDLE_SECONDS": "30", "EXAI_MAX_SESSIONS_PER_TENANT": "4"}
    result = _exai(["models"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("EXAI_SESSION_IDLE_SECONDS", "EXAI_MAX_SESSIONS_PER_TENANT"):
        assert f"warning: {name} has no effect with EXAI_STATELESS_HTTP=true" in result.stderr, result.stderr
    with_sessions = _exai(["models"], {**env, "EXAI_STATELESS_HTTP": "false"}, tmp_path)
    assert with_sessions.returncode == 0 and "has no effect" not in with_sessions.stderr, with_sessions.stderr


def test_the_bridge_token_is_the_bridge_s_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from exai.config import Settings, load_bridge_settings, secret

    monkeypatch.setenv("EXAI_TOKEN", "bridge-token")
    assert "token" not in Settings.model_fields
    assert secret(load_bridge_settings().token) == "bridge-token"
    assert not any("EXAI_TOKEN" in w for w in setting_warnings(load_settings()))  # known, not a typo


README = Path(__file__).resolve().parent.parent / "README.md"
TABLE_TITLE = "Every setting"
DERIVED = {"data_dir", "max_connections", "max_connections_per_address", "fallback_chain"}
"""Settings whose default is worked out at start (a path, a sum, a chain): the table says how, not a value."""
UNITS = (" s", " ms", " bytes", " hours", " days")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _settings_table() -> dict[str, str]:
    """Each variable of the README's settings table with its default as written there."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_TITLE))
    end = next(i for i, line in enumerate(lines[start + 3 :], start + 3) if not line.startswith("|"))
    rows = [line for line in lines[start + 1 : end] if line.startswith("| `")]
    table: dict[str, str] = {}
    for row in rows:
        names_cell, default_cell = _cells(row)[:2]
        names = [name.strip().strip("`") for name in names_cell.split(" / ")]
        defaults = [part.strip() for part in default_cell.split(" / ")]
        assert len(defaults) in (1, len(names)), f"README row {names_cell}: one default, or one per variable"
        for number, name in enumerate(names):
            table[name] = defaults[number if len(defaults) > 1 else 0]
    return table


def _written(default: object) -> str:
    """A default as the table writes it."""
    if default is None or default == [] or default == {}:
        return "—"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}" if default < 1e6 else str(int(default))
    return str(default)


def _read(cell: str) -> str:
    text = cell.replace("`", "").replace(",", "")
    for unit in UNITS:
        text = text.removesuffix(unit)
    return text.strip()


def _expected() -> dict[str, tuple[str, str]]:
    """Every variable the table must list: its field and default. Provider keys and base URLs are in the
    providers table instead; their allowed and denied lists are one row for every provider."""
    from exai.config import SETTINGS_CLASSES

    expected: dict[str, tuple[str, str]] = {CONFIG_FILE_ENV: ("", DEFAULT_CONFIG_FILE)}  # where the others are read
    for cls in SETTINGS_CLASSES:
        for field, info in cls.model_fields.items():
            name = env_names(field)[0]
            provider, _, kind = field.partition("_")
            if kind in ("api_key", "base_url", "allowed_models", "denied_models") and provider in PROVIDER_SPECS:
                if kind in ("allowed_models", "denied_models"):
                    expected[f"<PROVIDER>_{kind.upper()}"] = (field, "—")
                continue
            default = info.get_default(call_default_factory=True)
            expected[name] = (field, _written(default))
    return expected


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    table, expected = _settings_table(), _expected()
    missing = sorted(set(expected) - set(table))
    unknown = sorted(set(table) - set(expected))
    different = sorted(
        f"{name}: README says {table[name]!r}, the default is {default!r}"
        for name, (field, default) in expected.items()
        if name in table and field not in DERIVED and _read(table[name]) != default
    )
    complaints = [f"missing from the README's settings table: {name}" for name in missing]
    complaints += [f"in the README's settings table but no setting (renamed or removed?): {name}" for name in unknown]
    assert not complaints + different, "\n".join(complaints + different)


def test_every_provider_is_in_the_readme_providers_table() -> None:
    text = README.read_text(encoding="utf-8")
    for spec in PROVIDER_SPECS.values():
        row = next((line for line in text.splitlines() if line.startswith(f"| {spec.title.split()[0]} ")), None)
        assert row is not None, f"no row for {spec.title} in the README's providers table"
        for name in (*spec.key_env, spec.base_url_env):
            assert f"`{name}`" in row, f"{name} is missing from the README's {spec.title} row"
        assert spec.default_base_url is None or f"`{spec.default_base_url}`" in row, spec.title


def test_the_env_example_as_shipped_starts_without_errors_or_warnings(tmp_path: Path) -> None:
    """`cp .env.example .env`, as the README's Compose steps say: its empty `EXAI_JWT_SECRET=`
    was a 0-character secret that stopped start-up, and compose's own variables were each "not an EX-AI setting"."""
    (tmp_path / ".env").write_text((Path(__file__).resolve().parent.parent / ".env.example").read_text())
    result = _exai(["models"], {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EXAI_JWT_SECRET" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert "not an EX-AI setting" not in result.stderr, result.stderr


def test_the_deployment_variables_are_the_ones_compose_and_deploy_read() -> None:
    """Names compose.yaml and deploy/ interpolate that no setting reads are exactly the ones the check passes over."""
    import re

    from exai.config import SETTINGS_CLASSES
    from exai.config_problems import DEPLOYMENT_VARIABLES

    root = Path(__file__).resolve().parent.parent
    texts = [(root / "compose.yaml").read_text(), *(p.read_text() for p in (root / "deploy").glob("*.sh"))]
    used = {name for text in texts for name in re.findall(r"\$\{(EXAI_[A-Z0-9_]+)", text)}
    fields = {field for cls in SETTINGS_CLASSES for field in cls.model_fields}
    settings = {name.upper() for field in fields for name in env_names(field)}
    assert used - settings == DEPLOYMENT_VARIABLES
