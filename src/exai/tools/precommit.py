"""`precommit`: review pending changes; the server reads the diff itself when the repository is in its roots."""

from __future__ import annotations

import asyncio

from pydantic import Field

from exai.observability.errors import ToolFailure, ValidationError
from exai.tools.base import ToolContext
from exai.tools.workflow import WorkflowInput, WorkflowSpec, WorkflowTool

GIT_TIMEOUT = 30.0


class PrecommitInput(WorkflowInput):
    path: str | None = Field(default=None, description="Absolute path of the git repository.")
    compare_to: str | None = Field(default=None, description="Git ref to diff against instead of HEAD.")
    include_staged: bool = True
    include_unstaged: bool = True
    diff: str | None = Field(default=None, description="The diff, when the server cannot read the repository.")


class PrecommitTool(WorkflowTool):
    spec = WorkflowSpec(
        "precommit",
        "Pre-commit review",
        "Step-by-step review of pending git changes before commit; the server reads the diff when it may.",
        "You are a senior engineer reviewing changes before they are committed. Check that the changes do what "
        "the agent says, find bugs, regressions, missing tests and security issues in the diff, and say whether "
        "it is ready to commit. Cite files and lines; rank by severity.",
        (
            "Review each changed file against its intent",
            "Check for missing tests, docs and edge cases",
            "Record issues with severity and location",
        ),
    )
    input_model = PrecommitInput

    async def precheck(self, args: WorkflowInput, ctx: ToolContext) -> None:
        assert isinstance(args, PrecommitInput)
        if args.next_step_required or args.diff:
            return
        if not args.path or not ctx.services.files.is_allowed(args.path):
            where = f"'{args.path}' is outside this server's file roots" if args.path else "no path was given"
            raise ValidationError(
                f"Cannot read the changes: {where}.",
                code="diff_required",
                remedy="Run `git diff --staged` and `git diff` (or `git diff <ref>`) yourself and pass the output in "
                "`diff`, or pass `path` of a repository inside EXAI_FILE_ROOTS.",
                details={"field": "diff"},
            )

    async def extra_context(self, args: WorkflowInput, ctx: ToolContext) -> str:
        assert isinstance(args, PrecommitInput)
        if args.diff:
            diff = args.diff
        else:
            assert args.path is not None
            parts = []
            if args.compare_to:
                parts.append(await _git(args.path, "diff", "--no-color", args.compare_to))
            else:
                if args.include_staged:
                    parts.append(await _git(args.path, "diff", "--no-color", "--cached"))
                if args.include_unstaged:
                    parts.append(await _git(args.path, "diff", "--no-color"))
            diff = "\n".join(p for p in parts if p.strip())
        limit = ctx.services.settings.max_files_bytes
        if len(diff.encode()) > limit:
            raise ValidationError(
                f"The diff is larger than {limit:,} bytes.",
                code="diff_too_large",
                remedy="Review in smaller parts (use compare_to or fewer files).",
            )
        return "## Pending changes (git diff)\n" + (diff or "(no changes)")


async def _git(path: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "git", "-C", path, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), GIT_TIMEOUT)
    except TimeoutError:
        process.kill()
        raise ToolFailure(
            "git did not finish in time.", code="git_timeout", remedy="Pass the diff in `diff` instead."
        ) from None
    if process.returncode != 0:
        raise ToolFailure(
            f"git failed in '{path}': {err.decode(errors='replace').strip()[:300]}",
            code="git_failed",
            remedy="Check that path is a git repository and the ref exists, or pass the diff in `diff`.",
        )
    return out.decode(errors="replace")
