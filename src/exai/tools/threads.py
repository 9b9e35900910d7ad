"""`threads`: find your recent conversation threads again, and read one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from exai.errors import InvalidInput
from exai.storage.base import ThreadRecord
from exai.tools.base import Tool, ToolContext, ToolInput, ToolResult

PREVIEW_CHARS = 2000


class ThreadsInput(ToolInput):
    action: Literal["list", "show"] = "list"
    thread_id: str | None = Field(default=None, description="The thread to show (action 'show').")
    limit: int = Field(default=20, ge=1, le=200)


class ThreadSummary(BaseModel):
    id: str
    title: str
    tools: list[str]
    turns: int
    last_activity: str
    expires: str


class TurnOut(BaseModel):
    seq: int
    role: str
    tool: str
    model: str | None = None
    files: list[str]
    content: str
    truncated: bool


class ThreadsOutput(BaseModel):
    threads: list[ThreadSummary] = Field(default_factory=list)
    thread: ThreadSummary | None = None
    turns: list[TurnOut] = Field(default_factory=list)
    workflows: dict[str, str] = Field(default_factory=dict)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class ThreadsTool(Tool[ThreadsInput, ThreadsOutput]):
    name = "threads"
    title = "Conversation threads"
    description = "List your recent threads (id, title, tools, last activity) or show one, to continue it."
    input_model = ThreadsInput
    output_model = ThreadsOutput

    async def run(self, args: ThreadsInput, ctx: ToolContext) -> ToolResult[ThreadsOutput]:
        if args.action == "list":
            records = await ctx.list_threads(args.limit)
            summaries = [_summary(r) for r in records]
            text = (
                "\n".join(
                    f"{s.id}  {s.last_activity}  [{', '.join(s.tools)}] {s.turns} turns  {s.title}" for s in summaries
                )
                or "No threads yet."
            )
            return ToolResult(text=text, data=ThreadsOutput(threads=summaries))
        if not args.thread_id:
            raise InvalidInput(
                "action 'show' needs thread_id.",
                code="invalid_arguments",
                remedy="Pass thread_id from the list.",
                details={"field": "thread_id"},
            )
        thread = await ctx.read_thread(args.thread_id)  # a full thread can still be shown
        turns = [
            TurnOut(
                seq=t.seq,
                role=t.role,
                tool=t.tool,
                model=t.model,
                files=t.files,
                content=t.content[:PREVIEW_CHARS],
                truncated=len(t.content) > PREVIEW_CHARS,
            )
            for t in thread.turns[-args.limit :]
        ]
        workflows = {name: run.status for name, run in thread.state.workflows.items()}
        summary = _summary(thread.record)
        text = f"{summary.title} ({summary.id}), {summary.turns} turns\n" + "\n".join(
            f"#{t.seq} {t.role} via {t.tool}: {t.content[:200]}" for t in turns
        )
        return ToolResult(text=text, data=ThreadsOutput(thread=summary, turns=turns, workflows=workflows))


def _summary(record: ThreadRecord) -> ThreadSummary:
    return ThreadSummary(
        id=record.id,
        title=record.title,
        tools=record.tools,
        turns=record.turn_count,
        last_activity=_iso(record.updated_at),
        expires=_iso(record.expires_at),
    )
