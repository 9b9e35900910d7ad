"""A provider whose wire implementation is imported when it is first needed, on a worker thread.

The anthropic SDK takes seconds to import (and the OpenAI wire's module pulls in httpx2's client); a stdio client
waits for start-up on every session. So start-up imports neither: each configured provider is a `LazyProvider`,
and the wire implementation is imported off the event loop (a ping or another call is never blocked by it), once:
by `import_later` a moment after start, or by the first call to need it if that comes sooner.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Protocol

from exai.provider_specs import Wire
from exai.providers.base import CallOptions, Provider
from exai.providers.catalogue import ModelInfo
from exai.providers.types import DeltaCallback, GenerateRequest, GenerateResponse, StreamChunk


class WireProvider(Protocol):
    """How a wire implementation is built: every class named in `WIRE_IMPLEMENTATIONS` takes exactly these."""

    def __call__(self, name: str, base_url: str, api_key: str | None) -> Provider: ...


WIRE_IMPLEMENTATIONS: dict[Wire, tuple[str, str]] = {
    "openai": ("exai.providers.openai_compatible", "OpenAICompatibleProvider"),
    "anthropic": ("exai.providers.anthropic", "AnthropicProvider"),
}

if TYPE_CHECKING:  # the type checker holds each implementation to the contract; at run time they load lazily
    from exai.providers.anthropic import AnthropicProvider
    from exai.providers.openai_compatible import OpenAICompatibleProvider

    _CHECKED: tuple[WireProvider, ...] = (OpenAICompatibleProvider, AnthropicProvider)


def wire_implementation(wire: Wire) -> WireProvider:
    module, name = WIRE_IMPLEMENTATIONS[wire]
    implementation: WireProvider = getattr(importlib.import_module(module), name)
    return implementation


def import_later(wires: Iterable[Wire], delay: float = 1.5) -> None:
    """Import the configured wires' SDKs on a background thread once start-up is over."""
    chosen = sorted(set(wires))
    if chosen:
        timer = threading.Timer(delay, lambda: [wire_implementation(wire) for wire in chosen])
        timer.name, timer.daemon = "exai-provider-import", True
        timer.start()


class LazyProvider:
    """Stands for one configured provider; builds the real one on first use."""

    def __init__(self, name: str, wire: Wire, base_url: str, api_key: str | None) -> None:
        self.name = name
        self.wire = wire
        self._base_url = base_url
        self._api_key = api_key
        self._real: Provider | None = None
        self._lock = asyncio.Lock()

    async def provider(self) -> Provider:
        if self._real is None:
            async with self._lock:
                if self._real is None:
                    implementation = await asyncio.to_thread(wire_implementation, self.wire)
                    self._real = implementation(self.name, self._base_url, self._api_key)
        return self._real

    async def generate(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions, on_delta: DeltaCallback | None = None
    ) -> GenerateResponse:
        return await (await self.provider()).generate(request, model, options, on_delta)

    async def stream(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions
    ) -> AsyncIterator[StreamChunk]:
        async for chunk in (await self.provider()).stream(request, model, options):
            yield chunk

    async def list_models(self, timeout: float) -> list[str]:
        return await (await self.provider()).list_models(timeout)

    async def close(self) -> None:
        if self._real is not None:
            await self._real.close()
