"""The OpenAI-compatible chat completions wire API (OpenAI, Kimi, GLM, OpenRouter, Ollama, vLLM ...)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import openai

from exai.providers.base import CallOptions, UpstreamError, collect_stream, reading, sending
from exai.providers.catalogue import ModelInfo
from exai.providers.quirks import openai_params, reasoning_from
from exai.providers.types import DeltaCallback, GenerateRequest, GenerateResponse, Message, StreamChunk, Usage


def _content(message: Message) -> Any:
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts.extend({"type": "image_url", "image_url": {"url": image.url}} for image in message.images)
    return parts


def _messages(request: GenerateRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": m.role, "content": _content(m)} for m in request.messages)
    return messages


def _usage(raw: Any) -> Usage | None:
    if raw is None:
        return None
    return Usage(input_tokens=raw.prompt_tokens or 0, output_tokens=raw.completion_tokens or 0)


class OpenAICompatibleProvider:
    """One OpenAI-compatible endpoint. The SDK's own retries are off: the router is the only retry loop."""

    def __init__(self, name: str, base_url: str, api_key: str | None) -> None:
        self.name = name
        self._client = openai.AsyncOpenAI(api_key=api_key or "not-needed", base_url=base_url, max_retries=0)

    async def generate(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions, on_delta: DeltaCallback | None = None
    ) -> GenerateResponse:
        if on_delta is not None and model.streaming:
            return await collect_stream(self, request, model, options, on_delta)
        started = time.perf_counter()
        with sending(openai, self.name):
            completion = await self._client.chat.completions.create(
                model=model.name,
                messages=_messages(request),  # type: ignore[arg-type]
                timeout=options.timeout,
                extra_headers=dict(options.headers),
                **openai_params(request, model),
            )
        with reading(openai):
            if not completion.choices:
                raise UpstreamError("server", "upstream answered with no choices")
            choice = completion.choices[0]
            if choice.finish_reason == "content_filter":
                raise UpstreamError("content_filter", "upstream content filter stopped the answer")
            return GenerateResponse(
                text=choice.message.content or "",
                reasoning=reasoning_from(model, choice.message),
                usage=_usage(completion.usage) or Usage(),
                finish_reason=choice.finish_reason,
                model=model.name,
                provider=self.name,
                upstream_latency_ms=(time.perf_counter() - started) * 1000,
            )

    async def stream(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions
    ) -> AsyncIterator[StreamChunk]:
        finished = False
        with sending(openai, self.name):
            stream = await self._client.chat.completions.create(
                model=model.name,
                messages=_messages(request),  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                timeout=options.timeout,
                extra_headers=dict(options.headers),
                **openai_params(request, model),
            )
        with reading(openai):
            async with stream:
                async for event in stream:
                    chunk = StreamChunk(usage=_usage(event.usage))
                    if event.choices:
                        choice = event.choices[0]
                        chunk.text = choice.delta.content or ""
                        chunk.reasoning = reasoning_from(model, choice.delta) or ""
                        if choice.finish_reason:
                            if choice.finish_reason == "content_filter":
                                raise UpstreamError("content_filter", "upstream content filter stopped the answer")
                            chunk.finish_reason = choice.finish_reason
                            finished = True
                    yield chunk
        if not finished:
            raise UpstreamError("connection", "upstream stream ended before the answer was complete")

    async def list_models(self, timeout: float) -> list[str]:
        with sending(openai, self.name):
            page = await self._client.models.list(timeout=timeout)
        with reading(openai):
            return [model.id async for model in page]

    async def close(self) -> None:
        await self._client.close()
