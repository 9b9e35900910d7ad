"""The upstream simulator: an OpenAI- and Anthropic-compatible model API with latency and fault injection.

Every reply is derived from the request, so a test can prove that the prompt, the system prompt and the
history arrived intact (`replies.reply_digest`). A control API under `/_sim/` sets latency and faults at run time
and reports counters and the recent requests (with their headers), so tests can assert what really
happened on the wire.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from exai.testing.fixtures import all_fixtures, fixture
from exai.testing.replies import (
    ParsedRequest,
    anthropic_body,
    anthropic_stream,
    count_images,
    openai_body,
    openai_stream,
    text_of,
)

FaultKind = Literal[
    "429",
    "500",
    "503",
    "401",
    "hang",
    "reset",
    "malformed",
    "truncate",
    "context_length",
    "content_filter",
    "length",
    "error_in_200",
    "413",
    "replay",
    "think",
    "no_usage",
]
DEFAULT_MODELS = ["sim-fast", "sim-smart", "sim-large"]
LISTING_FAULTS = ("401", "429", "500", "503")
DEFAULT_CONTEXT_WINDOWS = {"sim-large": 1_000_000}
MARKER = re.compile(r"simmark-[0-9a-f]{16}")
"""A caller's tag in a prompt: counted per request received and answered (`POST /_sim/markers`), so a test can tell
whether the upstream was asked (and paid) for a call that then failed for its client."""
"""Context windows the listing states (as `context_length`, like OpenRouter and vLLM, and in Ollama's /api/show);
models without one leave the client to its default."""


def catalogued_models() -> dict[str, int]:
    """Every built-in catalogue model with its context window: the simulator serves each vendor's models, so its
    listing names them (a test sets `/_sim/models` to play a vendor that dropped some)."""
    return dict(_catalogued_models())


@cache
def _catalogued_models() -> dict[str, int]:
    from exai.providers.catalogue import Catalogue

    return {m.name: m.context_window for m in Catalogue.load().models.values()}


class ListingRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vendor_models: list[str] | None = Field(default=None, description="catalogue models listed; null: all of them")


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "*"
    kind: FaultKind
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=1, description="fire this many times, then stop")
    prompt_contains: str | None = Field(
        default=None, min_length=1, description="only for requests whose newest prompt contains this text"
    )
    retry_after: float | None = Field(default=None, ge=0)
    retry_after_ms: float | None = Field(default=None, ge=0, description="sent as the retry-after-ms header (429)")
    hang_seconds: float = Field(default=600.0, gt=0)
    think_seconds: float = Field(default=60.0, ge=0, description="`think`: reason this long, then answer")
    silent: bool = Field(
        default=False,
        description="`think`: stream nothing while thinking (OpenAI's reasoning models), not one delta a second",
    )
    stall_seconds: float = Field(
        default=0.0, ge=0, description="`think`, streamed: after the reasoning, this long without a word (then answer)"
    )
    fixture: str | None = Field(
        default=None, description='with kind "replay": a vendor fixture, e.g. "zai/chat_thinking"'
    )

    @model_validator(mode="after")
    def _replay_names_a_fixture(self) -> FaultRule:
        if (self.kind == "replay") != (self.fixture is not None) or (self.fixture and not fixture(self.fixture)):
            raise ValueError(f"kind replay needs `fixture`, one of: {', '.join(sorted(all_fixtures()))}")
        return self


class LatencyRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "*"
    ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)


RuleT = TypeVar("RuleT", FaultRule, LatencyRule, ListingRule)


@dataclass
class SimState:
    faults: list[FaultRule] = field(default_factory=list)
    latency: list[LatencyRule] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    context_windows: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CONTEXT_WINDOWS))
    vendor_models: dict[str, int] = field(default_factory=catalogued_models)
    api_key: str | None = None
    counters: Counter[str] = field(default_factory=Counter)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=500))
    in_flight: int = 0
    max_in_flight: int = 0
    markers: dict[str, list[int]] = field(default_factory=dict)  # marker -> [received, answered]
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def pick_fault(self, model: str, kinds: tuple[str, ...] | None = None, prompt: str = "") -> FaultRule | None:
        """The fault to apply to a request for `model` whose newest prompt is `prompt` (rules for "*" too, unless
        `kinds` narrows them: then only rules naming `model` itself, of those kinds)."""
        for rule in self.faults:
            if rule.model not in ("*", model) or (
                kinds is not None and (rule.model != model or rule.kind not in kinds)
            ):
                continue
            if rule.prompt_contains is not None and rule.prompt_contains not in prompt:
                continue
            if rule.count is not None and rule.count <= 0:
                continue
            if self.rng.random() >= rule.rate:
                continue
            if rule.count is not None:
                rule.count -= 1
            return rule
        return None

    def delay_for(self, model: str) -> float:
        for rule in self.latency:
            if rule.model in ("*", model):
                jitter = self.rng.uniform(-rule.jitter_ms, rule.jitter_ms) if rule.jitter_ms else 0.0
                return max(0.0, rule.ms + jitter) / 1000
        return 0.0


async def _read_rule(request: Request, rule: type[RuleT]) -> RuleT | Response:
    """A control rule from the request body, or a 400/422 answer that says what is wrong with it."""
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    try:
        return rule.model_validate(body)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)


class _ResetResponse(Response):
    """Starts a response, then drops the connection: the client sees it cut off."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})
        raise ConnectionResetError("simulated connection reset")


def _replay(recorded: dict[str, Any]) -> Response:
    """A vendor fixture's answer, byte for byte as recorded (see `exai.testing.fixtures`)."""
    answer = recorded["response"]
    headers = answer.get("headers") or {}
    if "sse" in answer:
        body = "".join(answer["sse"]).encode()
        return Response(body, answer["status"], headers=headers, media_type="text/event-stream")
    return JSONResponse(answer["json"], answer["status"], headers=headers)


class Simulator:
    def __init__(self, state: SimState | None = None) -> None:
        self.state = state or SimState()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/api/show", self.show_model, methods=["POST"]),
                Route("/_sim/faults", self.set_fault, methods=["POST"]),
                Route("/_sim/faults", self.clear_faults, methods=["DELETE"]),
                Route("/_sim/latency", self.set_latency, methods=["POST"]),
                Route("/_sim/models", self.set_listing, methods=["POST"]),
                Route("/_sim/stats", self.stats, methods=["GET"]),
                Route("/_sim/requests", self.requests, methods=["GET"]),
                Route("/_sim/reset", self.reset, methods=["POST"]),
                Route("/_sim/markers", self.marker_counts, methods=["POST"]),
                Route("/healthz", lambda _: JSONResponse({"ok": True}), methods=["GET"]),
            ]
        )

    # ----- control API --------------------------------------------------------------------------
    async def set_fault(self, request: Request) -> Response:
        rule = await _read_rule(request, FaultRule)
        if isinstance(rule, Response):
            return rule
        self.state.faults.append(rule)
        return JSONResponse(rule.model_dump())

    async def clear_faults(self, request: Request) -> Response:
        self.state.faults.clear()
        return JSONResponse({"faults": 0})

    async def set_latency(self, request: Request) -> Response:
        rule = await _read_rule(request, LatencyRule)
        if isinstance(rule, Response):
            return rule
        self.state.latency = [r for r in self.state.latency if r.model != rule.model]
        self.state.latency.insert(0 if rule.model != "*" else len(self.state.latency), rule)
        return JSONResponse(rule.model_dump())

    async def set_listing(self, request: Request) -> Response:
        rule = await _read_rule(request, ListingRule)
        if isinstance(rule, Response):
            return rule
        every = catalogued_models()
        names = every if rule.vendor_models is None else rule.vendor_models
        self.state.vendor_models = {name: every.get(name, 0) for name in names}
        return JSONResponse({"vendor_models": sorted(self.state.vendor_models)})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "counters": dict(self.state.counters),
                "in_flight": self.state.in_flight,
                "max_in_flight": self.state.max_in_flight,
            }
        )

    async def requests(self, request: Request) -> Response:
        limit = int(request.query_params.get("limit", "50"))
        return JSONResponse(list(self.state.recent)[-limit:])

    async def marker_counts(self, request: Request) -> Response:
        """`{"markers": [...]}` -> `{marker: {"received": n, "answered": n}}` for each asked-for marker."""
        try:
            asked = (await request.json())["markers"]
            if not isinstance(asked, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'the body must be {"markers": ["simmark-...", ...]}'}, status_code=400)
        counts = {str(m): self.state.markers.get(str(m), [0, 0]) for m in asked}
        return JSONResponse({m: {"received": r, "answered": a} for m, (r, a) in counts.items()})

    async def reset(self, request: Request) -> Response:
        fresh = SimState(
            api_key=self.state.api_key, models=self.state.models, context_windows=self.state.context_windows
        )
        fresh.in_flight = self.state.in_flight  # live requests (an earlier test's) still end here, and count down
        self.state.__dict__.update(fresh.__dict__)
        return JSONResponse({"reset": True})

    # ----- model API ----------------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        wire = "anthropic" if "anthropic-version" in request.headers else "openai"
        self.state.counters["requests:/v1/models"] += 1
        # Only faults set for the listing itself (model "/v1/models") apply to it: daemons ask for it in the
        # background, and must not use up a fault a test set for its calls.
        fault = self.state.pick_fault("/v1/models", LISTING_FAULTS)
        if fault is not None:
            return self._fault_response(wire, fault)
        names = [*self.state.models, *(m for m in self.state.vendor_models if m not in self.state.models)]
        if wire == "anthropic":
            pages = [{"id": m, "type": "model", "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in names]
            return JSONResponse(
                {
                    "data": pages,
                    "has_more": False,
                    "first_id": pages[0]["id"] if pages else None,
                    "last_id": pages[-1]["id"] if pages else None,
                }
            )
        data: list[dict[str, Any]] = [{"id": m, "object": "model", "created": 0, "owned_by": "exai-sim"} for m in names]
        windows = {**self.state.vendor_models, **self.state.context_windows}
        for entry in data:
            if windows.get(entry["id"]):
                entry["context_length"] = windows[entry["id"]]
        return JSONResponse({"object": "list", "data": data})

    async def show_model(self, request: Request) -> Response:
        """Ollama's native model details: the context window as `<architecture>.context_length`."""
        name = str((await request.json()).get("model", ""))
        if name not in self.state.models:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        info: dict[str, Any] = {"general.architecture": "sim"}
        if name in self.state.context_windows:
            info["sim.context_length"] = self.state.context_windows[name]
        return JSONResponse({"model_info": info})

    async def chat_completions(self, request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages", [])
        system = "\n".join(text_of(m["content"]) for m in messages if m.get("role") == "system") or None
        parsed = ParsedRequest(
            model=body.get("model", ""),
            system=system,
            messages=[(m["role"], text_of(m.get("content"))) for m in messages if m.get("role") != "system"],
            images=count_images(messages),
            stream=bool(body.get("stream")),
            thinking="thinking" in body.get("model", "") or (body.get("thinking") or {}).get("type") == "enabled",
        )
        return await self._serve(request, "openai", body, parsed)

    async def messages(self, request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages", [])
        system = body.get("system")
        parsed = ParsedRequest(
            model=body.get("model", ""),
            system=text_of(system) if system is not None else None,
            messages=[(m["role"], text_of(m.get("content"))) for m in messages],
            images=count_images(messages),
            stream=bool(body.get("stream")),
            thinking=(body.get("thinking") or {}).get("type") == "enabled",
        )
        return await self._serve(request, "anthropic", body, parsed)

    # ----- shared serving path ------------------------------------------------------------------
    async def _serve(self, request: Request, wire: str, body: dict[str, Any], parsed: ParsedRequest) -> Response:
        state = self.state
        state.counters["requests"] += 1
        state.counters[f"requests:{parsed.model}"] += 1
        headers = {k: v for k, v in request.headers.items() if k not in ("authorization", "x-api-key")}
        state.recent.append(
            {"wire": wire, "model": parsed.model, "headers": headers, "body": body, "time": time.time()}
        )
        if state.api_key is not None:
            sent = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if sent != state.api_key:
                return self._error(wire, 401, "invalid api key", "authentication_error")
        users = [text for role, text in parsed.messages if role == "user"]
        marks = MARKER.findall(users[-1]) if users else []  # the newest prompt only: history repeats old ones
        for mark in marks:
            state.markers.setdefault(mark, [0, 0])[0] += 1
        fault = state.pick_fault(parsed.model, prompt=users[-1] if users else "")
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if fault is not None:
                state.counters[f"fault:{fault.kind}"] += 1
                state.counters[f"fault:{fault.kind}:{parsed.model}"] += 1
                if fault.kind == "hang":
                    await self._sleep_unless_gone(request, fault.hang_seconds)
                    return self._error(wire, 504, "simulated hang ended", "timeout_error")
                if fault.kind not in ("truncate", "length", "think", "no_usage") or (
                    fault.kind == "truncate" and not parsed.stream
                ):
                    return self._fault_response(wire, fault)
            think = fault.think_seconds if fault is not None and fault.kind == "think" else 0.0
            streamed_thinking = think and parsed.stream and wire == "openai"
            delay = state.delay_for(parsed.model) + (0.0 if streamed_thinking else think)
            if not await self._sleep_unless_gone(request, delay):
                return Response(status_code=499)
            state.counters["completed"] += 1
            for mark in marks:
                state.markers[mark][1] += 1
            state.counters[f"completed:{parsed.model}"] += 1
            cut = fault is not None and fault.kind == "length"  # a whole answer, stopped at the output limit
            truncate = fault is not None and fault.kind == "truncate"
            usage = wire != "openai" or fault is None or fault.kind != "no_usage"  # no_usage: OpenAI wire only
            if streamed_thinking:
                assert fault is not None
                stream = openai_stream(
                    parsed, truncate=False, think_seconds=think, silent=fault.silent, stall_seconds=fault.stall_seconds
                )
                return StreamingResponse(self._counting_cuts(stream), media_type="text/event-stream")
            if parsed.stream:
                if wire == "openai":
                    stream = openai_stream(parsed, truncate=truncate, cut=cut, usage=usage)
                else:
                    stream = anthropic_stream(parsed, truncate=truncate, cut=cut)
                return StreamingResponse(stream, media_type="text/event-stream")
            if wire == "openai":
                body = openai_body(parsed, cut)
                if not usage:
                    del body["usage"]
                return JSONResponse(body)
            return JSONResponse(anthropic_body(parsed, cut))
        finally:
            state.in_flight -= 1

    async def _counting_cuts(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        """A stream whose client hung up midway is counted as a disconnect (the upstream saw the cut)."""
        try:
            async for chunk in stream:
                yield chunk
        except (asyncio.CancelledError, OSError):
            self.state.counters["disconnects"] += 1
            raise

    async def _sleep_unless_gone(self, request: Request, seconds: float) -> bool:
        """Sleep, but stop early (and count it) if the client hangs up. True if the client is still there."""
        if seconds <= 0:
            return True
        sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
        watcher = asyncio.ensure_future(request.receive())
        done, _ = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleeper, watcher):
            task.cancel()
        if watcher in done and not watcher.cancelled() and watcher.result().get("type") == "http.disconnect":
            self.state.counters["disconnects"] += 1
            return False
        return True

    def _fault_response(self, wire: str, fault: FaultRule) -> Response:
        kind = fault.kind
        if kind == "429":
            response = self._error(wire, 429, "rate limit reached, slow down", "rate_limit_error")
            if fault.retry_after is not None:
                response.headers["retry-after"] = str(fault.retry_after)
            if fault.retry_after_ms is not None:
                response.headers["retry-after-ms"] = str(fault.retry_after_ms)
            return response
        if kind in ("500", "503"):
            return self._error(wire, int(kind), "simulated upstream failure", "api_error")
        if kind == "401":
            return self._error(wire, 401, "invalid api key", "authentication_error")
        if kind == "context_length":
            return self._error(
                wire,
                400,
                "This model's maximum context length is exceeded (context_length_exceeded)",
                "invalid_request_error",
                code="context_length_exceeded",
            )
        if kind == "content_filter":
            return self._error(
                wire,
                400,
                "The request was rejected by the content filter (sensitive content)",
                "invalid_request_error",
                code="content_filter",
            )
        if kind == "error_in_200":
            return JSONResponse({"error": {"code": 502, "message": "simulated provider error inside a 200 answer"}})
        if kind == "413":
            if wire == "anthropic":
                return self._error(
                    wire, 413, "Request exceeds the maximum allowed number of bytes.", "request_too_large"
                )
            return Response(b"<html><body>413 Request Entity Too Large</body></html>", 413, media_type="text/html")
        if kind == "replay":
            return _replay(fixture(fault.fixture or "") or {})
        if kind == "malformed":
            return Response(b'{"id": "x", "choices": [ {not json', media_type="application/json")
        return _ResetResponse()

    @staticmethod
    def _error(wire: str, status: int, message: str, kind: str, code: str | None = None) -> Response:
        if wire == "anthropic":
            return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)
        return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)
