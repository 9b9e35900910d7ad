"""The OpenAI-compatible chat completions wire API (OpenAI, Kimi, GLM, OpenRouter, Ollama, vLLM ...).

Spoken one way, with httpx2 and json directly: a whole answer is one JSON POST, a streamed one the same POST read
as server-sent events, the model listing one bounded GET (as `listings.py` and `discovery.py` ask it). The openai
SDK's request transform, response models and bookkeeping were about a fifth of the daemon's CPU per `chat` call
(py-spy, bench/profile.py); `bench/openai_wire.py` measures both ways per call, streamed and not. Failures are
classified by `providers.base`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from exai.providers.base import (
    CallOptions,
    UpstreamError,
    classify_response,
    classify_status,
    collect_stream,
    error_in_body,
    reading,
    sending,
)
from exai.providers.bounded import FetchError, get_json_bounded
from exai.providers.catalogue import ModelInfo
from exai.providers.quirks import openai_params, reasoning_from
from exai.providers.types import DeltaCallback, GenerateRequest, GenerateResponse, Message, StreamChunk, Usage
from exai.server.internals import send_requests_whole


def _content(message: Message) -> Any:
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts.extend({"type": "image_url", "image_url": {"url": image.url}} for image in message.images)
    return parts


def messages_of(request: GenerateRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages.extend({"role": m.role, "content": _content(m)} for m in request.messages)
    return messages


def usage_from(raw: Any) -> Usage | None:
    """Usage of the chat completions API (JSON, or an object with `model_dump`): cached input tokens sit in
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


LISTING_MAX_BYTES = 4_000_000


async def server_sent_events(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` of each server-sent event (its `data:` lines joined), up to `[DONE]`; other fields are ignored."""
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            event, data = "\n".join(data), []
            if event == "[DONE]":
                return
            yield event
    if data and (event := "\n".join(data)) != "[DONE]":
        yield event


class OpenAICompatibleProvider:
    """One OpenAI-compatible endpoint, spoken with httpx2. Nothing here retries: only the router retries a model
    request."""

    def __init__(self, name: str, base_url: str, api_key: str | None) -> None:
        self.name = name
        key = api_key or "not-needed"
        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
        self._http = send_requests_whole(httpx2.AsyncClient(limits=limits))
        self._base_url = base_url.rstrip("/")
        self._completions_url = f"{self._base_url}/chat/completions"
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def _body(self, request: GenerateRequest, model: ModelInfo, **extra: Any) -> str:
        body = {"model": model.name, "messages": messages_of(request), **openai_params(request, model), **extra}
        body.update(body.pop("extra_body", {}))
        return json.dumps(body)

    async def generate(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions, on_delta: DeltaCallback | None = None
    ) -> GenerateResponse:
        if on_delta is not None and model.streaming:
            return await collect_stream(self, request, model, options, on_delta)
        started = time.perf_counter()
        with sending(None, self.name):
            answer = await self._http.post(
                self._completions_url,
                content=self._body(request, model),
                headers={**self._headers, **options.headers},
                timeout=options.transport_timeout,
            )
        if not 200 <= answer.status_code < 300:  # a redirect is not an answer either (httpx does not follow it)
            raise classify_response(answer.status_code, answer.text, answer.headers)
        with reading(None):
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
        with sending(None, self.name):
            body = self._body(request, model, stream=True, stream_options={"include_usage": True})
            headers = {**self._headers, "Accept": "text/event-stream", **options.headers}
            sent = self._http.build_request(
                "POST", self._completions_url, content=body, headers=headers, timeout=options.transport_timeout
            )
            answer = await self._http.send(sent, stream=True)
        try:
            if not 200 <= answer.status_code < 300:
                with reading(None):
                    await answer.aread()
                raise classify_response(answer.status_code, answer.text, answer.headers)
            with reading(None):
                async for data in server_sent_events(answer.aiter_lines()):
                    event = json.loads(data)
                    if isinstance(event, dict) and event.get("error"):  # an error event after the stream began
                        raise error_in_body(event["error"])
                    chunk = StreamChunk(usage=usage_from(event.get("usage")))
                    if event.get("choices"):
                        choice = event["choices"][0]
                        delta = choice.get("delta") or {}
                        chunk.text = delta.get("content") or ""
                        chunk.reasoning = reasoning_from(model, delta) or ""
                        if chunk.usage is None and choice.get("usage"):
                            chunk.usage = usage_from(choice["usage"])  # Moonshot: usage in the choice
                        if reason := choice.get("finish_reason"):
                            if reason == "content_filter":
                                raise UpstreamError("content_filter", "upstream content filter stopped the answer")
                            if reason == "error":  # OpenRouter: the stream failed after it began
                                raise error_in_body(event.get("error") or "the stream failed")
                            chunk.finish_reason = reason
                            finished = True
                    yield chunk
        finally:
            await answer.aclose()
        if not finished:
            raise UpstreamError("connection", "upstream stream ended before the answer was complete")

    async def list_models(self, timeout: float) -> list[str]:
        try:
            listing = await get_json_bounded(
                self._http,
                f"{self._base_url}/models",
                headers={"Authorization": self._headers["Authorization"]},
                deadline=timeout,
                max_bytes=LISTING_MAX_BYTES,
            )
        except FetchError as exc:
            kind = "connection" if exc.status is None else classify_status(exc.status, "").kind
            raise UpstreamError(kind, str(exc), status=exc.status) from None
        with reading(None):
            return [str(entry["id"]) for entry in listing["data"]]

    async def close(self) -> None:
        await self._http.aclose()
