"""The one provider interface, and the classified failure every wire implementation raises."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Literal, Protocol

import httpx2

from exai.providers.catalogue import ModelInfo
from exai.providers.types import DeltaCallback, GenerateRequest, GenerateResponse, StreamChunk, Usage

FailureKind = Literal[
    "auth", "rate_limit", "context_too_long", "timeout", "connection", "server", "bad_request", "content_filter"
]

RETRYABLE: frozenset[FailureKind] = frozenset({"rate_limit", "timeout", "connection", "server"})
"""Kinds worth another attempt on the same model. Auth and bad requests never are."""


@dataclass
class CallOptions:
    timeout: float
    headers: Mapping[str, str]


class UpstreamError(Exception):
    """An upstream call failed; `kind` says how, so the router can decide what to do next."""

    def __init__(
        self, kind: FailureKind, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


_CONTEXT_MARKERS = ("context_length", "context length", "maximum context", "too many tokens", "prompt is too long")
_FILTER_MARKERS = ("content_filter", "content filter", "sensitive", "safety")


def classify_status(status: int, body: str, retry_after: str | None = None) -> UpstreamError:
    """Map an HTTP error answer of any vendor to a failure kind."""
    lowered = body.lower()
    after = _parse_retry_after(retry_after)
    snippet = body[:300]
    if status in (401, 403):
        return UpstreamError("auth", f"upstream refused the credentials ({status}): {snippet}", status=status)
    if status == 429:
        return UpstreamError("rate_limit", f"upstream rate limit (429): {snippet}", status=status, retry_after=after)
    if status == 413 or any(marker in lowered for marker in _CONTEXT_MARKERS):
        return UpstreamError("context_too_long", f"prompt exceeds the model's context window: {snippet}", status=status)
    if any(marker in lowered for marker in _FILTER_MARKERS) and status < 500:
        return UpstreamError("content_filter", f"upstream content filter refused the request: {snippet}", status=status)
    if status in (408, 504):
        return UpstreamError("timeout", f"upstream timed out ({status}): {snippet}", status=status)
    if status >= 500 or status == 529:
        return UpstreamError("server", f"upstream server error ({status}): {snippet}", status=status, retry_after=after)
    return UpstreamError("bad_request", f"upstream rejected the request ({status}): {snippet}", status=status)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@contextmanager
def classified(sdk: ModuleType) -> Iterator[None]:
    """Turn an SDK's (openai or anthropic: same exception names) and the transport's errors into `UpstreamError`."""
    try:
        yield
    except sdk.APIStatusError as exc:
        raise classify_status(exc.status_code, exc.response.text, exc.response.headers.get("retry-after")) from exc
    except (sdk.APITimeoutError, httpx2.TimeoutException) as exc:
        raise UpstreamError("timeout", "upstream did not answer in time") from exc
    except (sdk.APIConnectionError, httpx2.TransportError) as exc:
        raise UpstreamError("connection", f"cannot reach upstream: {exc.__cause__ or exc}") from exc
    except (sdk.APIError, json.JSONDecodeError, ValueError, AttributeError, TypeError) as exc:
        raise UpstreamError("server", f"upstream sent a malformed answer: {exc}") from exc


class Provider(Protocol):
    """Speaks one wire API to one configured endpoint."""

    name: str

    async def generate(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions, on_delta: DeltaCallback | None = None
    ) -> GenerateResponse: ...

    def stream(
        self, request: GenerateRequest, model: ModelInfo, options: CallOptions
    ) -> AsyncIterator[StreamChunk]: ...

    async def list_models(self, timeout: float) -> list[str]: ...

    async def close(self) -> None: ...


async def collect_stream(
    provider: Provider, request: GenerateRequest, model: ModelInfo, options: CallOptions, on_delta: DeltaCallback
) -> GenerateResponse:
    """Run a streamed call, hand each chunk to `on_delta`, and return the whole answer."""
    started = time.perf_counter()
    text: list[str] = []
    reasoning: list[str] = []
    usage = Usage()
    finish: str | None = None
    async for chunk in provider.stream(request, model, options):
        text.append(chunk.text)
        reasoning.append(chunk.reasoning)
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.finish_reason:
            finish = chunk.finish_reason
        await on_delta(chunk)
    return GenerateResponse(
        text="".join(text),
        reasoning="".join(reasoning) or None,
        usage=usage,
        finish_reason=finish,
        model=model.name,
        provider=provider.name,
        upstream_latency_ms=(time.perf_counter() - started) * 1000,
    )
