"""Standard request, response and capability types shared by every provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, Field

Role = Literal["user", "assistant"]
ThinkingMode = Literal["off", "minimal", "low", "medium", "high", "max"]


class ImageInput(BaseModel):
    """An image as a data URL or an http(s) URL."""

    url: str


class Message(BaseModel):
    role: Role
    content: str
    images: list[ImageInput] = Field(default_factory=list)


class GenerateRequest(BaseModel):
    """What to ask a model; which model is the router's choice (`RoutePlan`), not part of the request."""

    messages: list[Message]
    system: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    thinking: ThinkingMode = "off"


class Usage(BaseModel):
    """Tokens as the upstream reported them: cached input is part of `input_tokens`, reasoning of `output_tokens`.
    Where it reported none, the call fills in what it is charged, counted here, and says so (`estimated`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = Field(default=False, exclude=True)  # set by the tool context, never part of a vendor's report


TRUNCATED_REASONS = frozenset({"length", "max_tokens", "model_length"})


class GenerateResponse(BaseModel):
    text: str
    reasoning: str | None = None
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    model: str
    provider: str
    upstream_latency_ms: float = 0.0

    @property
    def truncated(self) -> bool:
        """The answer was cut at the output limit (OpenAI-style `length`, Anthropic's `max_tokens`)."""
        return self.finish_reason in TRUNCATED_REASONS


class StreamChunk(BaseModel):
    """One piece of a streamed answer; the last chunk carries usage and finish reason."""

    text: str = ""
    reasoning: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None


DeltaCallback = Callable[[StreamChunk], Awaitable[None]]
