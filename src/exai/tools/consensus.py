"""`consensus`: several models answer the same question at once, each blind to the others and with its stance."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field

from exai.conversations.history import SkippedFile, build_prompt
from exai.conversations.threads import truncation_notice
from exai.errors import ExaiError, InvalidInput
from exai.providers.types import GenerateRequest
from exai.storage.base import TurnRecord
from exai.tools.base import FilePaths, Tool, ToolContext, ToolInput, ToolResult

MAX_REPEATS_PER_MODEL = 3
"""How often one call may ask the same model (once per stance): eight copies of one model with different stance
prompts would turn one call into eight upstream requests to one model."""
Stance = Literal["for", "against", "neutral"]
STANCES: dict[str, str] = {
    "for": "Argue in favour of the proposal: make the strongest honest case for it, and say where it is weak.",
    "against": "Argue against the proposal: make the strongest honest case against it, and say where it is right.",
    "neutral": "Weigh the proposal impartially: benefits, costs, risks and alternatives.",
}
ROLE = (
    "You are one of several independent experts consulted on a technical proposal. You do not see the other "
    "experts' answers. {stance} End with a verdict line: 'Verdict: <support|oppose|mixed> — <one sentence>'."
)


class ModelStance(BaseModel):
    model: str = Field(description="Model name or alias.")
    stance: Stance = "neutral"
    stance_prompt: str | None = Field(default=None, description="Custom instructions replacing the stance's.")


class ConsensusInput(ToolInput):
    prompt: str = Field(min_length=1, description="The proposal or question to weigh.")
    models: list[ModelStance] = Field(min_length=1, max_length=8, description="Models to consult, with stances.")
    files: FilePaths = Field(default_factory=list, description="Absolute paths of files to include.")
    continuation_id: str | None = None
    per_model_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Each model's deadline; the server's call deadline (EXAI_CALL_DEADLINE_SECONDS) when absent, "
        "and never more than it.",
    )


class Opinion(BaseModel):
    model: str
    stance: str
    ok: bool
    answer: str | None = None
    truncated: bool | None = None
    """True when this model's answer was cut at its output limit (absent otherwise)."""
    provider: str | None = None
    latency_ms: float
    error: dict[str, object] | None = None
    files_skipped: list[SkippedFile] = Field(default_factory=list)


class ConsensusOutput(BaseModel):
    continuation_id: str
    opinions: list[Opinion]
    succeeded: int
    failed: int
    wall_ms: float


async def _all_or_none(calls: list[Coroutine[Any, Any, Opinion]]) -> list[Opinion]:
    """Run every consultation at once; an unexpected exception in one cancels the others and is raised as is."""
    opinions: list[Opinion | None] = [None] * len(calls)

    async def keep(index: int, call: Coroutine[Any, Any, Opinion]) -> None:
        opinions[index] = await call

    try:
        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                group.start_soon(keep, index, call)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [opinion for opinion in opinions if opinion is not None]


class ConsensusTool(Tool[ConsensusInput, ConsensusOutput]):
    name = "consensus"
    title = "Consensus"
    description = "Consult several models concurrently, each blind to the others with a for/against/neutral stance."
    input_model = ConsensusInput
    output_model = ConsensusOutput
    calls_model = True
    writes_threads = True

    async def run(self, args: ConsensusInput, ctx: ToolContext) -> ToolResult[ConsensusOutput]:
        # Each expert is asked exactly the model named: consensus never substitutes one model for another.
        plans = [ctx.plan(entry.model, allow_fallback=False) for entry in args.models]
        targets = [plan.first for plan in plans]
        seen = {(t.name, e.stance, e.stance_prompt) for t, e in zip(targets, args.models, strict=True)}
        if len(seen) != len(args.models):
            raise InvalidInput(
                "The same model is listed twice with the same stance.",
                code="duplicate_model",
                remedy="Give each repeated model a different stance.",
                details={"field": "models"},
            )
        repeated = sorted(name for name, n in Counter(t.name for t in targets).items() if n > MAX_REPEATS_PER_MODEL)
        if repeated:
            raise InvalidInput(
                f"Model {', '.join(repeated)} is listed more than {MAX_REPEATS_PER_MODEL} times; one consensus call "
                f"may ask each model at most {MAX_REPEATS_PER_MODEL} times (once per stance).",
                code="model_repeated",
                remedy="Ask different models, or fewer stances of the same one.",
                details={"field": "models", "models": repeated},
            )
        await ctx.files.read(args.files)
        thread = await ctx.open_thread(args.continuation_id, args.prompt, adding=2)

        async def consult(entry: ModelStance, index: int) -> Opinion:
            target = targets[index]
            system = ROLE.format(stance=entry.stance_prompt or STANCES[entry.stance])
            started = time.perf_counter()
            try:
                prompt = await build_prompt(
                    model=target,
                    system=system,
                    request=args.prompt,
                    turns=thread.turns,
                    files=args.files,
                    file_access=ctx.files,
                )
                result = await ctx.generate(
                    GenerateRequest(system=system, messages=prompt.messages),
                    plans[index],
                    prompt.input_tokens,
                    deadline_seconds=args.per_model_timeout_seconds,
                )
            except ExaiError as exc:
                return Opinion(
                    model=target.name,
                    stance=entry.stance,
                    ok=False,
                    error=exc.to_dict(),
                    latency_ms=round((time.perf_counter() - started) * 1000, 1),
                )
            response = result.response
            return Opinion(
                model=target.name,
                stance=entry.stance,
                ok=True,
                answer=response.text + (f"\n\n{truncation_notice(response)}" if response.truncated else ""),
                truncated=True if response.truncated else None,
                provider=response.provider,
                files_skipped=prompt.files_skipped,
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
            )

        started = time.perf_counter()
        await ctx.progress(0, len(args.models), "consulting models")
        with ctx.asking_models():  # a cancellation cuts the call until every member has answered or failed
            opinions = await _all_or_none([consult(entry, i) for i, entry in enumerate(args.models)])
        wall = (time.perf_counter() - started) * 1000
        summary = "\n\n".join(
            f"## {o.model} ({o.stance})\n" + (o.answer or f"FAILED: {o.error and o.error.get('message')}")
            for o in opinions
        )
        await ctx.record_turns(
            thread,
            [
                TurnRecord(role="user", content=args.prompt, tool=self.name, files=args.files),
                TurnRecord(role="assistant", content=summary, tool=self.name),
            ],
            self.name,
        )
        succeeded = sum(o.ok for o in opinions)
        data = ConsensusOutput(
            continuation_id=thread.id,
            opinions=opinions,
            succeeded=succeeded,
            failed=len(opinions) - succeeded,
            wall_ms=round(wall, 1),
        )
        return ToolResult(text=f"{summary}\n\ncontinuation_id: {thread.id}", data=data)
