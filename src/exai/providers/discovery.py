"""The models of a local endpoint (Ollama, vLLM, LM Studio, llama.cpp), found from its own `/models` listing.

With `CUSTOM_API_URL` set and `CUSTOM_MODELS` unset, the daemon asks the endpoint at start which models it serves.
A model's context window comes from the listing's metadata where the server gives one (vLLM's `max_model_len`,
LM Studio's `max_context_length`, OpenRouter-style `context_length`), else from Ollama's `/api/show`, else it is
`CUSTOM_CONTEXT_WINDOW`. Everything here is async on the event loop; an endpoint that cannot be reached is a
warning and no models, never a crash (the daemon asks again in the background, see `retry.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from exai.config import Settings
from exai.observability.logging import get_logger
from exai.providers.catalogue import ModelInfo, custom_model_info
from exai.providers.router import Router

log = get_logger(__name__)
CONTEXT_KEYS = ("context_length", "context_window", "max_model_len", "max_context_length")
DISCOVERY_TIMEOUT = 5.0
_SHOW_CONCURRENCY = 4


class DiscoveryError(Exception):
    """The endpoint could not be asked, or answered something that is not a model listing."""


async def list_endpoint_models(
    base_url: str,
    api_key: str | None,
    default_context: int,
    timeout: float = DISCOVERY_TIMEOUT,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> list[ModelInfo]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx2.AsyncClient(timeout=timeout, headers=headers, transport=transport) as http:
        try:
            response = await http.get(f"{base_url}/models")
            response.raise_for_status()
            entries = [entry for entry in response.json()["data"] if isinstance(entry.get("id"), str)]
        except httpx2.HTTPStatusError as exc:
            raise DiscoveryError(f"{base_url}/models answered {exc.response.status_code}") from None
        except httpx2.HTTPError as exc:
            raise DiscoveryError(f"cannot reach {base_url}/models: {exc or type(exc).__name__}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DiscoveryError(f"{base_url}/models did not answer with an OpenAI-style model listing") from None
        slots = asyncio.Semaphore(_SHOW_CONCURRENCY)
        windows = await asyncio.gather(*(_context_window(http, base_url, entry, slots) for entry in entries))
    return [
        custom_model_info(entry["id"], window or default_context)
        for entry, window in zip(entries, windows, strict=True)
    ]


async def _context_window(
    http: httpx2.AsyncClient, base_url: str, entry: dict[str, Any], slots: asyncio.Semaphore
) -> int | None:
    for source in (entry, entry.get("meta") or {}):
        for key in (*CONTEXT_KEYS, "n_ctx_train"):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and value > 0:
                return value
    async with slots:
        return await _ollama_context_window(http, base_url, entry["id"])


async def _ollama_context_window(http: httpx2.AsyncClient, base_url: str, model: str) -> int | None:
    """Ollama's native `/api/show` gives `<architecture>.context_length`; other servers answer 404."""
    root = base_url.removesuffix("/v1")
    try:
        response = await http.post(f"{root}/api/show", json={"model": model})
        info = response.json().get("model_info") if response.status_code == 200 else None
    except (httpx2.HTTPError, ValueError, AttributeError):
        return None
    if not isinstance(info, dict):
        return None
    windows = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int) and v > 0]
    return windows[0] if windows else None


def wants_discovery(settings: Settings, router: Router) -> bool:
    """CUSTOM_API_URL is set and CUSTOM_MODELS is not: the endpoint's own listing names the models."""
    return "custom" in router.providers and not settings.custom_models and bool(router.configs["custom"].base_url)


async def discover_custom_models(settings: Settings, router: Router, *, quiet: bool = False) -> str | None:
    """Add the endpoint's models to the catalogue and the router; the problem when none could be added.

    `quiet` logs a failure at debug level only: a retry that fails again has nothing new to say."""
    if not wants_discovery(settings, router):
        return None
    config = router.configs["custom"]
    try:
        found = await list_endpoint_models(config.base_url, config.api_key, settings.custom_context_window)
    except DiscoveryError as exc:
        (log.debug if quiet else log.warning)(
            "custom_models_not_discovered",
            error=str(exc),
            remedy="start the server at CUSTOM_API_URL, or name its models with CUSTOM_MODELS",
        )
        return f"the CUSTOM_API_URL endpoint was unreachable ({exc})"
    if not found:
        (log.debug if quiet else log.warning)(
            "custom_endpoint_lists_no_models", remedy="load or pull a model on the server at CUSTOM_API_URL"
        )
        return f"the CUSTOM_API_URL endpoint ({config.base_url}) listed no models"
    router.catalogue.add(found)
    router.refresh_available()
    log.info("custom_models_discovered", models=[m.name for m in found])
    return None
