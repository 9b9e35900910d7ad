"""The simulator's answers: derived from the request, in the OpenAI and Anthropic formats, plain and streamed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


def reply_digest(system: str | None, messages: list[tuple[str, str]]) -> str:
    """The digest the simulator puts in its reply: proves system prompt and history arrived unchanged."""
    canonical = json.dumps({"system": system or "", "messages": [list(m) for m in messages]}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def count_images(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, dict) and part.get("type") in ("image_url", "image")
    )


@dataclass
class ParsedRequest:
    model: str
    system: str | None
    messages: list[tuple[str, str]]
    images: int
    stream: bool
    thinking: bool

    def reply(self) -> str:
        last = next((c for r, c in reversed(self.messages) if r == "user"), "")
        system = (self.system or "")[:120]
        return (
            f"SIM {self.model} | turns: {len(self.messages)} | images: {self.images} | "
            f"digest: {reply_digest(self.system, self.messages)} | system: {system} | echo: {last[:500]}"
        )

    def prompt_tokens(self) -> int:
        return max(1, sum(len(c.split()) for _, c in self.messages) + len((self.system or "").split()))


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + (" " if i < len(parts) - 1 else "") for i, p in enumerate(parts)]


def openai_body(p: ParsedRequest, cut: bool = False) -> dict[str, Any]:
    text = p.reply()
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if p.thinking:
        message["reasoning_content"] = f"reasoning about {p.model}"
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": 0,
        "model": p.model,
        "choices": [{"index": 0, "message": message, "finish_reason": "length" if cut else "stop"}],
        "usage": {
            "prompt_tokens": p.prompt_tokens(),
            "completion_tokens": len(text.split()),
            "total_tokens": p.prompt_tokens() + len(text.split()),
        },
    }


def anthropic_body(p: ParsedRequest, cut: bool = False) -> dict[str, Any]:
    text = p.reply()
    content: list[dict[str, Any]] = []
    if p.thinking:
        content.append({"type": "thinking", "thinking": f"reasoning about {p.model}", "signature": "sim"})
    content.append({"type": "text", "text": text})
    return {
        "id": "msg_sim",
        "type": "message",
        "role": "assistant",
        "model": p.model,
        "content": content,
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": p.prompt_tokens(), "output_tokens": len(text.split())},
    }


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data)}\n\n"


async def openai_stream(
    p: ParsedRequest,
    truncate: bool,
    cut: bool = False,
    think_seconds: float = 0.0,
    usage: bool = True,
    silent: bool = False,
    stall_seconds: float = 0.0,
) -> AsyncIterator[str]:
    """The answer streamed word by word; `think_seconds` of reasoning first, one delta a second (a slow model), or,
    `silent`, an empty first chunk and nothing more until the answer (as OpenAI's reasoning models stream), then
    `stall_seconds` without a word; `cut` stops it at the output limit (finish reason `length`); without `usage`, no
    usage chunk at the end."""
    words = _words(p.reply())
    base = {"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 0, "model": p.model}
    started = time.monotonic()
    if silent:
        yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        await asyncio.sleep(think_seconds)
    while not silent and (left := think_seconds - (time.monotonic() - started)) > 0:
        delta = {"reasoning_content": f"thinking ({time.monotonic() - started:.0f} s)... "}
        yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        await asyncio.sleep(min(1.0, left))
    await asyncio.sleep(stall_seconds)
    if p.thinking:
        yield _sse(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"reasoning_content": f"reasoning about {p.model}"}, "finish_reason": None}
                ],
            }
        )
    for i, word in enumerate(words):
        if truncate and i == len(words) // 2:
            raise ConnectionResetError("simulated truncated stream")
        yield _sse({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
        await asyncio.sleep(0)
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length" if cut else "stop"}]})
    if usage:
        yield _sse(
            {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": p.prompt_tokens(),
                    "completion_tokens": len(words),
                    "total_tokens": p.prompt_tokens() + len(words),
                },
            }
        )
    yield "data: [DONE]\n\n"


async def anthropic_stream(p: ParsedRequest, truncate: bool, cut: bool = False) -> AsyncIterator[str]:
    words = _words(p.reply())
    yield _sse(
        {
            "type": "message_start",
            "message": {
                "id": "msg_sim",
                "type": "message",
                "role": "assistant",
                "model": p.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": p.prompt_tokens(), "output_tokens": 0},
            },
        },
        "message_start",
    )
    index = 0
    if p.thinking:
        yield _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
            "content_block_start",
        )
        yield _sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": f"reasoning about {p.model}"},
            },
            "content_block_delta",
        )
        yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        index = 1
    yield _sse(
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    for i, word in enumerate(words):
        if truncate and i == len(words) // 2:
            raise ConnectionResetError("simulated truncated stream")
        yield _sse(
            {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}},
            "content_block_delta",
        )
        await asyncio.sleep(0)
    yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    yield _sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(words)},
        },
        "message_delta",
    )
    yield _sse({"type": "message_stop"}, "message_stop")
