"""Every configuration mistake stops `exai serve` / `exai doctor` with short lines: where, what, the fix; exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import run_exai

CUSTOM = {"CUSTOM_API_URL": "http://127.0.0.1:9/v1", "CUSTOM_MODELS": "m"}
CASES: dict[str, tuple[dict[str, str], str, str]] = {
    # case: (environment, where the report must point, a word of what is wrong)
    "tenant limits not json": ({"EXAI_TENANT_LIMITS": "{bad"}, "EXAI_TENANT_LIMITS", "not valid JSON"),
    "tenant limits unknown key": ({"EXAI_TENANT_LIMITS": '{"alice": {"rpm": 5}}'}, "EXAI_TENANT_LIMITS", "'rpm'"),
    "api keys bad entry": ({"EXAI_API_KEYS": "abc:def"}, "EXAI_API_KEYS", "sha256hex:tenant"),
    "custom url": ({"CUSTOM_API_URL": "not-a-url"}, "CUSTOM_API_URL", "http://"),
    "openai url": ({"OPENAI_BASE_URL": "ftp://x"}, "OPENAI_BASE_URL", "http://"),
    "missing config file": ({"EXAI_CONFIG_FILE": "missing.toml"}, "EXAI_CONFIG_FILE", "does not exist"),
    "toml syntax": ({"EXAI_CONFIG_FILE": "broken.toml"}, "broken.toml:2", "not valid TOML"),
    "toml unknown key": ({"EXAI_CONFIG_FILE": "unknown.toml"}, "unknown.toml:3", "'rate_limit_rmp'"),
    "toml bad value": ({"EXAI_CONFIG_FILE": "value.toml"}, "value.toml:2", "65535"),
    "database url": ({"EXAI_DATABASE_URL": "mysql://u:hunter2@h/db"}, "EXAI_DATABASE_URL", "postgresql://"),
    # written for /var/lib/exai.db, it made a database under each directory the server was started in
    "sqlite path": ({"EXAI_DATABASE_URL": "sqlite:///var/lib/exai.db"}, "EXAI_DATABASE_URL", "sqlite:////var/lib"),
    # values valid alone that contradict each other
    "attempt beyond deadline": (
        {"EXAI_ATTEMPT_TIMEOUT_SECONDS": "700"},
        "EXAI_ATTEMPT_TIMEOUT_SECONDS",
        "above EXAI_CALL_DEADLINE_SECONDS (600)",
    ),
    "thinking beyond deadline": (
        {"EXAI_THINKING_TIMEOUT_SECONDS": "900"},
        "EXAI_THINKING_TIMEOUT_SECONDS",
        "above EXAI_CALL_DEADLINE_SECONDS (600)",
    ),
    "retry delays": (
        {"EXAI_RETRY_BASE_DELAY_SECONDS": "5", "EXAI_RETRY_MAX_DELAY_SECONDS": "2"},
        "EXAI_RETRY_BASE_DELAY_SECONDS",
        "above EXAI_RETRY_MAX_DELAY_SECONDS (2)",
    ),
    "task ttl below deadline": (
        {"EXAI_TASK_TTL_SECONDS": "60"},
        "EXAI_TASK_TTL_SECONDS",
        "below EXAI_CALL_DEADLINE_SECONDS (600)",
    ),
}
FILES = {
    "broken.toml": 'log_level = "INFO"\nhost = "127.0.0.1\n',
    "unknown.toml": 'log_level = "INFO"\n\nrate_limit_rmp = 5\n',
    "value.toml": "# the daemon's port\nport = 99999\n",
}


@pytest.mark.parametrize("command", ["serve", "doctor"])
@pytest.mark.parametrize("case", list(CASES))
def test_configuration_mistake_is_reported_in_two_lines(case: str, command: str, tmp_path: Path) -> None:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    env, where, what = CASES[case]
    result = run_exai([command], {**CUSTOM, **env}, cwd=tmp_path)
    report = result.stdout + result.stderr
    assert result.returncode == 2, report
    assert "Traceback" not in report and "hunter2" not in report
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, report
    assert lines[0].startswith(f"{where}: ") and what in lines[0], report
    assert lines[1].startswith("  fix: "), report
    assert "EXAI_CUSTOM_API_URL" not in report and "EXAI_OPENAI_BASE_URL" not in report


def test_several_mistakes_are_reported_together(tmp_path: Path) -> None:
    result = run_exai(["doctor"], {**CUSTOM, "EXAI_PORT": "x", "KIMI_BASE_URL": "ftp://x"}, cwd=tmp_path)
    assert result.returncode == 2
    named = sorted(line.split(":")[0] for line in result.stderr.splitlines() if not line.startswith(" "))
    assert named == ["EXAI_PORT", "KIMI_BASE_URL"]


@pytest.mark.slow  # one of the slowest outside daemon tests (doctor probes, CLI processes)
def test_valid_file_settings_apply_and_env_wins(tmp_path: Path) -> None:
    (tmp_path / "exai.toml").write_text('CUSTOM_MODELS = "from-file"\n[tenant_limits.alice]\nconcurrent = 3\n')
    shown = run_exai(["models"], {"CUSTOM_API_URL": "http://127.0.0.1:9/v1"}, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "from-file" in shown.stdout
    overridden = run_exai(["models"], {**CUSTOM}, cwd=tmp_path)
    assert overridden.returncode == 0 and "from-file" not in overridden.stdout
    # piped, the notes beside the table are whole lines too (they wrapped at 80 columns, mid-sentence)
    unset = next(line for line in shown.stderr.splitlines() if line.startswith("ZhipuAI"))
    assert unset.endswith("ZAI_API_KEY)"), shown.stderr


def test_secret_urls_stay_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    from exai.config import load_settings, secret

    monkeypatch.setenv("EXAI_DATABASE_URL", "postgresql://u:pg-hunter2@127.0.0.1/test")
    monkeypatch.setenv("EXAI_REDIS_URL", "redis://:redis-hunter2@127.0.0.1:6379/0")
    monkeypatch.setenv("EXAI_ALERT_WEBHOOK_URL", "https://hooks.example/hook-hunter2")
    settings = load_settings()
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "hunter2" not in shown
    assert secret(settings.database_url) == "postgresql://u:pg-hunter2@127.0.0.1/test"


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (
            '[models."local-reasoner"]\nprovider = "custom"\nthinkng_style = "native"\n'
            "context_window = 65536\nmax_output_tokens = 8192\n",
            "thinkng_style: unknown key (did you mean thinking_style?)",
        ),
        ('[model."sim-fast"]\nprovider = "custom"\n', "unknown table(s): model"),
        ("[defaults]\nstreamng = false\n", "streamng: unknown key (did you mean streaming?)"),
    ],
    ids=["misspelt key", "misspelt table", "misspelt default"],
)
def test_a_models_file_with_a_misspelt_key_or_table_is_refused(text: str, what: str, tmp_path: Path) -> None:
    """A misspelt key or table in EXAI_MODELS_FILE was ignored without a word: the model ran without what the
    entry said (a reasoning model cut by the attempt's limit, say), and nothing told why."""
    (tmp_path / "models.toml").write_text(text)
    for command in ("serve", "doctor"):
        env = {**CUSTOM, "EXAI_MODELS_FILE": "models.toml", "EXAI_PORT": str(free_port())}  # serve binds first
        result = run_exai([command], env, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 2, result.stdout + result.stderr
        assert "models.toml" in lines[0] and what in lines[0] and lines[1].startswith("  fix: "), lines
