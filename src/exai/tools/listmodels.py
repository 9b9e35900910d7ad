"""`listmodels`: every provider (configured or not, and how to enable it) and every usable model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from exai.provider_specs import PROVIDER_SPECS
from exai.tools.base import Tool, ToolContext, ToolInput, ToolResult


class ListModelsInput(ToolInput):
    pass


class ProviderOut(BaseModel):
    name: str
    title: str
    configured: bool
    enable_with: list[str]
    base_url: str | None = None
    models: int
    not_listed: list[str] = []
    """Catalogued models this vendor's own listing does not name: never routed to."""


class ModelOut(BaseModel):
    name: str
    provider: str
    aliases: list[str]
    capabilities: dict[str, Any]
    breaker: str
    listed_by_vendor: bool | None = None
    """Whether the vendor's own model listing names it; null until the listing arrives (or without one)."""


class ListModelsOutput(BaseModel):
    providers: list[ProviderOut]
    models: list[ModelOut]


class ListModelsTool(Tool[ListModelsInput, ListModelsOutput]):
    name = "listmodels"
    title = "List models"
    description = "List providers (configured or not, with the variables that enable them) and usable models."
    input_model = ListModelsInput
    output_model = ListModelsOutput

    async def run(self, args: ListModelsInput, ctx: ToolContext) -> ToolResult[ListModelsOutput]:
        router = ctx.router
        available = sorted(router.available_models(), key=lambda m: (m.provider, -m.intelligence, m.name))
        providers = []
        for name, spec in PROVIDER_SPECS.items():
            config = router.configs[name]
            enable = list(spec.key_env if spec.key_required else spec.url_envs)  # a model list alone enables nothing
            providers.append(
                ProviderOut(
                    name=name,
                    title=spec.title,
                    configured=config.enabled,
                    enable_with=enable,
                    base_url=config.base_url,
                    models=sum(1 for m in available if m.provider == name),
                    not_listed=sorted(
                        m.name
                        for m in router.catalogue.models.values()
                        if m.provider == name and router.vendor_lists(m) is False
                    ),
                )
            )
        models = [
            ModelOut(
                name=m.name,
                provider=m.provider,
                aliases=m.aliases,
                capabilities=m.capabilities(),
                breaker=router.breaker_state(m, ctx.tenant),  # as this tenant meets it
                listed_by_vendor=router.vendor_lists(m),
            )
            for m in available
        ]
        lines = []
        for p in providers:
            state = f"{p.models} models" if p.configured else f"not configured (set {' or '.join(p.enable_with)})"
            lines.append(f"{p.title} [{p.name}]: {state}")
            if p.not_listed:
                lines.append(f"  not listed by the vendor (not used): {', '.join(p.not_listed)}")
        for m in models:
            caps = m.capabilities
            flags = ", ".join(k for k in ("images", "thinking") if caps[k])
            alias = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
            lines.append(
                f"  {m.provider}/{m.name}{alias}: context {caps['context_window']:,}"
                + (f", {flags}" if flags else "")
                + (f", breaker {m.breaker}" if m.breaker != "closed" else "")
            )
        return ToolResult(text="\n".join(lines), data=ListModelsOutput(providers=providers, models=models))
