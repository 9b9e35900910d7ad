"""File access: every refusal, and what is read when a read is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exai.observability.errors import ExaiError, NotFoundError, PermissionDeniedError, ValidationError
from exai.security.files import FileAccess

pytestmark = pytest.mark.anyio


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
    await _refused(access, str(root / "fifo"), ValidationError, "not_a_file")
    await _refused(access, str(root / "pkg"), ValidationError, "not_a_file")
    (root / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02")
    await _refused(access, str(root / "blob.bin"), ValidationError, "binary_file")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    await _refused(access, str(root / "latin1.txt"), ValidationError, "binary_file")
    (root / "big.txt").write_text("x" * 101)
    await _refused(access, str(root / "big.txt"), ValidationError, "file_too_large")
    await _refused(access, "pkg/mod.py", ValidationError, "relative_path")
    await _refused(access, str(root / "missing.py"), NotFoundError, "file_not_found")
    await _refused(access, str(root / "bad\x00name"), ValidationError, "invalid_path")
    (root / "a.txt").write_text("a" * 80)
    (root / "b.txt").write_text("b" * 80)
    with pytest.raises(ValidationError) as caught:
        await access.read([str(root / "a.txt"), str(root / "b.txt")])
    assert caught.value.code == "files_too_large"
    await _refused(FileAccess([], 100, 100), str(root / "a.txt"), PermissionDeniedError, "no_file_roots")


async def test_symlink_inside_the_root_is_fine_and_deduplicated(root: Path) -> None:
    (root / "alias.py").symlink_to(root / "pkg" / "mod.py")
    access = FileAccess([root], 1000, 5000)
    items = await access.read([str(root / "alias.py"), str(root / "pkg" / "mod.py")])
    assert [i.path for i in items] == [str((root / "pkg" / "mod.py").resolve())]
