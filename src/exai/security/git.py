"""Running git on a repository inside the file roots, on local data only, and nothing else.

Git is powerful: repository configuration can name commands (`core.fsmonitor`, filters, external diffs,
textconv, pagers, transports and their helpers), a partial clone fetches missing objects from a remote,
discovery walks up to any parent `.git`, a `.git` file can point anywhere, alternates and links in the git
directory can bring in objects from elsewhere, and revision arguments that start with `-` are options
(`--output=FILE`). So every call here:

- finds the repository with `GIT_CEILING_DIRECTORIES` set just above the roots, and refuses it unless its
  top level and its git directories all resolve inside the roots, hold no alternates and no link leading
  outside (`exai.security.git_store`), and its own configuration asks for nothing refused by
  `exai.security.git_config` (fetching, transports, remote helpers, includes); later calls name the
  directories explicitly;
- runs with a scrubbed environment (no inherited `GIT_*`, no system or global config, `HOME` nowhere), every
  transport disabled twice over (`GIT_ALLOW_PROTOCOL` empty, which no configuration can widen, and
  `protocol.<name>.allow=never` for every protocol git knows, which beats the repository's value for the same
  key), no lazy fetching, `core.fsmonitor` and hooks off, no pager, no optional locks, and every filter driver
  of the repository emptied; diffs add `--no-ext-diff --no-textconv --ignore-submodules`;
- verifies a user's revision with `rev-parse --verify --end-of-options REV^{commit}` and passes on only the
  commit id it names;
- runs as an asyncio subprocess in its own process group, killed at a deadline or when its output passes a cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from exai.errors import InvalidInput, ToolFailure
from exai.security.files import FileAccess, quote_path
from exai.security.git_config import ConfigEntry, check_config, neutralising_environment, parse_config_list
from exai.security.git_store import check_git_directories

_STDERR_CAP = 16_384
_CHUNK = 65_536
_MAX_REF_CHARS = 256
_BAD_REF = re.compile(r"[\x00-\x20\x7f]")
_PROTOCOLS = ("ext", "fd", "file", "git", "http", "https", "ftp", "ftps", "ssh")
_SAFE_OPTIONS = (
    "-c", "core.fsmonitor=false",
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.pager=cat",
    "-c", "diff.external=",
    "-c", "credential.helper=",
    "-c", "protocol.allow=never",
    *(option for name in _PROTOCOLS for option in ("-c", f"protocol.{name}.allow=never")),
    "--no-pager",
    "--no-optional-locks",
)  # fmt: skip
DIFF_OPTIONS = ("--no-color", "--no-ext-diff", "--no-textconv", "--ignore-submodules=all")


class GitOutputTooLarge(Exception):
    """The command wrote more than the caller allowed; it was killed."""


def safe_environment(ceilings: list[Path]) -> dict[str, str]:
    """The whole environment git sees: nothing inherited but PATH and the locale."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "XDG_CONFIG_HOME": "/nonexistent",
        "LC_ALL": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "",  # no transport at all, whatever any configuration allows
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_NO_LAZY_FETCH": "1",  # git 2.45+: never fetch a missing object
        "GIT_OPTIONAL_LOCKS": "0",
        "GIT_PAGER": "cat",
        "PAGER": "cat",
    }
    if ceilings:
        env["GIT_CEILING_DIRECTORIES"] = os.pathsep.join(map(str, ceilings))
    return env


def _ceilings(files: FileAccess) -> list[Path]:
    """The parent of every root that is not itself inside a root: discovery never climbs above the roots."""
    return sorted({root.parent for root in files.roots if root.parent != root and not files.contains(root.parent)})


async def run_git(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    max_output: int,
    ok_codes: tuple[int, ...] = (0,),
) -> str:
    """Run `git <safe options> <args>`; the decoded stdout, or a clear error. Never blocks the event loop."""
    out = await _run_git(args, cwd=cwd, env=env, timeout=timeout, max_output=max_output, ok_codes=ok_codes)
    if len(out) > max_output:
        raise GitOutputTooLarge
    return out.decode(errors="replace")


