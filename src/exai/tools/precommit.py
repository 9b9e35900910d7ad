"""`precommit`: review pending changes; the server reads the diff itself when the repository is in its roots.

Git runs only through `exai.security.git`, which confines it to repositories inside the file roots, on local
data; `exai.tools.pending_changes` builds the diff, untracked files included, within the size cap.
"""

from __future__ import annotations

from pydantic import Field

from exai.errors import InvalidInput, PermissionDeniedError
from exai.security.files import FileAccess, quote_path
from exai.security.git import GitOutputTooLarge, Repository, check_revision
from exai.tools.base import ToolContext
from exai.tools.pending_changes import Budget, staged, untracked, worktree
from exai.tools.workflow_base import WorkflowInput, WorkflowSpec, WorkflowTool

GIT_TIMEOUT = 30.0


class PrecommitInput(WorkflowInput):
    path: str | None = Field(default=None, description="Absolute path of the git repository.")
    compare_to: str | None = Field(default=None, description="Git ref to diff against instead of HEAD.")
    include_staged: bool = True
    include_unstaged: bool = Field(default=True, description="Unstaged changes, untracked files included.")
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
        """Refuse a repository git may not run in, or a bad ref, before the final step is recorded."""
        assert isinstance(args, PrecommitInput)
        if args.next_step_required or args.diff:
            return
        repo = await _repository(args, ctx.files)
        if args.compare_to:
            await repo.commit(args.compare_to)

    async def extra_context(self, args: WorkflowInput, ctx: ToolContext) -> str:
        assert isinstance(args, PrecommitInput)
        limit = ctx.settings.max_file_bytes_per_call
        if args.diff:
            diff = args.diff
            if len(diff.encode()) > limit:
                raise _too_large(limit)
        else:
            diff = await _pending_changes(args, ctx.files, limit)
        return "## Pending changes (git diff)\n" + (diff or "(no changes)")


async def _repository(args: PrecommitInput, files: FileAccess) -> Repository:
    if args.compare_to is not None:
        check_revision(args.compare_to)
    if not args.path:
        raise _diff_required("no path was given")
    try:
        return await Repository.open(args.path, files, timeout=GIT_TIMEOUT)
    except PermissionDeniedError as exc:
        if exc.code == "no_file_roots":
            raise _diff_required("this server has no file roots") from None
        if exc.code == "outside_roots":
            raise _diff_required(f"{quote_path(args.path)} is outside this server's file roots") from None
        raise


def _diff_required(where: str) -> InvalidInput:
    return InvalidInput(
        f"Cannot read the changes: {where}.",
        code="diff_required",
        remedy="Run `git diff --staged` and `git diff` (or `git diff <ref>`) yourself and pass the output in "
        "`diff`, or pass `path` of a repository inside EXAI_FILE_ROOTS.",
        details={"field": "diff"},
    )


async def _pending_changes(args: PrecommitInput, files: FileAccess, limit: int) -> str:
    repo = await _repository(args, files)
    budget = Budget(limit)
    parts: list[str] = []
    try:
        if args.compare_to:
            parts.append(await worktree(repo, files, budget, [await repo.commit(args.compare_to)]))
        else:
            if args.include_staged:
                parts.append(await staged(repo, budget))
            if args.include_unstaged:
                parts.append(await worktree(repo, files, budget, []))
        if args.include_unstaged:
            parts.append(await untracked(repo, files, budget))
    except GitOutputTooLarge:
        raise _too_large(limit) from None
    return "\n".join(p for p in parts if p.strip())


def _too_large(limit: int) -> InvalidInput:
    return InvalidInput(
        f"The diff is larger than {limit:,} bytes.",
        code="diff_too_large",
        remedy="Review in smaller parts (use compare_to, commit or stash some changes, or pass `diff` yourself).",
    )
