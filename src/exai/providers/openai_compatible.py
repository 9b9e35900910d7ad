"""The OpenAI-compatible chat completions wire API (OpenAI, Kimi, GLM, OpenRouter, Ollama, vLLM ...).

A non-streamed answer is one JSON POST, sent and read here with httpx2 directly: the openai SDK's request
transform, response models and bookkeeping were about a fifth of the daemon's CPU per `chat` call (py-spy,
bench/profile.py), more than all of our own steps together. Streaming and model listing use the SDK, on the
same connection pool. Failures are classified by `providers.base` either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai

from exai.providers.base import (
    CallOptions,
    UpstreamError,
    classify_response,
    collect_stream,
    error_in_body,
    reading,
    sending,
)
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


def usage_from(raw: Any) -> Usage | None:
    """Usage of the chat completions API, as JSON or as the SDK's object: cached input tokens sit in
    `prompt_tokens_details.cached_tokens` (OpenAI, GLM, OpenRouter) or `cached_tokens` (Moonshot), reasoning tokens
    in `completion_tokens_details.reasoning_tokens`."""
    if raw is None:
        return None
    usage: dict[str, Any] = raw if isinstance(raw, dict) else raw.model_dump()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
        cached_input_tokens=prompt_details.get("cached_tokens") or usage.get("cached_tokens") or 0,
        reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
    )


class OpenAICompatibleProvider:
    """One OpenAI-compatible endpoint. The SDK's own retries are off: the router is the only retry loop."""

    def __init__(self, name: str, base_url: str, api_key: str | None) -> None:
        self.name = name
        key = api_key or "not-needed"
        self._http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100))
        self._client = openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, http_client=self._http)
        self._completions_url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def generate(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions, on_delta: DeltaCallback | None = None
    ) -> GenerateResponse:
        if on_delta is not None and model.streaming:
            return await collect_stream(self, request, model, options, on_delta)
        started = time.perf_counter()
        with sending(openai, self.name):
            body = {"model": model.name, "messages": _messages(request), **openai_params(request, model)}
            body.update(body.pop("extra_body", {}))
            answer = await self._http.post(
                self._completions_url,
                content=json.dumps(body),
                headers={**self._headers, **options.headers},
                timeout=options.timeout,
            )
        if not 200 <= answer.status_code < 300:  # a redirect is not an answer either (httpx does not follow it)
            raise classify_response(answer.status_code, answer.text, answer.headers)
        with reading(openai):
            completion = json.loads(answer.content)
            if not completion.get("choices"):
                if completion.get("error"):  # OpenRouter and others put an error in a 200 answer
                    raise error_in_body(completion)
                raise UpstreamError("server", "upstream answered with no choices")
            choice = completion["choices"][0]
            if choice.get("finish_reason") == "content_filter":
                raise UpstreamError("content_filter", "upstream content filter stopped the answer")
            return GenerateResponse(
                text=choice["message"].get("content") or "",
                reasoning=reasoning_from(model, choice["message"]),
                usage=usage_from(completion.get("usage")) or Usage(),
                finish_reason=choice.get("finish_reason"),
                model=model.name,
                provider=self.name,
                upstream_latency_ms=(time.perf_counter() - started) * 1000,
            )

    async def stream(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions
    ) -> AsyncIterator[StreamChunk]:
        finished = False
        with sending(openai, self.name):
            # The SDK's overloads cannot see `stream=True` past the spread parameters, nor type our plain-dict
            # messages (built once for both wires): the narrowing below checks what the call returned.
            stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
                model=model.name,
                messages=_messages(request),
                stream=True,
                stream_options={"include_usage": True},
                timeout=options.timeout,
                extra_headers=dict(options.headers),
                **openai_params(request, model),
            )
        assert isinstance(stream, openai.AsyncStream)
        with reading(openai):
            async with stream:
                async for event in stream:
                    chunk = StreamChunk(usage=usage_from(event.usage))
                    if event.choices:
                        choice = event.choices[0]
                        chunk.text = choice.delta.content or ""
                        chunk.reasoning = reasoning_from(model, choice.delta) or ""
                        if chunk.usage is None and (choice.model_extra or {}).get("usage"):
                            chunk.usage = usage_from(choice.model_extra["usage"])  # Moonshot: usage in the choice
                        if choice.finish_reason:
                            if choice.finish_reason == "content_filter":
                                raise UpstreamError("content_filter", "upstream content filter stopped the answer")
                            if choice.finish_reason == "error":  # OpenRouter: the stream failed after it began
                                raise error_in_body((event.model_extra or {}).get("error") or "the stream failed")
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
