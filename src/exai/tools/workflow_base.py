"""The multi-step workflow protocol shared by thinkdeep, debug, analyze, codereview, precommit and the rest.

The agent investigates in steps (`step`, `step_number`, `total_steps`, `next_step_required`, `findings`,
`relevant_files`, `confidence`, ...). Every step is committed to the thread before the answer goes out;
intermediate steps return guidance, the final step asks the expert model to analyse everything gathered.
All state lives in the thread, keyed by tool: two workflows never see each other's findings. A step sent
again (same `step_number`) replaces the earlier version, so a failed final step is resumed by sending it again
with the same `continuation_id`: the earlier steps are kept, only the expert call is redone. Steps sent at the
same time on one thread are merged by `Conversations.record` (see `exai.conversations.state`): none is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from exai.conversations.history import SkippedFile, build_prompt
from exai.conversations.state import Confidence, Issue, StateChange, WorkflowRun, WorkflowStep, finish_run, record_step
from exai.conversations.threads import Thread, answer_turn, truncation_notice
from exai.errors import ExaiError, InvalidInput
from exai.providers.router import Category
from exai.providers.types import GenerateRequest, ThinkingMode
from exai.storage.base import TurnRecord
from exai.tools.base import TEXT_LIMIT, ArgumentError, FilePaths, Tool, ToolContext, ToolInput, ToolResult, UsageOut

STEP_TEXT_LIMIT = 4 * TEXT_LIMIT
"""Characters of text in one workflow step, all fields together: each of step, findings and hypothesis at its own
limit, and as much again in issues and files."""
MAX_STEPS = 1000
"""The highest step number and estimate of steps a workflow takes (a 1,000-digit one was stored and echoed)."""


class WorkflowInput(ToolInput):
    step: str = Field(min_length=1, description="What you investigated or plan in this step.")
    step_number: int = Field(ge=1, le=MAX_STEPS, description="This step's number, from 1.")
    total_steps: int = Field(ge=1, le=MAX_STEPS, description="Your current estimate of the steps needed.")
    next_step_required: bool = Field(description="False on the final step: then the expert analysis runs.")
    findings: str = Field(default="", description="What this step found.")
    relevant_files: FilePaths = Field(default_factory=list, description="Absolute paths that matter.")
    issues_found: list[Issue] = Field(default_factory=list)
    hypothesis: str | None = Field(default=None, description="Current theory, if any.")
    confidence: Confidence = "exploring"
    continuation_id: str | None = Field(default=None, description="Thread id from an earlier response.")
    model: str = Field(default="auto", description="Expert model, or 'auto'.")
    thinking_mode: ThinkingMode = "medium"
    use_assistant_model: bool = Field(default=True, description="False skips the expert call.")

    @model_validator(mode="after")
    def _step_text_bounded(self) -> WorkflowInput:
        """A step's text, all fields together, within STEP_TEXT_LIMIT: intermediate steps ask no model and cost no
        tokens, so their size is what bounds a thread's growth (38 issues of 99,000 characters were 3.7 MB a call)."""
        kept = self.as_step(0.0).text_chars
        if kept > STEP_TEXT_LIMIT:
            raise ArgumentError(
                "",
                f"the step's text (step, findings, hypothesis, issues, files) totals {kept:,} characters; at most "
                f"{STEP_TEXT_LIMIT:,} are accepted in all: summarize, and leave details to the files you name",
            )
        return self

    def as_step(self, at: float) -> WorkflowStep:
        return WorkflowStep(
            step=self.step,
            findings=self.findings,
            relevant_files=self.relevant_files,
            issues=self.issues_found,
            hypothesis=self.hypothesis,
            confidence=self.confidence,
            at=at,
        )


class WorkflowOutput(BaseModel):
    status: Literal["in_progress", "complete", "complete_without_expert"]
    continuation_id: str
    step_number: int
    steps_recorded: list[int]
    required_actions: list[str] = Field(default_factory=list)
    issues_found: list[Issue] = Field(default_factory=list)
    expert_analysis: str | None = None
    truncated: bool | None = None
    """True when the expert analysis was cut at the model's output limit (absent otherwise)."""
    model: str | None = None
    provider: str | None = None
    usage: UsageOut | None = None
    files_included: list[str] = Field(default_factory=list)
    files_skipped: list[SkippedFile] = Field(default_factory=list)
    next_call: str


