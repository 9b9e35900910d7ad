"""File access: every refusal, what is read when a read is allowed, and what a path outside the roots reveals."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from exai.errors import ExaiError, InvalidInput, NotFoundError, PermissionDeniedError
from exai.security.files import FileAccess
from tests.conftest import Proc, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "pkg").mkdir(parents=True)
    (base / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (tmp_path / "secret.txt").write_text("top secret\n")
    return base


async def _refused(access: FileAccess, path: str, kind: type[ExaiError], code: str) -> None:
    with pytest.raises(kind) as caught:
        await access.read([path])
    assert caught.value.code == code, caught.value.message
    assert caught.value.remedy


async def test_reads_text_with_line_numbers(root: Path) -> None:
    access = FileAccess([root], 1000, 5000)
    (item,) = await access.read([str(root / "pkg" / "mod.py")])
    assert item.numbered().splitlines()[1:3] == ["1│ def f():", "2│     return 1"]


async def test_every_refusal(root: Path, tmp_path: Path) -> None:
    access = FileAccess([root], 100, 150)
    secret = tmp_path / "secret.txt"
    await _refused(access, str(secret), PermissionDeniedError, "outside_roots")
    await _refused(access, str(root / "pkg" / ".." / ".." / "secret.txt"), PermissionDeniedError, "outside_roots")
    (root / "link.txt").symlink_to(secret)
    await _refused(access, str(root / "link.txt"), PermissionDeniedError, "outside_roots")
    (root / "dirlink").symlink_to(tmp_path)
    await _refused(access, str(root / "dirlink" / "secret.txt"), PermissionDeniedError, "outside_roots")
    (root / "null").symlink_to("/dev/zero")
    await _refused(access, str(root / "null"), PermissionDeniedError, "outside_roots")
    os.mkfifo(root / "fifo")
    await _refused(access, str(root / "fifo"), InvalidInput, "not_a_file")
    await _refused(access, str(root / "pkg"), InvalidInput, "not_a_file")
    (root / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02")
    await _refused(access, str(root / "blob.bin"), InvalidInput, "binary_file")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    await _refused(access, str(root / "latin1.txt"), InvalidInput, "binary_file")
    (root / "big.txt").write_text("x" * 101)
    await _refused(access, str(root / "big.txt"), InvalidInput, "file_too_large")
    await _refused(access, "pkg/mod.py", InvalidInput, "relative_path")
    await _refused(access, str(root / "missing.py"), NotFoundError, "file_not_found")
    await _refused(access, str(root / "bad\x00name"), InvalidInput, "invalid_path")
    (root / "a.txt").write_text("a" * 80)
    (root / "b.txt").write_text("b" * 80)
    with pytest.raises(InvalidInput) as caught:
        await access.read([str(root / "a.txt"), str(root / "b.txt")])
    assert caught.value.code == "files_too_large"
    await _refused(FileAccess([], 100, 100), str(root / "a.txt"), PermissionDeniedError, "no_file_roots")


async def test_symlink_inside_the_root_is_fine_and_deduplicated(root: Path) -> None:
    (root / "alias.py").symlink_to(root / "pkg" / "mod.py")
    access = FileAccess([root], 1000, 5000)
    items = await access.read([str(root / "alias.py"), str(root / "pkg" / "mod.py")])
    assert [i.path for i in items] == [str((root / "pkg" / "mod.py").resolve())]


async def test_a_directory_swapped_for_a_link_after_the_check_is_not_followed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "sub").mkdir()
    (root / "sub" / "a.txt").write_text("inside\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.txt").write_text("top secret\n")
    access = FileAccess([root], 1000, 5000)
    check = access._check

    def check_then_swap(raw: str) -> Path:
        resolved = check(raw)
        (root / "sub").rename(root / "sub-before")
        (root / "sub").symlink_to(tmp_path / "elsewhere")
        return resolved

    monkeypatch.setattr(access, "_check", check_then_swap)
    await _refused(access, str(root / "sub" / "a.txt"), InvalidInput, "symlink_refused")


async def _chat_error(client: Client, path: str) -> dict[str, Any]:
    result = await client.call_tool("chat", {"prompt": "read this", "model": "sim-fast", "files": [path]})
    assert result.is_error, path[:100]
    assert len(text_of(result)) < 2000, "errors quote at most a short prefix of a path"
    return tool_error(result)


def _normal(path: str) -> str:
    return os.path.normpath(path)


async def test_paths_outside_the_roots_reveal_nothing(daemon: Daemon, sim: SimControl, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("OUTSIDE-SECRET\n")
    (roots / "dirlink").symlink_to(tmp_path / "outside")
    os.link(tmp_path / "outside" / "secret.txt", roots / "hardlink.txt")
    proc = daemon(EXAI_FILE_ROOTS=str(roots))
    async with Client(f"{proc.url}/mcp") as client:
        pairs = [
            ("/proc/1", "/nonexistent-xyz"),
            (f"{roots}/../outside/secret.txt", f"{roots}/../outside/missing.txt"),
            (f"{roots}/dirlink/secret.txt", f"{roots}/dirlink/missing.txt"),
        ]
        for existing, missing in pairs:
            seen, unseen = await _chat_error(client, existing), await _chat_error(client, missing)
            assert seen["code"] == unseen["code"] == "outside_roots", (seen, unseen)
            # A path is quoted in its normal form (as it is read and kept).
            assert seen["message"].replace(_normal(existing), "P") == unseen["message"].replace(_normal(missing), "P")
        hard = await _chat_error(client, str(roots / "hardlink.txt"))
        assert hard["code"] == "hard_link" and "hard link" in hard["message"]
        # A path longer than any text argument may be is refused at validation, before the file layer sees it;
        # one under that limit but over the filesystem's is refused by the file layer.
        huge = await _chat_error(client, "/" + "a" * 3_000_000)
        assert huge["code"] == "invalid_arguments" and huge["details"]["fields"] == ["files.0"]
        long_inside = await _chat_error(client, f"{roots}/" + "b" * 50_000)
        assert long_inside["code"] == "invalid_path"
    assert "OUTSIDE-SECRET" not in json.dumps(sim.requests(50))
    assert max(len(line) for line in proc.logs().splitlines()) < 20_000, "a huge path reached the log"


async def test_a_thread_naming_many_files_lists_the_unread_ones_briefly(daemon: Daemon, tmp_path: Path) -> None:
    """A continued thread read every file its earlier turns named, and listed each it could not embed: one that named
    thousands read them all on every call. Once the earlier files' room is spent, the rest are not read, and
    `files_skipped` names 20 of them, the last saying how many more."""
    paths = []
    for n in range(30):
        path = tmp_path / f"f{n:02d}.txt"
        path.write_text("x" * 49 + "\n")  # 50 bytes: two fill the call's 100
        paths.append(str(path))
    proc = daemon(EXAI_FILE_ROOTS=str(tmp_path), EXAI_MAX_FILE_BYTES_PER_CALL="100")
    async with Client(f"{proc.url}/mcp") as client:
        first = await client.call_tool("chat", {"prompt": "x", "model": "sim-fast", "files": paths})
        assert not first.is_error, first.content
        thread = (first.structured_content or {})["continuation_id"]
        later = await client.call_tool("chat", {"prompt": "y", "model": "sim-fast", "continuation_id": thread})
    answer = later.structured_content or {}
    assert len(answer["files_included"]) == 2, answer
    skipped = answer["files_skipped"]
    assert len(skipped) == 20 and all(s["reason"].startswith("not read:") for s in skipped), skipped
    assert "8 more earlier files after this one were not read either" in skipped[-1]["reason"], skipped[-1]


async def test_one_file_under_many_names_is_weighed_once_and_a_call_reads_a_bounded_number(
    daemon: Daemon, tmp_path: Path
) -> None:
    """A file read under many names (links to its folder) was read and weighed once per name, and a continued
    thread read every file its turns had named: with a large file behind 5,000 links, one call took 16.7 s of the
    daemon's CPU and another tenant's calls waited seconds (an attack round's finding). A file is weighed once,
    and a call reads at most 50 of its earlier turns' files."""
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "big.txt").write_text("word " * 20_000)  # 20,000 tokens: more than the model's room
    for n in range(40):
        (tmp_path / f"l{n:02d}").symlink_to(tmp_path / "big")
    small = []
    for n in range(60):
        (tmp_path / f"s{n:02d}.txt").write_text(f"{n}\n")
        small.append(str(tmp_path / f"s{n:02d}.txt"))
    proc = daemon(EXAI_FILE_ROOTS=str(tmp_path), CUSTOM_MODELS="sim-fast:20000")
    links = [str(tmp_path / f"l{n:02d}" / "big.txt") for n in range(40)]
    async with Client(f"{proc.url}/mcp") as client:
        linked = await client.call_tool("chat", {"prompt": "x", "model": "sim-fast", "files": links})
        many = await client.call_tool("chat", {"prompt": "x", "model": "sim-fast", "files": small})
        thread = (many.structured_content or {})["continuation_id"]
        later = await client.call_tool("chat", {"prompt": "y", "model": "sim-fast", "continuation_id": thread})
    assert not linked.is_error, linked.content
    reasons = [s["reason"] for s in (linked.structured_content or {})["files_skipped"]]
    assert reasons[0].startswith("needs") and len(reasons) == 40, reasons[:2]
    assert all(r.startswith("the same file as") for r in reasons[1:]), "weighed once, however many names"
    answer = later.structured_content or {}
    assert len(answer["files_included"]) == 50, answer["files_included"]
    skipped = answer["files_skipped"]
    assert len(skipped) == 10 and "reads at most 50 of its earlier turns' files" in skipped[0]["reason"], skipped
