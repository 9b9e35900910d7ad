"""The typed state a thread carries beside its turns: one workflow run per tool.

A change to the state is a function applied to the thread as it is *now* (`StateChange`): when another call
committed first, `Conversations.record` re-reads the thread and applies the change again, so two calls on one
thread merge instead of the later one overwriting the earlier one's steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from exai.errors import InvalidInput
from exai.storage.base import ThreadRecord

THREAD_STEPS_TEXT_LIMIT = 2_000_000
"""Characters of step text a thread's workflow runs keep, all tools together: five steps at the step limit, a
million characters and more for a large-context expert, bounded (one run per tool once held 5 million, escaped)."""
Confidence = Literal["exploring", "low", "medium", "high", "very_high", "almost_certain", "certain"]


class Issue(BaseModel):
    severity: Literal["critical", "high", "medium", "low"]
    description: str
    location: str | None = None


class WorkflowStep(BaseModel):
    step: str
    findings: str = ""
    relevant_files: list[str] = Field(default_factory=list)
    issues: list[Issue] = Field(default_factory=list)
    hypothesis: str | None = None
    confidence: Confidence = "exploring"
    at: float = 0.0

    def same_as(self, other: WorkflowStep) -> bool:
        return self.model_dump(exclude={"at"}) == other.model_dump(exclude={"at"})

    @property
    def text_chars(self) -> int:
        """Characters of text the step keeps (what its size in the thread's state grows with)."""
        texts = [self.step, self.findings, self.hypothesis or "", *self.relevant_files]
        texts += [text for issue in self.issues for text in (issue.description, issue.location or "")]
        return sum(len(text) for text in texts)

    @property
    def stored_chars(self) -> int:
        """About the characters the step takes in a stored thread state: its text and the JSON around it (200 empty
        issues are 12,000 characters there)."""
        return self.text_chars + 160 + 64 * len(self.issues) + 4 * len(self.relevant_files)


class WorkflowRun(BaseModel):
    steps: dict[int, WorkflowStep] = Field(default_factory=dict)
    status: Literal["in_progress", "expert_pending", "complete"] = "in_progress"
    total_steps: int = 1
    started_seq: int = 0  # turns up to this one came before the run

    @property
    def step_numbers(self) -> list[int]:
        return sorted(self.steps)

    @property
    def relevant_files(self) -> list[str]:
        return list(dict.fromkeys(path for n in self.step_numbers for path in self.steps[n].relevant_files))

    @property
    def issues(self) -> list[Issue]:
        return [issue for n in self.step_numbers for issue in self.steps[n].issues]

    @property
    def stored_chars(self) -> int:
        return sum(step.stored_chars for step in self.steps.values())


class ThreadState(BaseModel):
    workflows: dict[str, WorkflowRun] = Field(default_factory=dict)

    @property
    def stored_chars(self) -> int:
        """About the characters every tool's run takes in the stored state (see `WorkflowStep.stored_chars`)."""
        return sum(run.stored_chars for run in self.workflows.values())

    def run_for(self, tool: str, step_number: int) -> WorkflowRun | None:
        """The run a step continues; None when it starts a new one (none yet, or step 1 after a finished run)."""
        run = self.workflows.get(tool)
        if run is None or (step_number == 1 and run.status == "complete"):
            return None
        return run


StateChange = Callable[[ThreadState, ThreadRecord], None]


def record_step(tool: str, number: int, step: WorkflowStep, total_steps: int, final: bool) -> StateChange:
    """Keep a workflow step (a step sent again replaces its earlier version)."""

    def apply(state: ThreadState, thread: ThreadRecord) -> None:
        run = state.run_for(tool, number)
        if run is None:
            run = state.workflows[tool] = WorkflowRun(started_seq=thread.turn_count)
        before = state.stored_chars  # with the JSON around the text: 10,000 empty issues are not nothing
        run.steps[number] = step
        kept = state.stored_chars
        if kept > THREAD_STEPS_TEXT_LIMIT and kept > before:  # as committed; shrinking always fits
            raise InvalidInput(
                f"This thread's workflow runs would keep {kept:,} characters of steps, findings and issues; a "
                f"thread keeps at most {THREAD_STEPS_TEXT_LIMIT:,} over all its runs (they are stored with it, and a "
                "run is sent whole to the expert model).",
                code="workflow_too_large",
                details={"chars": kept, "limit": THREAD_STEPS_TEXT_LIMIT},
                remedy="Send this step shorter. To finish the run as it is, send your last step_number again, shorter, "
                "with next_step_required false (a step sent again replaces its earlier text; add use_assistant_model "
                "false if the expert would get too much). Or start a new run in a new thread (step_number 1 without "
                "continuation_id).",
            )
        run.total_steps = max(total_steps, number)
        run.status = "expert_pending" if final else "in_progress"

    return apply


def finish_run(tool: str) -> StateChange:
    """Mark the tool's workflow run complete."""

    def apply(state: ThreadState, thread: ThreadRecord) -> None:
        if tool in state.workflows:
            state.workflows[tool].status = "complete"

    return apply