async def _run_git(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float, max_output: int, ok_codes: tuple[int, ...]
) -> bytes:
    """stdout, or max_output + 1 bytes of it when git wrote more (git is killed then), or a clear error."""
    process = await asyncio.create_subprocess_exec(
        "git",
        *_SAFE_OPTIONS,
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(_collect(process, max_output), timeout)
    except TimeoutError:
        raise ToolFailure(
            f"git did not finish within {timeout:g} s.", code="git_timeout", remedy="Pass the diff in `diff` instead."
        ) from None
    finally:
        if process.returncode is None:
            _kill(process)
            await process.wait()
    if len(out) > max_output:
        return out
    if process.returncode not in ok_codes:
        message = err[:_STDERR_CAP].decode(errors="replace").strip()[:300]
        raise ToolFailure(
            f"git {args[0]} failed: {message}",
            code="git_failed",
            remedy="Check that path is a git repository, or pass the diff in `diff`.",
        )
    return out


async def _collect(process: asyncio.subprocess.Process, max_output: int) -> tuple[bytes, bytes]:
    """stdout up to max_output + 1 bytes (then the process is killed) and the first bytes of stderr."""
    assert process.stdout is not None and process.stderr is not None
    errors = asyncio.create_task(_read_capped(process.stderr, _STDERR_CAP, drain=True))
    try:
        out = await _read_capped(process.stdout, max_output, drain=False)
        if len(out) > max_output:
            _kill(process)
        err = await errors
        await process.wait()
    finally:
        errors.cancel()
    return out, err


async def _read_capped(stream: asyncio.StreamReader, cap: int, *, drain: bool) -> bytes:
    """Up to cap + 1 bytes; then stop reading, or keep reading to EOF and discard (so the writer never blocks)."""
    data = bytearray()
    while drain or len(data) <= cap:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            break
        if len(data) <= cap:
            data += chunk
    return bytes(data[: cap + 1])


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def check_revision(ref: str) -> None:
    """Refuse what can never be a revision (or could be read as an option) before git sees it."""
    shown = quote_path(ref)
    if ref.startswith("-"):
        raise InvalidInput(
            f"compare_to {shown} starts with '-': git would read it as an option, not a revision.",
            code="invalid_ref",
            remedy="Pass a branch, tag or commit id, e.g. `main` or `HEAD~1`.",
            details={"field": "compare_to"},
        )
    if not ref or len(ref) > _MAX_REF_CHARS or _BAD_REF.search(ref):
        raise InvalidInput(
            f"compare_to {shown} is not a revision (empty, over {_MAX_REF_CHARS} characters, or containing "
            "spaces or control characters).",
            code="invalid_ref",
            remedy="Pass a branch, tag or commit id, e.g. `main` or `HEAD~1`.",
            details={"field": "compare_to"},
        )


@dataclass(frozen=True)
class Repository:
    """A repository whose work tree and git directories were verified to lie inside the roots."""

    top_level: Path
    env: dict[str, str]
    timeout: float

    @classmethod
    async def open(cls, path: str, files: FileAccess, *, timeout: float) -> Repository:
        start = await asyncio.to_thread(files.directory, path)
        env = safe_environment(_ceilings(files))
        try:
            found = await run_git(
                ["rev-parse", "--path-format=absolute", "--show-toplevel", "--absolute-git-dir", "--git-common-dir"],
                cwd=start,
                env=env,
                timeout=timeout,
                max_output=16_384,
            )
        except ToolFailure as exc:
            if exc.code != "git_failed":
                raise
            found, reason = "", f" ({exc.message})"
        else:
            reason = ""
        lines = found.splitlines()
        if len(lines) != 3:
            raise InvalidInput(
                f"{quote_path(path)} is not inside a git work tree within this server's file roots (git does not "
                f"look for a repository above the roots){reason}.",
                code="not_a_repository",
                remedy="Pass `path` of a git work tree inside EXAI_FILE_ROOTS, or run `git diff --staged` and "
                "`git diff` yourself and pass the output in `diff`.",
                details={"field": "path"},
            )
        top_level, git_dir, common_dir = await asyncio.to_thread(lambda: [Path(os.path.realpath(p)) for p in lines])
        if not all(files.contains(p) for p in (top_level, git_dir, common_dir)):
            raise InvalidInput(
                f"The git repository of {quote_path(path)} (work tree, .git or its common directory) lies outside "
                "this server's file roots, so the server will not run git in it.",
                code="repository_outside_roots",
                remedy="Run `git diff --staged` and `git diff` yourself and pass the output in `diff`, or make "
                "the repository's work tree and .git directory part of EXAI_FILE_ROOTS.",
                details={"field": "path"},
            )
        await asyncio.to_thread(check_git_directories, files, [git_dir, common_dir])
        env = {**env, "GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(top_level)}
        entries = await _own_config([common_dir / "config", git_dir / "config.worktree"], top_level, env, timeout)
        check_config(entries)
        return cls(top_level, {**env, **neutralising_environment(entries)}, timeout)

    async def run(self, args: list[str], *, max_output: int) -> str:
        return await run_git(args, cwd=self.top_level, env=self.env, timeout=self.timeout, max_output=max_output)

    async def names(self, args: list[str], *, max_output: int, partial: bool = False) -> tuple[list[str], bool]:
        """The paths a `-z` listing prints, each as the file system spells it (undecodable bytes kept), and
        whether that is all of them: with `partial`, a listing over max_output is cut to the paths that fit."""
        out = await _run_git(
            args, cwd=self.top_level, env=self.env, timeout=self.timeout, max_output=max_output, ok_codes=(0,)
        )
        complete = len(out) <= max_output
        if not (complete or partial):
            raise GitOutputTooLarge
        paths = out[:max_output].split(b"\0")
        return [os.fsdecode(path) for path in paths[:-1]], complete

    async def commit(self, ref: str) -> str:
        """The commit id `ref` names; a clear error naming the ref when it names none."""
        check_revision(ref)
        try:
            out = await self.run(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], max_output=1024
            )
        except ToolFailure as exc:
            if exc.code != "git_failed":
                raise
            raise InvalidInput(
                f"compare_to {quote_path(ref)} names no commit in this repository.",
                code="unknown_ref",
                remedy="Pass an existing branch, tag or commit id (see `git branch -a` and `git log --oneline`).",
                details={"field": "compare_to"},
            ) from None
        return out.strip()


async def _own_config(paths: list[Path], cwd: Path, env: dict[str, str], timeout: float) -> list[ConfigEntry]:
    """The entries of the repository's own configuration files, read without following their includes."""
    entries: list[ConfigEntry] = []
    for path in paths:
        if await asyncio.to_thread(path.is_file):
            listing = await run_git(
                ["config", "--file", str(path), "--list", "--null", "--no-includes"],
                cwd=cwd,
                env=env,
                timeout=timeout,
                max_output=1_000_000,
            )
            entries += parse_config_list(listing)
    return entries