@dataclass(frozen=True)
class WorkflowSpec:
    """What makes one workflow tool different from another: words and settings, not code."""

    name: str
    title: str
    description: str
    expert_role: str
    required_actions: tuple[str, ...]
    category: Category = "reasoning"
    expert: bool = True
    extra_context: tuple[str, ...] = field(default_factory=tuple)


class WorkflowTool(Tool[WorkflowInput, WorkflowOutput]):
    """Runs one `WorkflowSpec`. Holds no state: everything is read from and written to the thread."""

    spec: ClassVar[WorkflowSpec]
    input_model = WorkflowInput
    output_model = WorkflowOutput
    read_only = True
    writes_threads = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            cls.name, cls.title, cls.description = cls.spec.name, cls.spec.title, cls.spec.description
            cls.calls_model = cls.spec.expert

    async def run(self, args: WorkflowInput, ctx: ToolContext) -> ToolResult[WorkflowOutput]:
        if args.step_number > 1 and not args.continuation_id:
            raise InvalidInput(
                f"step_number {args.step_number} needs the continuation_id returned by step 1.",
                code="missing_continuation_id",
                details={"field": "continuation_id"},
                remedy="Pass continuation_id from the previous response, or start again with step_number 1.",
            )
        if args.step_number > args.total_steps:
            args.total_steps = args.step_number
        await self.precheck(args, ctx)
        await ctx.files.read(args.relevant_files)  # refuse unreadable files before anything is recorded
        thread = await ctx.open_thread(args.continuation_id, args.step)
        step = args.as_step(time.time())
        final = not args.next_step_required
        current = thread.state.run_for(self.name, args.step_number)
        previous = current.steps.get(args.step_number) if current else None
        turns = (
            []
            if previous is not None and previous.same_as(step)  # the same step sent again: nothing new to keep
            else [
                TurnRecord(role="user", content=_step_text(self.name, args), tool=self.name, files=args.relevant_files)
            ]
        )
        change = record_step(self.name, args.step_number, step, args.total_steps, final)
        await self._commit(ctx, thread, turns, change)
        run = thread.state.workflows[self.name]
        base = {
            "continuation_id": thread.id,
            "step_number": args.step_number,
            "steps_recorded": run.step_numbers,
            "issues_found": run.issues,
        }

        if not final:
            actions = list(self.spec.required_actions)
            next_call = (
                f"Do the required actions, then call {self.name} with step_number {args.step_number + 1}, "
                f"continuation_id {thread.id}, and next_step_required false on the final step."
            )
            data = WorkflowOutput(status="in_progress", required_actions=actions, next_call=next_call, **base)
            text = (
                f"{self.title}: step {args.step_number}/{args.total_steps} recorded.\nRequired actions:\n"
                + "\n".join(f"- {a}" for a in actions)
                + f"\n{next_call}\ncontinuation_id: {thread.id}"
            )
            return ToolResult(text=text, data=data)

        if not (self.spec.expert and args.use_assistant_model and args.confidence != "certain"):
            summary = _consolidate(self.spec, run)
            await self._commit(
                ctx,
                thread,
                [
                    TurnRecord(
                        role="assistant",
                        tool=self.name,
                        content=f"{self.title} finished without an expert call.\n{summary}",
                    )
                ],
                finish_run(self.name),
            )
            next_call = f"Workflow complete. Continue the thread with any tool using continuation_id {thread.id}."
            data = WorkflowOutput(status="complete_without_expert", next_call=next_call, **base)
            return ToolResult(text=summary + f"\n\ncontinuation_id: {thread.id}", data=data)

        return await self._expert(args, ctx, thread, run, base)

    async def _expert(
        self,
        args: WorkflowInput,
        ctx: ToolContext,
        thread: Thread,
        run: WorkflowRun,
        base: dict[str, Any],
    ) -> ToolResult[WorkflowOutput]:
        earlier = [t for t in thread.turns if t.seq <= run.started_seq or t.tool != self.name]
        request_text = _consolidate(self.spec, run) + "\n\n" + await self.extra_context(args, ctx)
        try:
            ctx.check_room(thread, 1)
            plan = ctx.plan(args.model, self.spec.category)
            model = plan.first
            prompt = await build_prompt(
                model=model,
                system=self.spec.expert_role,
                request=request_text,
                turns=earlier,
                files=run.relevant_files,
                file_access=ctx.files,
            )
            await ctx.progress(0, None, f"consulting {model.name}")
            result = await ctx.generate(
                GenerateRequest(
                    system=self.spec.expert_role,
                    messages=prompt.messages,
                    thinking=args.thinking_mode,
                ),
                plan,
                prompt.input_tokens,
                on_event=lambda message: ctx.log("warning", message),
            )
        except ExaiError as exc:
            exc.details.update(
                {
                    "continuation_id": thread.id,
                    "steps_kept": base["steps_recorded"],
                    "resume": f"Call {self.name} again with continuation_id {thread.id}, step_number "
                    f"{args.step_number} and next_step_required false: the recorded steps are kept and "
                    "only the expert analysis is redone.",
                }
            )
            exc.remedy = (
                (exc.remedy or "") + f" Steps {base['steps_recorded']} are saved; resume with "
                f"continuation_id {thread.id} and the same final step."
            )
            raise
        response = result.response
        await self._commit(ctx, thread, [answer_turn(self.name, response)], finish_run(self.name))
        next_call = f"Review the expert analysis. Continue with any tool using continuation_id {thread.id}."
        data = WorkflowOutput(
            status="complete",
            expert_analysis=response.text,
            truncated=True if response.truncated else None,
            model=response.model,
            provider=response.provider,
            usage=UsageOut.of(response.usage),
            files_included=prompt.files_included,
            files_skipped=prompt.files_skipped,
            next_call=next_call,
            **base,
        )
        cut = f"\n\n{truncation_notice(response)}" if response.truncated else ""
        text = (
            f"{self.title} — expert analysis by {response.model}:\n\n{response.text}{cut}\n\n"
            f"continuation_id: {thread.id}"
        )
        return ToolResult(text=text, data=data)

    async def precheck(self, args: WorkflowInput, ctx: ToolContext) -> None:
        """Refuse a step before anything is recorded (precommit: no diff it could read or was sent)."""

    async def extra_context(self, args: WorkflowInput, ctx: ToolContext) -> str:
        """Anything a tool adds to the expert request beyond the steps (precommit: the diff)."""
        return ""

    async def _commit(self, ctx: ToolContext, thread: Thread, turns: list[TurnRecord], change: StateChange) -> None:
        if turns:
            await ctx.record_turns(thread, turns, self.name, change)
        else:  # nothing new to keep: show the state as if the change were applied
            change(thread.state, thread.record)


def _step_text(tool: str, args: WorkflowInput) -> str:
    parts = [f"[{tool} step {args.step_number}/{args.total_steps}] {args.step}"]
    if args.findings:
        parts.append(f"Findings: {args.findings}")
    if args.hypothesis:
        parts.append(f"Hypothesis: {args.hypothesis}")
    if args.issues_found:
        parts.append("Issues: " + "; ".join(f"[{i.severity}] {i.description}" for i in args.issues_found))
    parts.append(f"Confidence: {args.confidence}")
    return "\n".join(parts)


def _consolidate(spec: WorkflowSpec, run: WorkflowRun) -> str:
    lines = [f"{spec.title}: the agent's investigation, step by step."]
    for number in run.step_numbers:
        step = run.steps[number]
        lines.append(f"\nStep {number}: {step.step}")
        if step.findings:
            lines.append(f"Findings: {step.findings}")
        if step.hypothesis:
            lines.append(f"Hypothesis: {step.hypothesis}")
        for issue in step.issues:
            where = f" at {issue.location}" if issue.location else ""
            lines.append(f"Issue [{issue.severity}]{where}: {issue.description}")
        lines.append(f"Confidence: {step.confidence}")
    lines.extend(spec.extra_context)
    return "\n".join(lines)
