"""The one provider interface, and the classified failure every wire implementation raises."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any, Literal, Protocol

import httpx2

from exai.errors import ExaiError, InternalError, InvalidInput
from exai.observability.logging import get_logger, redact
from exai.provider_specs import PROVIDER_SPECS
from exai.providers.catalogue import ModelInfo
from exai.providers.types import DeltaCallback, GenerateRequest, GenerateResponse, StreamChunk, Usage, storable

FailureKind = Literal[
    "auth",
    "quota",
    "rate_limit",
    "model_not_found",
    "context_too_long",
    "request_too_large",
    "timeout",
    "connection",
    "server",
    "bad_request",
    "content_filter",
]

RETRYABLE: frozenset[FailureKind] = frozenset({"rate_limit", "timeout", "connection", "server"})
"""Kinds worth another attempt on the same model. Auth and bad requests never are."""

log = get_logger(__name__)


CONNECT_SECONDS = 10.0
"""The longest an attempt waits to connect to its upstream (a quarter of the attempt when that is shorter)."""


@dataclass
class CallOptions:
    """Per-call transport options. Header values are checked here, so every wire refuses the same ones."""

    timeout: float
    headers: Mapping[str, str]

    @property
    def transport_timeout(self) -> httpx2.Timeout:
        """`timeout` for the whole request, with connecting and waiting for a pooled connection ending well before
        it: a request the upstream never received fails as `connection` (free), never as the attempt's time limit,
        which is charged as a request the upstream had started on (see `Attempt.billed`)."""
        before_sending = min(CONNECT_SECONDS, self.timeout / 4)  # the pool wait and the connect together: half
        return httpx2.Timeout(self.timeout, connect=before_sending, pool=before_sending)

    def __post_init__(self) -> None:
        for name, value in self.headers.items():
            if not (value.isascii() and value.isprintable()):
                raise InvalidInput(
                    f"The request header {name} has characters an HTTP header cannot carry; nothing was sent.",
                    code="unsendable_header",
                    remedy="Use printable ASCII only (an X-Request-ID of letters, digits and ._:-).",
                    details={"header": name},
                )


class UpstreamError(Exception):
    """An upstream call failed; `kind` says how, so the router can decide what to do next.

    Its message is the only way upstream text (an error body, an exception of the transport) travels on to a
    client's error, the call record and the audit: it is redacted here, on every assignment, with the logs'
    redaction (configured keys and secrets, `Bearer` credentials, `sk-…` keys), since an upstream or a proxy in
    front of it may echo the key we sent.
    """

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        remedy: str | None = None,
        worth_repeating: bool = True,
    ) -> None:
        super().__init__(redact(message))
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.remedy = remedy
        """What to do, when the failure knows better than its kind (our own time limits name theirs)."""
        self.worth_repeating = worth_repeating
        """False when asking the same model again would only repeat what failed (and be paid again)."""

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, text: str) -> None:
        self._message = redact(text)

    def __str__(self) -> str:
        return self._message

    @property
    def retryable(self) -> bool:
        return self.worth_repeating and self.kind in RETRYABLE


def upstream_text(text: str, limit: int = 300) -> str:
    """At most `limit` characters of upstream text, redacted before it is cut (a key cut in two is not found), and
    storable (it may end up in a call's recorded error)."""
    return storable(redact(text)[:limit])


_CONTEXT_MARKERS = (
    "context_length",
    "context length",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "exceeded model token limit",  # Moonshot
)
_QUOTA_MARKERS = ("quota", "insufficient credits", "billing", "balance", "arrears")
_ZAI_CODES: dict[str, FailureKind] = {
    # Z.ai's business error codes (docs.z.ai/api-reference/api-code): an unknown model and a model this key may not
    # use are different errors.
    **dict.fromkeys(("1000", "1001", "1002", "1003", "1004"), "auth"),
    **dict.fromkeys(("1110", "1111", "1112", "1121"), "auth"),
    "1113": "quota",
    "1211": "model_not_found",
    "1220": "auth",
    "1221": "model_not_found",
    "1301": "content_filter",
    **dict.fromkeys(("1302", "1303", "1304", "1305"), "rate_limit"),
}
_FILTER_MARKERS = ("content_filter", "content filter", "sensitive", "safety")


def classify_status(
    status: int, body: str, retry_after: str | None = None, retry_after_ms: str | None = None
) -> UpstreamError:
    """Map an HTTP error answer of any vendor to a failure kind, with the upstream's hint of when to retry.

    `retry-after-ms` (OpenAI's and Azure's precise form) wins over `Retry-After` when both are sent.
    """
    lowered = body.lower()
    after = parse_retry_after_ms(retry_after_ms)
    if after is None:
        after = parse_retry_after(retry_after)
    snippet = upstream_text(body)
    vendor_kind = _ZAI_CODES.get(_error_code(body))
    if vendor_kind is not None:
        return UpstreamError(vendor_kind, f"upstream refused the request ({status}): {snippet}", status=status)
    if status == 402 or (status in (403, 429) and any(marker in lowered for marker in _QUOTA_MARKERS)):
        return UpstreamError(
            "quota", f"upstream account is out of quota or credit ({status}): {snippet}", status=status
        )
    if status in (401, 403):
        return UpstreamError("auth", f"upstream refused the credentials ({status}): {snippet}", status=status)
    if status == 429:
        return UpstreamError("rate_limit", f"upstream rate limit (429): {snippet}", status=status, retry_after=after)
    if any(marker in lowered for marker in _CONTEXT_MARKERS):
        return UpstreamError("context_too_long", f"prompt exceeds the model's context window: {snippet}", status=status)
    if status == 413:  # the HTTP request itself (bytes, images) is too large: a larger context window will not help
        return UpstreamError(
            "request_too_large", f"upstream refused the request as too large (413): {snippet}", status=413
        )
    if any(marker in lowered for marker in _FILTER_MARKERS) and status < 500:
        return UpstreamError("content_filter", f"upstream content filter refused the request: {snippet}", status=status)
    if status == 404:
        return UpstreamError("model_not_found", f"upstream does not serve this model (404): {snippet}", status=status)
    if status in (408, 504):
        return UpstreamError("timeout", f"upstream timed out ({status}): {snippet}", status=status)
    if status >= 500 or status == 529:
        return UpstreamError("server", f"upstream server error ({status}): {snippet}", status=status, retry_after=after)
    return UpstreamError("bad_request", f"upstream rejected the request ({status}): {snippet}", status=status)


_ERROR_TYPES: dict[str, int] = {
    # Error `type`s (Anthropic's, OpenAI's, Moonshot's) to the HTTP status they stand for, for errors that arrive
    # inside a 200 answer or a stream, where the status line says nothing.
    "authentication_error": 401,
    "invalid_authentication_error": 401,
    "permission_error": 403,
    "permission_denied_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_reached_error": 429,
    "exceeded_current_quota_error": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "overloaded_error": 529,
    "engine_overloaded_error": 529,
    "timeout_error": 504,
    "invalid_request_error": 400,
}


def _error_code(body: str) -> str:
    """`error.code` of a JSON error body, as text ("" when there is none)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    inner = parsed.get("error") if isinstance(parsed, dict) else None
    return str(inner.get("code") or "") if isinstance(inner, dict) else ""


def error_in_body(error: object) -> UpstreamError:
    """An error object an upstream sent with a 200 status (a JSON answer or a stream event), classified by its
    `code` or `type` as if it had come with the status it stands for; the upstream's own message is kept."""
    body: dict[str, Any] = error if isinstance(error, dict) else {"message": str(error)}
    inner: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
    code, kind = inner.get("code"), inner.get("type")
    status = int(code) if isinstance(code, int | str) and str(code).isdigit() and 400 <= int(code) < 600 else None
    status = status or _ERROR_TYPES.get(str(kind), 0) or _ERROR_TYPES.get(str(code), 0) or 500
    failure = classify_status(status, json.dumps(body, ensure_ascii=False))
    message = upstream_text(str(inner.get("message") or inner.get("msg") or body))
    failure.message = f"upstream answered with an error ({kind or code or 'no type'}): {message}"
    return failure


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait, from either form of `Retry-After`: delay-seconds or an HTTP-date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_retry_after_ms(value: str | None) -> float | None:
    """Seconds to wait, from a `retry-after-ms` header (milliseconds); None when absent or not a number."""
    try:
        milliseconds = float(value) if value else None
    except ValueError:
        return None
    return None if milliseconds is None or milliseconds != milliseconds else max(0.0, milliseconds / 1000)


def classify_response(status: int, body: str, headers: Mapping[str, str]) -> UpstreamError:
    """`classify_status` for an HTTP answer, reading both retry hints from its headers."""
    return classify_status(status, body, headers.get("retry-after"), headers.get("retry-after-ms"))


_NOT_SENT = (httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.WriteTimeout)
"""Timeouts before the upstream had the whole request: it never started on it, so it bills nothing."""


def _upstream_failure(sdk: ModuleType | None, exc: Exception) -> UpstreamError | None:
    """The upstream failure `exc` stands for, or None when it was not the upstream's doing. `sdk` is the vendor
    SDK the request went through (for its exception classes), None for a request sent with httpx2 directly."""
    if sdk is not None and isinstance(exc, sdk.APIStatusError):
        if exc.status_code < 300:  # an error event inside a streamed answer
            return error_in_body(exc.body)
        return classify_response(exc.status_code, exc.response.text, exc.response.headers)
    if isinstance(exc, httpx2.LocalProtocolError) or isinstance(exc.__cause__, httpx2.LocalProtocolError):
        return None  # the request we built breaks HTTP (e.g. a header with a newline): ours, not the upstream's
    if isinstance(exc, _NOT_SENT) or isinstance(exc.__cause__, _NOT_SENT):  # the SDKs wrap httpx's timeouts
        return UpstreamError("connection", f"could not send the request in time: {type(exc.__cause__ or exc).__name__}")
    timeout = httpx2.TimeoutException if sdk is None else (sdk.APITimeoutError, httpx2.TimeoutException)
    if isinstance(exc, timeout):  # sent, and then no answer in time: the upstream had started on it
        return UpstreamError("timeout", "the time the attempt had left")  # its client's timeout is that time
    unreachable = httpx2.TransportError if sdk is None else (sdk.APIConnectionError, httpx2.TransportError)
    if isinstance(exc, unreachable):
        return UpstreamError("connection", f"cannot reach upstream: {exc.__cause__ or exc}")
    malformed = json.JSONDecodeError if sdk is None else (sdk.APIResponseValidationError, json.JSONDecodeError)
    if isinstance(exc, malformed):
        return UpstreamError("server", f"upstream sent a malformed answer: {exc}")
    if sdk is not None and isinstance(exc, sdk.APIError) and getattr(exc, "body", None) is not None:
        return error_in_body(exc.body)  # `{"error": ...}` in a stream
    return None


def _local_failure(provider: str, exc: Exception) -> ExaiError:
    """A request we could not build: our error (or our configuration's), never the upstream's."""
    if isinstance(exc, UnicodeEncodeError | httpx2.LocalProtocolError) or isinstance(
        exc.__cause__, httpx2.LocalProtocolError
    ):
        spec = PROVIDER_SPECS.get(provider)
        key_env = " or ".join(spec.key_env) if spec else "the API key variable"
        return InvalidInput(
            f"The request to {provider} could not be built: a header value (most likely its API key) contains "
            "a character HTTP headers cannot carry. Nothing was sent upstream.",
            code="unsendable_header",
            remedy=f"Check {key_env} for a pasted quote, accent or non-breaking space, then restart.",
            details={"provider": provider},
        )
    log.exception("request_build_failed", provider=provider)  # its text may hold request data: the log only
    return InternalError(
        f"The request to {provider} could not be built ({type(exc).__name__}; the log has the traceback). "
        "Nothing was sent upstream.",
        code="request_build_failed",
        remedy="This is a defect of the server: report it with the correlation id.",
        details={"provider": provider},
    )


@contextmanager
def sending(sdk: ModuleType | None, provider: str) -> Iterator[None]:
    """Wrap the call that builds and sends a request: through a vendor SDK (openai and anthropic share exception
    names) or, with `sdk` None, through httpx2 directly.

    Transport errors and upstream status codes become `UpstreamError`, which the router may retry and its breakers
    count. Anything else was raised while building the request, by our code or our configuration: it becomes a
    local `ExaiError`, never retried, never counted against the upstream.
    """
    try:
        yield
    except (ExaiError, UpstreamError):
        raise
    except Exception as exc:
        failure = _upstream_failure(sdk, exc)
        if failure is not None:
            raise failure from exc
        raise _local_failure(provider, exc) from exc


@contextmanager
def reading(sdk: ModuleType | None) -> Iterator[None]:
    """Wrap the reading of an upstream reply: a reply we cannot make sense of is the upstream's failure."""
    try:
        yield
    except UpstreamError:
        raise
    except Exception as exc:
        failure = _upstream_failure(sdk, exc)
        if failure is not None:
            raise failure from exc
        if isinstance(exc, ValueError | TypeError | AttributeError | KeyError | IndexError):
            raise UpstreamError("server", f"upstream sent a malformed answer: {type(exc).__name__}: {exc}") from exc
        raise


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
