"""Attacks on `precommit` through the real daemon: git stays inside the roots and runs no command it was handed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from exai.errors import ToolFailure
from exai.security.git import GitOutputTooLarge, run_git, safe_environment
from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True, capture_output=True
    )


def new_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "--allow-empty", "-m", "init")
    return path


def object_id(repo: Path, revision: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", revision], check=True, capture_output=True, text=True
    ).stdout.strip()


def final_step(**extra: Any) -> dict[str, Any]:
    return {
        "step": "review the pending changes",
        "step_number": 1,
        "total_steps": 1,
        "next_step_required": False,
        "findings": "looked at the changes",
        "model": "sim-smart",
        **extra,
    }


def marker_command(tmp_path: Path, name: str) -> tuple[str, Path]:
    """A script that leaves a marker file when git runs it."""
    marker = tmp_path / f"{name}.ran"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\ntouch '{marker}'\ncat\n")
    script.chmod(0o755)
    return str(script), marker


async def precommit(proc: Proc, **args: Any) -> Any:
    async with Client(f"{proc.url}/mcp") as client:
        return await client.call_tool("precommit", final_step(**args))


def sent_upstream(sim: SimControl) -> str:
    return json.dumps([r["body"] for r in sim.requests(50)])


async def test_compare_to_cannot_smuggle_git_options(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    repo = new_repo(roots / "repo", {"app.py": "x = 1\n"})
    (repo / "app.py").write_text("x = 2\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    for hostile in (f"--output={victim}", "-O/dev/null", "--no-index"):
        result = await precommit(proc, path=str(repo), compare_to=hostile)
        assert result.is_error, hostile
        error = tool_error(result)
        assert error["code"] == "invalid_ref" and "option" in error["message"], error
    assert victim.read_text() == "precious\n", "git wrote over a file outside the roots"

    unknown = await precommit(proc, path=str(repo), compare_to="no-such-branch")
    assert tool_error(unknown)["code"] == "unknown_ref"
    assert "no-such-branch" in tool_error(unknown)["message"]

    fine = await precommit(proc, path=str(repo), compare_to="HEAD")
    assert not fine.is_error, text_of(fine)
    assert "+x = 2" in sent_upstream(sim)


async def test_git_never_climbs_to_a_parent_repository_outside_the_roots(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    parent = new_repo(tmp_path / "parent", {"README": "parent\n"})
    project = parent / "roots" / "project"
    project.mkdir(parents=True)
    (project / "code.py").write_text("print('tracked by the parent')\n")
    git(parent, "add", "-A")
    git(parent, "commit", "-q", "-m", "project")
    (project / "code.py").write_text("print('changed')\n")
    command, marker = marker_command(tmp_path, "fsmonitor")
    git(parent, "config", "core.fsmonitor", command)
    proc = daemon(EXAI_FILE_ROOTS=str(parent / "roots"))

    result = await precommit(proc, path=str(project))
    assert result.is_error, "git ran in a repository outside the roots"
    assert tool_error(result)["code"] == "not_a_repository"
    assert not marker.exists(), "the parent repository's core.fsmonitor command ran"
    assert "tracked by the parent" not in sent_upstream(sim)


async def test_a_gitfile_pointing_outside_the_roots_is_refused(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    work = roots / "work"
    store = tmp_path / "outside" / "store.git"
    store.parent.mkdir()
    git(tmp_path, "init", "-q", f"--separate-git-dir={store}", str(work))
    (work / "leak.txt").write_text("OUTSIDE-SECRET\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "leak")
    (work / "leak.txt").unlink()
    assert (work / ".git").read_text().startswith("gitdir: ")
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    result = await precommit(proc, path=str(work))
    assert result.is_error, "git used a git directory outside the roots"
    assert tool_error(result)["code"] == "repository_outside_roots"
    assert "OUTSIDE-SECRET" not in sent_upstream(sim)


async def test_repository_config_runs_no_commands(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    repo = new_repo(roots / "repo", {"notes.txt": "one\n", ".gitattributes": "*.txt filter=evil diff=evil\n"})
    fsmonitor, fsmonitor_ran = marker_command(tmp_path, "fsmonitor")
    clean, clean_ran = marker_command(tmp_path, "clean")
    textconv, textconv_ran = marker_command(tmp_path, "textconv")
    git(repo, "config", "core.fsmonitor", fsmonitor)
    git(repo, "config", "filter.evil.clean", clean)
    git(repo, "config", "diff.evil.textconv", textconv)
    git(repo, "config", "diff.external", textconv)
    git(repo, "config", "core.pager", textconv)
    (repo / "notes.txt").write_text("two\n")
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    result = await precommit(proc, path=str(repo))
    assert not result.is_error, text_of(result)
    assert "+two" in sent_upstream(sim)
    for ran in (fsmonitor_ran, clean_ran, textconv_ran):
        assert not ran.exists(), f"git ran a command from the repository's config ({ran.stem})"


async def test_untracked_files_reach_the_reviewer(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    repo = new_repo(roots / "repo", {"app.py": "x = 1\n", ".gitignore": "ignored.env\n"})
    (repo / "settings.py").write_text("DB_PASSWORD = 'hunter2-untracked'\n")
    (repo / "ignored.env").write_text("IGNORED_VALUE=1\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("OUTSIDE-SECRET\n")
    (repo / "escape.txt").symlink_to(outside)
    (repo / "tiny.bin").write_bytes(b"\x00\x01binary")
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    result = await precommit(proc, path=str(repo))
    assert not result.is_error, text_of(result)
    sent = sent_upstream(sim)
    assert "+++ b/settings.py" in sent and "hunter2-untracked" in sent, "an untracked file was left out"
    assert "IGNORED_VALUE" not in sent, "ignored files are not pending changes"
    assert "OUTSIDE-SECRET" not in sent, "an untracked link led outside the roots"
    assert "escape.txt" in sent and "tiny.bin" in sent, "refused untracked files are named with the reason"


async def test_git_output_is_capped_and_a_deadline_kills_it(tmp_path: Path) -> None:
    env = safe_environment([])
    assert not any(name in env for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_CONFIG_PARAMETERS", "GIT_EXEC_PATH"))
    assert (await run_git(["--version"], cwd=tmp_path, env=env, timeout=60, max_output=100)).startswith("git")
    with pytest.raises(GitOutputTooLarge):
        await run_git(["--version"], cwd=tmp_path, env=env, timeout=60, max_output=3)
    with pytest.raises(ToolFailure) as late:
        await run_git(["--version"], cwd=tmp_path, env=env, timeout=0, max_output=100)
    assert late.value.code == "git_timeout"


async def test_a_diff_over_the_cap_is_refused_at_once(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    repo = new_repo(roots / "repo", {"big.txt": "start\n"})
    (repo / "big.txt").write_text("changed line of a large diff\n" * 100_000)
    proc = daemon(EXAI_FILE_ROOTS=str(roots), EXAI_MAX_FILE_BYTES_PER_CALL="200000")

    result = await precommit(proc, path=str(repo))
    assert tool_error(result)["code"] == "diff_too_large", "git is stopped at the cap, not waited on"


def lazy_fetching_repo(path: Path, remote_url: str) -> Path:
    """A partial clone whose promisor remote is `remote_url`, with a blob git must fetch to show the diff."""
    repo = new_repo(path, {"f.txt": "one\n"})
    blob = object_id(repo, "HEAD:f.txt")
    (repo / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    (repo / "f.txt").write_text("two\n")
    git(repo, "config", "remote.origin.url", remote_url)
    git(repo, "config", "protocol.ext.allow", "always")
    git(repo, "config", "remote.origin.promisor", "true")
    return repo


async def test_a_promisor_remote_never_makes_git_fetch(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    ran = tmp_path / "fetch.ran"
    remote = f"ext::sh -c touch% {ran}"
    partial = lazy_fetching_repo(roots / "partial", remote)
    git(partial, "config", "core.repositoryformatversion", "1")
    git(partial, "config", "extensions.partialClone", "origin")
    promisor_only = lazy_fetching_repo(roots / "promisor", remote)
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    for repo in (partial, promisor_only):
        result = await precommit(proc, path=str(repo))
        assert not ran.exists(), f"git ran the transport command of {repo.name}'s remote"
        error = tool_error(result)
        assert error["code"] == "repository_config_refused", error
        assert "promisor" in error["message"].lower() or "partialclone" in error["message"].lower(), error


async def test_no_transport_runs_whatever_the_repository_allows(tmp_path: Path) -> None:
    """The layer under the config check: the environment and options every git call gets disable transports."""
    ran = tmp_path / "fetch.ran"
    repo = lazy_fetching_repo(tmp_path / "repo", f"ext::sh -c touch% {ran}")
    for protocol in ("ext", "file", "git", "http", "https", "ssh"):
        git(repo, "config", f"protocol.{protocol}.allow", "always")
    env = {**safe_environment([]), "GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(repo)}
    with pytest.raises(ToolFailure):
        await run_git(["fetch", "origin"], cwd=repo, env=env, timeout=60, max_output=10_000)
    git(repo, "config", "extensions.partialClone", "origin")
    git(repo, "config", "core.repositoryformatversion", "1")
    with pytest.raises(ToolFailure):
        await run_git(["diff", "--"], cwd=repo, env=env, timeout=60, max_output=10_000)
    assert not ran.exists(), "a transport the repository allowed ran"


async def test_repository_config_that_can_reach_outside_is_refused(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    roots = tmp_path / "roots"
    outside = tmp_path / "outside.config"
    outside.write_text("[user]\n\tname = OUTSIDE-SECRET\n")
    settings = {
        "include": ("include.path", str(outside)),
        "include-if": (f"includeIf.gitdir:{roots}/.path", str(outside)),
        "ssh": ("core.sshCommand", "touch /tmp/never"),
        "credential": ("credential.helper", "!touch /tmp/never"),
        "unknown-extension": ("extensions.someFutureThing", "true"),
    }
    repos = {}
    for name, (key, value) in settings.items():
        repos[name] = new_repo(roots / name, {"a.txt": "one\n"})
        (repos[name] / "a.txt").write_text("two\n")
        git(repos[name], "config", key, value)
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    for name, repo in repos.items():
        error = tool_error(await precommit(proc, path=str(repo)))
        assert error["code"] == "repository_config_refused", (name, error)
        assert settings[name][0].split(".")[0].lower() in error["message"].lower(), (name, error)
    assert "OUTSIDE-SECRET" not in sent_upstream(sim)


async def test_a_tracked_hard_link_to_a_file_outside_is_not_diffed(
    daemon: Daemon, sim: SimControl, tmp_path: Path
) -> None:
    roots = tmp_path / "roots"
    repo = new_repo(roots / "repo", {"linked.txt": "public\n", "app.py": "x = 1\n"})
    (repo / "app.py").write_text("x = 2\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("OUTSIDE-SECRET\n")
    (repo / "linked.txt").unlink()
    (repo / "linked.txt").hardlink_to(outside)
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    for extra in ({}, {"compare_to": "HEAD"}):
        result = await precommit(proc, path=str(repo), **extra)
        assert not result.is_error, text_of(result)
        sent = sent_upstream(sim)
        assert "OUTSIDE-SECRET" not in sent, f"git read a hard-linked file outside the roots ({extra})"
        assert "+x = 2" in sent, "the other changes are still shown"
        assert "linked.txt" in sent and "hard link" in sent, "the skipped file is named with the reason"


async def test_objects_from_outside_the_roots_are_refused(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    foreign = new_repo(tmp_path / "outside" / "foreign", {"secret.txt": "OUTSIDE-SECRET\n"})
    foreign_commit = object_id(foreign, "HEAD")
    roots = tmp_path / "roots"
    alternates = new_repo(roots / "alternates", {"a.txt": "one\n"})
    (alternates / ".git" / "objects" / "info" / "alternates").write_text(f"{foreign}/.git/objects\n")
    linked = new_repo(roots / "linked", {"a.txt": "one\n"})
    pack = linked / ".git" / "objects" / "pack"
    pack.rmdir()
    git(foreign, "repack", "-adq")
    pack.symlink_to(foreign / ".git" / "objects" / "pack")
    proc = daemon(EXAI_FILE_ROOTS=str(roots))

    for repo in (alternates, linked):
        result = await precommit(proc, path=str(repo), compare_to=foreign_commit)
        error = tool_error(result)
        assert error["code"] == "repository_outside_roots", (repo.name, error)
    assert "OUTSIDE-SECRET" not in sent_upstream(sim)


async def test_many_untracked_files_stay_within_the_cap(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    many = new_repo(roots / "many", {"a.txt": "one\n"})
    for index in range(5_000):
        (many / f"b{index:05}.bin").write_bytes(b"\x00")
    proc = daemon(EXAI_FILE_ROOTS=str(roots), EXAI_MAX_FILE_BYTES_PER_CALL="300000")

    result = await precommit(proc, path=str(many))
    assert not result.is_error, text_of(result)
    sent = sent_upstream(sim)
    assert "b00000.bin" in sent and "b04999.bin" not in sent, "only the first untracked files are considered"
    assert "4,000 more untracked files" in sent, "the output says how many were left out"

    crowded = new_repo(roots / "crowded", {"a.txt": "one\n"})
    for index in range(1_000):
        (crowded / f"{'n' * 200}{index:04}.bin").write_bytes(b"\x00")
    result = await precommit(proc, path=str(crowded))
    assert tool_error(result)["code"] == "diff_too_large", "the lines naming refused files count against the cap"
