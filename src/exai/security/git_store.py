"""A repository's git directories hold nothing from outside the file roots.

Git reads objects and refs from more places than `.git`: `objects/info/alternates` (and `http-alternates`) add
another repository's object store, and any file or directory in the git directory may be a symbolic link. Either
would let `compare_to=<commit>` show content from outside the roots. So a repository is refused when its
git directories contain an alternates file or any symbolic link that resolves outside the roots.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from exai.errors import InvalidInput
from exai.security.files import FileAccess, quote_path

_ALTERNATES = ("objects/info/alternates", "objects/info/http-alternates")


def check_git_directories(files: FileAccess, directories: list[Path]) -> None:
    """Refuse alternates, and any link in the git directories that leads outside the roots (blocking)."""
    for directory in {d for d in directories if not any(d != o and d.is_relative_to(o) for o in directories)}:
        for name in _ALTERNATES:
            if os.path.lexists(directory / name):
                raise _refused(f"uses another repository's object store ({name}), which may lie outside")
        for link in _links(directory):
            if not files.contains(Path(os.path.realpath(link))):
                raise _refused(f"contains {quote_path(str(link.relative_to(directory)))}, a link that leads outside")


def _links(top: Path) -> Iterator[Path]:
    """Every symbolic link under `top`, which is walked without following any link."""
    pending = [top]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    yield Path(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))


def _refused(what: str) -> InvalidInput:
    return InvalidInput(
        f"The repository's git directory {what} the server's file roots, so the server will not run git in it.",
        code="repository_outside_roots",
        remedy="Run `git diff --staged` and `git diff` yourself and pass the output in `diff`, or use a clone "
        "whose objects and refs all lie inside EXAI_FILE_ROOTS (`git repack -a -d`, then remove the alternates).",
        details={"field": "path"},
    )
