"""The built-in providers, as data: which wire API each speaks, where, and which variables enable it.

A leaf module (it imports nothing of exai): configuration reads it to name the variables, providers to build clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Wire = Literal["openai", "anthropic"]
DEFAULT_CUSTOM_CONTEXT_WINDOW = 32768
"""A Custom model's context window when neither CUSTOM_MODELS nor the endpoint says (CUSTOM_CONTEXT_WINDOW)."""


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    title: str
    wire: Wire
    default_base_url: str | None
    key_env: tuple[str, ...]
    key_required: bool = True
    url_env: str | None = None
    """The variable that sets the base URL, when it is not `<NAME>_BASE_URL`."""
    url_aliases: tuple[str, ...] = ()
    """Older names of that variable, still read."""

    @property
    def env_prefix(self) -> str:
        return self.name.upper()

    @property
    def base_url_env(self) -> str:
        return self.url_env or f"{self.env_prefix}_BASE_URL"

    @property
    def url_envs(self) -> tuple[str, ...]:
        return (self.base_url_env, *self.url_aliases)

    @property
    def allowed_env(self) -> str:
        return f"{self.env_prefix}_ALLOWED_MODELS"

    @property
    def denied_env(self) -> str:
        return f"{self.env_prefix}_DENIED_MODELS"


PROVIDER_SPECS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            "kimi", "Moonshot Kimi", "openai", "https://api.moonshot.ai/v1", ("KIMI_API_KEY", "MOONSHOT_API_KEY")
        ),
        ProviderSpec(
            "glm",
            "ZhipuAI GLM / Z.ai",
            "openai",
            "https://api.z.ai/api/paas/v4",
            ("GLM_API_KEY", "ZHIPUAI_API_KEY", "ZAI_API_KEY"),
        ),
        ProviderSpec("openai", "OpenAI", "openai", "https://api.openai.com/v1", ("OPENAI_API_KEY",)),
        ProviderSpec("anthropic", "Anthropic", "anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",)),
        ProviderSpec("openrouter", "OpenRouter", "openai", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",)),
        # Custom is enabled by its URL; the key is optional (Ollama, vLLM and LM Studio need none).
        ProviderSpec(
            "custom",
            "Custom OpenAI-compatible",
            "openai",
            None,
            ("CUSTOM_API_KEY",),
            key_required=False,
            url_env="CUSTOM_API_URL",
            url_aliases=("CUSTOM_BASE_URL",),
        ),
    )
}
