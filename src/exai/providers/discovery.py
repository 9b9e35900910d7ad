"""The models of a local endpoint (Ollama, vLLM, LM Studio, llama.cpp), found from its own `/models` listing.

With `CUSTOM_API_URL` set and `CUSTOM_MODELS` unset, the daemon asks the endpoint at start which models it serves.
A model's context window comes from the listing's metadata where the server gives one (vLLM's `max_model_len`,
LM Studio's `max_context_length`, OpenRouter-style `context_length`), else from Ollama's `/api/show`, else it is
`CUSTOM_CONTEXT_WINDOW`. Everything here is async on the event loop; an endpoint that cannot be reached is a
warning and no models, never a crash (the daemon asks again in the background, see `rediscovery.py`).
The whole discovery has one deadline (EXAI_MODEL_LISTING_TIMEOUT_SECONDS) and the listing a size cap
(EXAI_MODEL_LISTING_MAX_BYTES): an endpoint that trickles or floods is a failed attempt, never a stuck daemon.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from exai.config import Settings
from exai.observability.logging import get_logger, redact
from exai.providers.bounded import FetchError, get_json_bounded
from exai.providers.catalogue import ModelInfo, custom_model_info
from exai.providers.model_ids import acceptable_model_id
from exai.providers.router import Router

log = get_logger(__name__)
CONTEXT_KEYS = ("context_length", "context_window", "max_model_len", "max_context_length")
DISCOVERY_TIMEOUT = 10.0
DISCOVERY_MAX_BYTES = 4_000_000
MAX_MODELS = 1000
"""Models taken from one listing; the rest are ignored (with a warning)."""
MAX_SHOW_REQUESTS = 32
"""Ollama `/api/show` requests per discovery; models past these get CUSTOM_CONTEXT_WINDOW."""
_SHOW_CONCURRENCY = 4
SHOW_TIMEOUT = 5.0
SHOW_MAX_BYTES = 1_000_000


class DiscoveryError(Exception):
    """The endpoint could not be asked, or answered something that is not a model listing. Its message names the
    endpoint, whose URL may carry a password: it is redacted here, where every such message is made."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


async def list_endpoint_models(
    base_url: str,
    api_key: str | None,
    default_context: int,
    timeout: float = DISCOVERY_TIMEOUT,
    transport: httpx2.AsyncBaseTransport | None = None,
    max_bytes: int = DISCOVERY_MAX_BYTES,
) -> list[ModelInfo]:
    """The endpoint's models, all within `timeout` seconds (listing and `/api/show` together)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with asyncio.timeout(timeout):
            return await _list(base_url, headers, default_context, timeout, transport, max_bytes)
    except TimeoutError:
        raise DiscoveryError(f"{base_url}/models: no complete answer within {timeout:g} s") from None


async def _list(
    base_url: str,
    headers: dict[str, str],
    default_context: int,
    timeout: float,
    transport: httpx2.AsyncBaseTransport | None,
    max_bytes: int,
) -> list[ModelInfo]:
    async with httpx2.AsyncClient(timeout=timeout, headers=headers, transport=transport) as http:
        try:
            listing = await get_json_bounded(
                http, f"{base_url}/models", headers=headers, deadline=timeout, max_bytes=max_bytes
            )
            entries = [entry for entry in listing["data"] if isinstance(entry, dict)]
        except FetchError as exc:
            raise DiscoveryError(str(exc)) from None
        except (KeyError, TypeError):
            raise DiscoveryError(f"{base_url}/models did not answer with an OpenAI-style model listing") from None
        refused = [entry for entry in entries if not acceptable_model_id(entry.get("id"))]
        entries = [entry for entry in entries if acceptable_model_id(entry.get("id"))]
        if refused:
            log.warning("custom_model_ids_refused", refused=len(refused), reason="not a printable model id")
        if len(entries) > MAX_MODELS:
            log.warning("custom_models_truncated", listed=len(entries), kept=MAX_MODELS)
            entries = entries[:MAX_MODELS]
        show = _ShowBudget(asyncio.Semaphore(_SHOW_CONCURRENCY), MAX_SHOW_REQUESTS)
        windows = await asyncio.gather(*(_context_window(http, base_url, entry, show) for entry in entries))
    return [
        custom_model_info(entry["id"], window or default_context)
        for entry, window in zip(entries, windows, strict=True)
    ]


class _ShowBudget:
    """At most `left` `/api/show` requests, `slots` of them at a time."""

    def __init__(self, slots: asyncio.Semaphore, left: int) -> None:
        self.slots = slots
        self.left = left


async def _context_window(
    http: httpx2.AsyncClient, base_url: str, entry: dict[str, Any], show: _ShowBudget
) -> int | None:
    for source in (entry, entry.get("meta") or {}):
        for key in (*CONTEXT_KEYS, "n_ctx_train"):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, int) and value > 0:
                return value
    if show.left <= 0:
        return None
    show.left -= 1
    async with show.slots:
        return await _ollama_context_window(http, base_url, entry["id"])


async def _ollama_context_window(http: httpx2.AsyncClient, base_url: str, model: str) -> int | None:
    """Ollama's native `/api/show` gives `<architecture>.context_length`; other servers answer 404."""
    root = base_url.removesuffix("/v1")
    try:
        answer = await get_json_bounded(
            http,
            f"{root}/api/show",
            headers={},
            deadline=SHOW_TIMEOUT,
            max_bytes=SHOW_MAX_BYTES,
            post_json={"model": model},
        )
    except FetchError:
        return None
    info = answer.get("model_info") if isinstance(answer, dict) else None
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
    if not config.base_url:
        return None
    try:
        found = await list_endpoint_models(
            config.base_url,
            config.api_key,
            settings.custom_context_window,
            timeout=settings.model_listing_timeout_seconds,
            max_bytes=settings.model_listing_max_bytes,
        )
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
        return f"the CUSTOM_API_URL endpoint ({redact(config.base_url)}) listed no models"
    router.catalogue.add(found, configured=router.providers)
    router.refresh_available()
    log.info("custom_models_discovered", models=[m.name for m in found])
    return None
