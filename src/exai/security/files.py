"""Reading files for tools, only inside the allowed roots.

Paths are resolved (symlinks included) before the root check, so neither `..` nor a link can lead outside.
Only regular text files are read: devices, FIFOs, sockets, directories and binary files are refused, and
per-file and per-call size caps apply. All disk access runs off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from exai.observability.errors import NotFoundError, PermissionDeniedError, ValidationError

_BINARY_PROBE = 8192


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
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes

    def _check(self, raw: str) -> Path:
        if not self.roots:
            raise PermissionDeniedError(
                f"Cannot read '{raw}': this server has no file roots configured.",
                code="no_file_roots",
                remedy="Set EXAI_FILE_ROOTS to the directories tools may read, or paste the content in the prompt.",
            )
        if "\x00" in raw:
            raise ValidationError("A file path contains a NUL byte.", code="invalid_path", remedy="Fix the path.")
        path = Path(raw)
        if not path.is_absolute():
            raise ValidationError(
                f"'{raw}' is not an absolute path.",
                code="relative_path",
                remedy=f"Pass absolute paths inside: {', '.join(map(str, self.roots))}.",
            )
        try:
            resolved = path.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(
                f"File '{raw}' does not exist.", code="file_not_found", remedy="Check the path."
            ) from None
        except (OSError, RuntimeError) as exc:  # symlink loops, permissions
            raise ValidationError(
                f"Cannot resolve '{raw}': {exc}.", code="invalid_path", remedy="Check the path."
            ) from None
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise PermissionDeniedError(
                f"'{raw}' is outside the allowed file roots.",
                code="outside_roots",
                remedy=f"Only files under {', '.join(map(str, self.roots))} can be read.",
            )
        return resolved

    def _read(self, raw: str) -> FileText:
        resolved = self._check(raw)
        try:
            fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise PermissionDeniedError(
                f"Cannot open '{raw}': {exc.strerror}.", code="unreadable", remedy="Check the file's permissions."
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (device, FIFO or socket)"
                raise ValidationError(f"'{raw}' is {kind}.", code="not_a_file", remedy="Pass regular files only.")
            if info.st_size > self.max_file_bytes:
                raise ValidationError(
                    f"'{raw}' is {info.st_size:,} bytes; the limit per file is {self.max_file_bytes:,}.",
                    code="file_too_large",
                    remedy="Pass a smaller file or the relevant part of it in the prompt.",
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(self.max_file_bytes + 1)
        finally:
            os.close(fd)
        if b"\x00" in data[:_BINARY_PROBE]:
            raise ValidationError(f"'{raw}' is a binary file.", code="binary_file", remedy="Pass text files only.")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError(
                f"'{raw}' is not UTF-8 text.", code="binary_file", remedy="Pass UTF-8 text files only."
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
                raise ValidationError(
                    f"The files together exceed {self.max_total_bytes:,} bytes per call.",
                    code="files_too_large",
                    remedy="Pass fewer files, or raise EXAI_MAX_FILES_BYTES.",
                )
            files.append(item)
        return files

    async def read(self, paths: list[str]) -> list[FileText]:
        """Read and check every path; the first refusal raises with a clear reason."""
        return await asyncio.to_thread(self._read_all, paths) if paths else []

    def is_allowed(self, raw: str) -> bool:
        try:
            self._check(raw)
        except (PermissionDeniedError, ValidationError, NotFoundError):
            return False
        return True
