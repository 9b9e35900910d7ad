"""The Anthropic Messages wire API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from exai.providers.base import CallOptions, UpstreamError, collect_stream, reading, sending
from exai.providers.catalogue import ModelInfo
from exai.providers.quirks import anthropic_params
from exai.providers.types import DeltaCallback, GenerateRequest, GenerateResponse, Message, StreamChunk, Usage


def _image(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content(message: Message) -> Any:
    if not message.images:
        return message.content
    return [{"type": "text", "text": message.content}, *(_image(i.url) for i in message.images)]


def anthropic_usage(raw: Any) -> Usage:
    """Anthropic counts input read from or written to its cache apart from `input_tokens`; ours includes them."""
    usage: dict[str, Any] = raw if isinstance(raw, dict) else raw.model_dump()
    cached = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return Usage(
        input_tokens=(usage.get("input_tokens") or 0) + cached + written,
        output_tokens=usage.get("output_tokens") or 0,
        cached_input_tokens=cached,
    )


def _messages(request: GenerateRequest) -> list[dict[str, Any]]:
    return [{"role": m.role, "content": _content(m)} for m in request.messages]


class AnthropicProvider:
    """The Anthropic API, or anything that speaks it. SDK retries off."""

    def __init__(self, name: str, base_url: str, api_key: str | None) -> None:
        self.name = name
        self._client = anthropic.AsyncAnthropic(api_key=api_key or "not-needed", base_url=base_url, max_retries=0)

    async def generate(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions, on_delta: DeltaCallback | None = None
    ) -> GenerateResponse:
        if on_delta is not None and model.streaming:
            return await collect_stream(self, request, model, options, on_delta)
        started = time.perf_counter()
        with sending(anthropic, self.name):
            message = await self._client.messages.create(
                model=model.name,
                messages=_messages(request),  # type: ignore[arg-type]
                timeout=options.transport_timeout,
                extra_headers=dict(options.headers),
                **anthropic_params(request, model),
            )
        with reading(anthropic):
            text = "".join(block.text for block in message.content if block.type == "text")
            thinking = "".join(block.thinking for block in message.content if block.type == "thinking")
            usage = anthropic_usage(message.usage)
        if message.stop_reason == "refusal":
            raise UpstreamError("content_filter", "upstream refused to answer")
        return GenerateResponse(
            text=text,
            reasoning=thinking or None,
            usage=usage,
            finish_reason=message.stop_reason,
            model=model.name,
            provider=self.name,
            upstream_latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def stream(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions
    ) -> AsyncIterator[StreamChunk]:
        started = Usage()
        finished = False
        with sending(anthropic, self.name):
            stream = await self._client.messages.create(
                model=model.name,
                messages=_messages(request),  # type: ignore[arg-type]
                stream=True,
                timeout=options.transport_timeout,
                extra_headers=dict(options.headers),
                **anthropic_params(request, model),
            )
        # `stream=True` picks the streaming overload, but the parameters spread after it hide that from the checker.
        assert isinstance(stream, anthropic.AsyncStream)
        with reading(anthropic):
            async with stream:
                async for event in stream:
                    if event.type == "message_start":
                        started = anthropic_usage(event.message.usage)
                    elif event.type == "content_block_delta":
                        if event.delta.type == "text_delta":
                            yield StreamChunk(text=event.delta.text)
                        elif event.delta.type == "thinking_delta":
                            yield StreamChunk(reasoning=event.delta.thinking)
                    elif event.type == "message_delta":
                        if event.delta.stop_reason == "refusal":
                            raise UpstreamError("content_filter", "upstream refused to answer")
                        yield StreamChunk(
                            usage=started.model_copy(update={"output_tokens": event.usage.output_tokens}),
                            finish_reason=event.delta.stop_reason,
                        )
                    elif event.type == "message_stop":
                        finished = True
        if not finished:
            raise UpstreamError("connection", "upstream stream ended before the answer was complete")

    async def list_models(self, timeout: float) -> list[str]:
        with sending(anthropic, self.name):
            page = await self._client.models.list(timeout=timeout)
        with reading(anthropic):
            return [model.id async for model in page]

    async def close(self) -> None:
        await self._client.close()
