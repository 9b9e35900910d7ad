"""`challenge`: make the agent re-examine a claim critically instead of agreeing by reflex."""

from __future__ import annotations

from pydantic import BaseModel, Field

from exai.tools.base import Tool, ToolContext, ToolInput, ToolResult

INSTRUCTIONS = (
    "CRITICAL REASSESSMENT. Do not simply agree. Examine the statement below on its merits: check it against "
    "the code and facts you have, state whether it is right, partly right or wrong, and why. If you were wrong "
    "before, say so plainly; if the statement is wrong, explain with evidence."
)


class ChallengeInput(ToolInput):
    prompt: str = Field(min_length=1, description="The statement, claim or pushback to examine critically.")


class ChallengeOutput(BaseModel):
    original_statement: str
    instructions: str


class ChallengeTool(Tool[ChallengeInput, ChallengeOutput]):
    name = "challenge"
    title = "Challenge"
    description = "Re-examine a statement critically instead of agreeing by reflex (no model call)."
    input_model = ChallengeInput
    output_model = ChallengeOutput

    async def run(self, args: ChallengeInput, ctx: ToolContext) -> ToolResult[ChallengeOutput]:
        data = ChallengeOutput(original_statement=args.prompt, instructions=INSTRUCTIONS)
        return ToolResult(text=f"{INSTRUCTIONS}\n\nStatement:\n{args.prompt}", data=data)
