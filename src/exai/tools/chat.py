"""`chat`: ask another model, with the router's retries and fallbacks behind it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, Field

from exai.conversations.history import SkippedFile, build_prompt
from exai.conversations.threads import answer_turn, truncation_notice
from exai.errors import InvalidInput
from exai.providers.types import GenerateRequest, ImageInput, StreamChunk, ThinkingMode
from exai.storage.base import TurnRecord
from exai.tools.base import PROMPT_CEILING, PROMPT_LIMIT, FilePaths, Tool, ToolContext, ToolInput, ToolResult, UsageOut

SYSTEM_PROMPT = (
    "You are a senior software engineer consulted by an AI coding agent. Answer precisely and concretely; "
    "when you are unsure, say so. Prefer short, actionable answers with code where it helps."
)


class ChatInput(ToolInput):
    prompt: Annotated[
        str,
        Field(
            min_length=1,
            max_length=PROMPT_CEILING,
            description="The question or request for the model.",
            json_schema_extra=PROMPT_LIMIT,
        ),
    ]
    model: str = Field(default="auto", max_length=200, description="Model name or alias from `listmodels`, or 'auto'.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Sampling temperature.")
    thinking_mode: ThinkingMode = Field(default="off", description="Reasoning effort for models that think.")
    system_prompt: str | None = Field(
        default=None,
        max_length=PROMPT_CEILING,
        description="Extra instructions added to the system prompt.",
        json_schema_extra=PROMPT_LIMIT,
    )
    images: list[str] = Field(default_factory=list, max_length=8, description="Image data URLs or http(s) URLs.")
    max_output_tokens: int | None = Field(default=None, ge=1, description="Cap on the answer's length in tokens.")
    files: FilePaths = Field(default_factory=list, description="Absolute paths of files to include.")
    continuation_id: str | None = Field(default=None, description="Thread id from an earlier response.")


class ChatOutput(BaseModel):
    answer: str
    model: str
    provider: str
    usage: UsageOut
    cost_usd: float
    latency_ms: float
    upstream_latency_ms: float
    fallbacks: list[str]
    retries: int
    finish_reason: str | None = None
    truncated: bool | None = None
    """True when the answer was cut at the output limit (absent otherwise)."""
    reasoning: str | None = None
    continuation_id: str
    files_included: list[str]
    files_skipped: list[SkippedFile] = Field(default_factory=list)
    earlier_turns_included: int
    correlation_id: str


@dataclass
class Pacing:
    """A token bucket for progress notifications: `burst` at once, then `per_second`. A stream of a few hundred
    chunks is heard chunk by chunk; a flood of tiny ones (an upstream sending 200,000 one-character chunks sent
    as many notifications, 33 MB to the client, and slowed other tenants' calls) ten times a second."""

    burst: float
    per_second: float
    tokens: float = dataclasses.field(init=False)
    at: float = dataclasses.field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def allows(self) -> bool:
        now = time.monotonic()
        self.tokens, self.at = min(self.burst, self.tokens + (now - self.at) * self.per_second), now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ChatTool(Tool[ChatInput, ChatOutput]):
    name = "chat"
    title = "Chat with another model"
    description = (
        "Ask another model (Kimi, GLM, OpenAI, Anthropic, OpenRouter or a local endpoint) for a second opinion, "
        "an explanation or a brainstorm. Returns the answer plus the model, usage and cost."
    )
    input_model = ChatInput
    output_model = ChatOutput
    calls_model = True
    writes_threads = True

    async def run(self, args: ChatInput, ctx: ToolContext) -> ToolResult[ChatOutput]:
        limit = ctx.settings.max_prompt_chars
        for field, text in (("prompt", args.prompt), ("system_prompt", args.system_prompt or "")):
            if len(text) > limit:
                raise InvalidInput(
                    f"`{field}` is {len(text):,} characters; the limit is {limit:,}.",
                    code="prompt_too_large",
                    remedy="Save the content to a file and pass its absolute path in `files` instead, "
                    "or raise EXAI_MAX_PROMPT_CHARS.",
                    details={"field": field, "size": len(text), "limit": limit},
                )
        for index, url in enumerate(args.images):
            if not url.startswith(("data:image/", "http://", "https://")):
                raise InvalidInput(
                    f"images[{index}] is neither an image data URL nor an http(s) URL.",
                    code="invalid_arguments",
                    remedy="Pass data:image/...;base64,... or an http(s) URL.",
                    details={"field": f"images.{index}"},
                )
        system = SYSTEM_PROMPT + (f"\n\n{args.system_prompt}" if args.system_prompt else "")
        plan = ctx.plan(args.model, "balanced", needs_images=bool(args.images))
        thread = await ctx.open_thread(args.continuation_id, args.prompt, adding=2)
        prompt = await build_prompt(
            model=plan.first,
            system=system,
            request=args.prompt,
            turns=thread.turns,
            files=args.files,
            file_access=ctx.files,
            max_output_tokens=args.max_output_tokens,
        )
        images = [ImageInput(url=u) for u in args.images]
        prompt.messages[-1] = prompt.messages[-1].model_copy(update={"images": images})
        request = GenerateRequest(
            system=system,
            messages=prompt.messages,
            temperature=args.temperature,
            thinking=args.thinking_mode,
            max_output_tokens=args.max_output_tokens,
        )
        received = reasoned = 0
        answer_paced, reasoning_paced = Pacing(burst=20, per_second=10), Pacing(burst=1, per_second=1)

        async def on_delta(chunk: StreamChunk) -> None:
            nonlocal received, reasoned
            received += len(chunk.text)
            reasoned += len(chunk.reasoning)
            if chunk.text and answer_paced.allows():
                await ctx.progress(received, None, f"{received} characters received")
            elif not chunk.text and chunk.reasoning and reasoning_paced.allows():  # a model thinking aloud
                await ctx.progress(received, None, f"thinking ({reasoned} characters of reasoning)")

        async def on_event(message: str) -> None:
            await ctx.log("warning", message)

        started = time.perf_counter()
        await ctx.progress(0, None, "routing")
        result = await ctx.generate(
            request,
            plan,
            prompt.input_tokens,
            on_delta=on_delta if ctx.wants_progress else None,
            on_event=on_event,
        )
        response = result.response
        await ctx.record_turns(
            thread,
            [
                TurnRecord(role="user", content=args.prompt, tool=self.name, files=args.files),
                answer_turn(self.name, response),
            ],
            self.name,
        )
        data = ChatOutput(
            answer=response.text,
            model=response.model,
            provider=response.provider,
            usage=UsageOut.of(response.usage),
            cost_usd=round(ctx.model_calls[-1].cost_usd, 6),
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            upstream_latency_ms=round(response.upstream_latency_ms, 2),
            fallbacks=result.fallbacks,
            retries=result.retries,
            finish_reason=response.finish_reason,
            truncated=True if response.truncated else None,
            reasoning=response.reasoning,
            continuation_id=thread.id,
            files_included=prompt.files_included,
            files_skipped=prompt.files_skipped,
            earlier_turns_included=prompt.turns_included,
            correlation_id=ctx.correlation_id,
        )
        cut = f"\n\n{truncation_notice(response)}" if response.truncated else ""
        return ToolResult(text=f"{response.text}{cut}\n\ncontinuation_id: {thread.id}", data=data)
