"""Reading files for tools, only inside the allowed roots.

The roots are checked on the lexically normalised path before the filesystem is touched, so a path outside
gets the same answer whether or not it exists (no existence oracle). The path is then resolved (symlinks
included) and checked again, and the file is opened one component at a time from the root with
`O_NOFOLLOW`, so no component can be swapped for a link that leads outside between the check and the open.
Only regular text files with a single link are read: devices, FIFOs, sockets, directories, hard links (which
can expose a file outside the roots) and binary files are refused, and per-file and per-call size caps apply.
All disk access runs off the event loop. Error messages quote at most a short prefix of a path.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from exai.errors import InvalidInput, NotFoundError, PermissionDeniedError

_BINARY_PROBE = 8192
MAX_PATH_CHARS = 4096
_QUOTE_CHARS = 120
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def quote_path(raw: str) -> str:
    """A path for an error message or a log line: quoted, printable, and never more than a short prefix."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in raw[:_QUOTE_CHARS])
    if len(raw) > _QUOTE_CHARS:
        shown += f"… ({len(raw):,} characters)"
    return f"'{shown}'"


@dataclass(frozen=True)
class FileText:
    path: str
    text: str
    lines: int
    size: int

    def numbered(self) -> str:
        width = len(str(self.lines))
        body = "\n".join(f"{i:>{width}}│ {line}" for i, line in enumerate(self.text.splitlines(), start=1))
        return f"--- BEGIN FILE: {self.path} ---\n{body}\n--- END FILE: {self.path} ---"


