"""The composition root: builds every service once from the settings and hands them down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exai.config import Settings
from exai.observability.stats import CallStats
from exai.providers.anthropic import AnthropicProvider
from exai.providers.base import Provider
from exai.providers.catalogue import Catalogue
from exai.providers.openai_compatible import OpenAICompatibleProvider
from exai.providers.router import Router
from exai.tools import enabled_tools
from exai.tools.base import Tool

WIRES = {"openai": OpenAICompatibleProvider, "anthropic": AnthropicProvider}


@dataclass
class Services:
    settings: Settings
    catalogue: Catalogue
    router: Router
    stats: CallStats
    tools: list[Tool[Any, Any]]

    @classmethod
    def build(cls, settings: Settings) -> Services:
        catalogue = Catalogue.load(settings.models_file, settings.custom_models)
        configs = settings.providers()
        providers: dict[str, Provider] = {}
        for name, config in configs.items():
            if config.enabled and config.base_url:
                providers[name] = WIRES[config.spec.wire](name, config.base_url, config.api_key)
        router = Router(settings, catalogue, providers, configs)
        return cls(settings, catalogue, router, CallStats(), enabled_tools(settings.disabled_tools))

    async def close(self) -> None:
        await self.router.close()
