"""Standard request, response and capability types shared by every provider."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, Field, field_validator

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


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` as any UTF-8 store and client can keep it: what JSON carries and no store keeps (NUL, which PostgreSQL
    refuses in text and JSON; a lone surrogate, which is no UTF-8 at all) becomes U+FFFD. A surrogate pair split
    across two decoded pieces (a streamed emoji) is joined again, not replaced."""
    if not _UNSTORABLE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")


class GenerateResponse(BaseModel):
    """A model's answer. Its text holds nothing a store cannot keep: NUL and lone surrogates an upstream sent (valid
    JSON escapes) are replaced with U+FFFD, so a paid answer is never refused by the database that must keep it."""

    text: str
    reasoning: str | None = None
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    model: str
    provider: str
    upstream_latency_ms: float = 0.0

    @field_validator("text", "reasoning")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        return storable(value) if value else value

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