class FileAccess:
    def __init__(self, roots: list[Path], max_file_bytes: int, max_total_bytes: int) -> None:
        self.roots = [root.resolve() for root in roots]
        # A root may be named through a link; a path written that way is inside too (and is resolved later).
        self._lexical_roots = sorted({*self.roots, *(Path(os.path.normpath(os.path.abspath(r))) for r in roots)})
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes

    def contains(self, resolved: Path) -> bool:
        """Whether an already resolved path lies inside one of the roots."""
        return any(resolved.is_relative_to(root) for root in self.roots)

    def _outside(self, raw: str) -> PermissionDeniedError:
        return PermissionDeniedError(
            f"{quote_path(raw)} is outside the allowed file roots.",
            code="outside_roots",
            remedy=f"Only files under {', '.join(map(str, self.roots))} can be read.",
        )

    def _check(self, raw: str) -> Path:
        """The resolved path, refused unless both its normalised and its resolved form are inside the roots."""
        if not self.roots:
            raise PermissionDeniedError(
                f"Cannot read {quote_path(raw)}: this server has no file roots configured.",
                code="no_file_roots",
                remedy="Set EXAI_FILE_ROOTS to the directories tools may read, or paste the content in the prompt.",
            )
        if "\x00" in raw:
            raise InvalidInput("A file path contains a NUL byte.", code="invalid_path", remedy="Fix the path.")
        if len(raw) > MAX_PATH_CHARS:
            raise InvalidInput(
                f"A file path is {len(raw):,} characters long; the limit is {MAX_PATH_CHARS:,}.",
                code="invalid_path",
                remedy="Pass the real, absolute path of the file.",
            )
        if not os.path.isabs(raw):
            raise InvalidInput(
                f"{quote_path(raw)} is not an absolute path.",
                code="relative_path",
                remedy=f"Pass absolute paths inside: {', '.join(map(str, self.roots))}.",
            )
        normalised = Path(os.path.normpath(raw))
        if not any(normalised.is_relative_to(root) for root in self._lexical_roots):
            raise self._outside(raw)
        resolved = Path(os.path.realpath(normalised))
        if not self.contains(resolved):
            raise self._outside(raw)
        return resolved

    def _open(self, raw: str, resolved: Path, *, directory: bool = False) -> int:
        """Open `resolved` from its root one component at a time, following no link on the way."""
        root = next(root for root in self.roots if resolved.is_relative_to(root))
        parts = resolved.relative_to(root).parts
        fd = os.open(root, _DIR_FLAGS)
        try:
            for index, part in enumerate(parts):
                last = index == len(parts) - 1
                flags = _DIR_FLAGS if directory or not last else _FILE_FLAGS
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    raise self._open_error(raw, exc, part, fd) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _open_error(raw: str, exc: OSError, part: str, dir_fd: int) -> Exception:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(part, dir_fd)):
            return InvalidInput(
                f"{quote_path(raw)} passes through a symbolic link that loops or changed while it was opened.",
                code="symlink_refused",
                remedy="Pass the real path of the file.",
            )
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return NotFoundError(
                f"File {quote_path(raw)} does not exist.", code="file_not_found", remedy="Check the path."
            )
        return PermissionDeniedError(
            f"Cannot open {quote_path(raw)}: {exc.strerror}.", code="unreadable", remedy="Check the file's permissions."
        )

    def directory(self, raw: str) -> Path:
        """The resolved path of an existing directory inside the roots (refused like a file otherwise)."""
        resolved = self._check(raw)
        fd = self._open(raw, resolved, directory=True)
        os.close(fd)
        return resolved

    def check_entry(self, raw: str) -> None:
        """Refuse, without reading it, what another program (git) must not read for us: a path leading outside
        the roots, a file with more than one hard link, a device, FIFO or socket. A path that does not exist,
        a directory, and a link resolving inside the roots to either pass. Blocking: run it in a thread."""
        resolved = self._check(raw)
        try:
            fd = self._open(raw, resolved)
        except NotFoundError:
            return
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISDIR(info.st_mode):
            _refuse_unreadable(raw, info)

    def _read(self, raw: str) -> FileText:
        resolved = self._check(raw)
        fd = self._open(raw, resolved)
        try:
            info = os.fstat(fd)
            _refuse_unreadable(raw, info)
            if info.st_size > self.max_file_bytes:
                raise InvalidInput(
                    f"{quote_path(raw)} is {info.st_size:,} bytes; the limit per file is {self.max_file_bytes:,}.",
                    code="file_too_large",
                    remedy="Pass a smaller file or the relevant part of it in the prompt.",
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(self.max_file_bytes + 1)
        finally:
            os.close(fd)
        if b"\x00" in data[:_BINARY_PROBE]:
            raise InvalidInput(
                f"{quote_path(raw)} is a binary file.", code="binary_file", remedy="Pass text files only."
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"{quote_path(raw)} is not UTF-8 text.", code="binary_file", remedy="Pass UTF-8 text files only."
            ) from None
        return FileText(path=str(resolved), text=text, lines=text.count("\n") + 1, size=len(data))

    def _read_all(self, paths: list[str]) -> list[FileText]:
        seen: set[str] = set()
        files: list[FileText] = []
        total = 0
        for raw in paths:
            item = self._read(raw)
            if item.path in seen:
                continue
            seen.add(item.path)
            total += item.size
            if total > self.max_total_bytes:
                raise InvalidInput(
                    f"The files together exceed {self.max_total_bytes:,} bytes per call.",
                    code="files_too_large",
                    remedy="Pass fewer files, or raise EXAI_MAX_FILE_BYTES_PER_CALL.",
                )
            files.append(item)
        return files

    async def read(self, paths: list[str]) -> list[FileText]:
        """Read and check every path; the first refusal raises with a clear reason."""
        return await asyncio.to_thread(self._read_all, paths) if paths else []


def _refuse_unreadable(raw: str, info: os.stat_result) -> None:
    """Only regular files with a single link are read."""
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (device, FIFO or socket)"
        raise InvalidInput(f"{quote_path(raw)} is {kind}.", code="not_a_file", remedy="Pass regular files only.")
    if info.st_nlink > 1:
        raise PermissionDeniedError(
            f"{quote_path(raw)} has {info.st_nlink} hard links; a hard link can expose a file outside "
            "the allowed file roots, so such files are not read.",
            code="hard_link",
            remedy="Pass a copy of the file (`cp --no-preserve=links`) or paste the relevant part.",
        )


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False
