"""The pending changes of a repository inside the roots, as one diff within a byte budget.

Git reads the work tree itself, so before a diff that reads it (unstaged changes, or a diff against
`compare_to`) every changed file is checked as `FileAccess` would check it: a file with more than one hard link,
a device, FIFO or socket, or a path leading outside the roots is left out of the diff and named with the
reason. Untracked files belong to the pending changes too (a new file with a password in it is what a review
must catch): at most `MAX_UNTRACKED` of them are considered, each read through the same file checks and shown as
a new-file diff or named with the reason it was left out. Every line, those naming a file that was left out
included, counts against the budget.
"""

from __future__ import annotations

import asyncio

from exai.errors import ExaiError, InvalidInput
from exai.security.files import FileAccess, quote_path
from exai.security.git import DIFF_OPTIONS, GitOutputTooLarge, Repository

MAX_UNTRACKED = 1_000
MAX_SKIPPED = 200
_MAX_LISTING = 8_000_000


class Budget:
    """The bytes the diff may still take; `take` raises GitOutputTooLarge once they are spent."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, text: str) -> str:
        self.left -= len(text.encode()) + 1
        if self.left < 0:
            raise GitOutputTooLarge
        return text


async def staged(repo: Repository, budget: Budget) -> str:
    """The staged changes (index against HEAD: no work-tree file is read)."""
    return budget.take(await repo.run(["diff", *DIFF_OPTIONS, "--cached", "--"], max_output=budget.left))


async def worktree(repo: Repository, files: FileAccess, budget: Budget, revisions: list[str]) -> str:
    """The diff of the work tree against the index, or against `revisions`, without files git must not read."""
    names, _ = await repo.names(
        ["diff", *DIFF_OPTIONS, "--name-only", "--no-renames", "-z", "--end-of-options", *revisions, "--"],
        max_output=budget.left,
    )
    refused = await asyncio.to_thread(_refused, files, repo, names)
    if len(refused) > MAX_SKIPPED:
        raise InvalidInput(
            f"{len(refused):,} changed files cannot be shown (hard links, links leading outside the roots, or "
            f"special files); the limit is {MAX_SKIPPED:,}.",
            code="unsafe_work_tree",
            remedy="Replace hard-linked files with copies (`cp --no-preserve=links`), or pass the diff in `diff`.",
            details={"field": "path"},
        )
    notes = [budget.take(f"# changed file {quote_path(name)} not shown: {reason}") for name, reason in refused]
    excluded = [f":(exclude,literal){name}" for name, _ in refused]
    diff = await repo.run(
        ["diff", *DIFF_OPTIONS, "--end-of-options", *revisions, "--", *excluded], max_output=budget.left
    )
    return "\n".join([*notes, budget.take(diff)])


def _refused(files: FileAccess, repo: Repository, names: list[str]) -> list[tuple[str, str]]:
    """The changed files git must not read, each with the reason (blocking)."""
    refused = []
    for name in names:
        try:
            files.check_entry(str(repo.top_level / name))
        except ExaiError as exc:
            refused.append((name, exc.message))
    return refused


async def untracked(repo: Repository, files: FileAccess, budget: Budget) -> str:
    """Untracked, not ignored files as new-file diffs; files the checks refuse are named with the reason."""
    names, complete = await repo.names(
        ["ls-files", "--others", "--exclude-standard", "-z"], max_output=_MAX_LISTING, partial=True
    )
    blocks = []
    for name in names[:MAX_UNTRACKED]:
        try:
            (item,) = await files.read([str(repo.top_level / name)])
        except ExaiError as exc:
            blocks.append(budget.take(f"# untracked file {quote_path(name)} not shown: {exc.message}"))
            continue
        lines = item.text.splitlines()
        shown = name.encode(errors="surrogateescape").decode(errors="replace")
        blocks.append(
            budget.take(
                f"diff --git a/{shown} b/{shown}\nnew file (untracked)\n--- /dev/null\n+++ b/{shown}\n"
                f"@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{line}\n" for line in lines)
            )
        )
    if len(names) > MAX_UNTRACKED or not complete:
        more = f"{len(names) - MAX_UNTRACKED:,}{'' if complete else ' or more'}"
        blocks.append(
            budget.take(
                f"# {more} more untracked files not considered: only the first {MAX_UNTRACKED:,} are. List build "
                "output in .gitignore, or pass the diff in `diff`."
            )
        )
    return "\n".join(blocks)
