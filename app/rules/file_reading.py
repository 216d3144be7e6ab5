"""Read a rule file and the files it names, treating the rule file as untrusted input.

Rule files may come from a shared ConfigMap. A file they name (a list, an instructions
file) must lie inside the rule file's folder once symlinks are followed (the ConfigMap's
own `..data` links stay inside it), must be a regular file, and is read only up to a
size cap; the whole ruleset has a cap too. Refusals name the path as written and the
reason, never what the file holds.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

KIB = 1024
MIB = 1024 * KIB
MAX_RULE_FILE_BYTES = 4 * MIB
MAX_LIST_FILE_BYTES = 32 * MIB
MAX_INSTRUCTIONS_FILE_BYTES = 1 * MIB
MAX_RULESET_BYTES = 64 * MIB


class FileRefused(Exception):
    """A file that is not read; the message says why and fits after `cannot read PATH: `."""


class FileTooLarge(FileRefused):
    pass


def size_text(limit: int) -> str:
    if limit % MIB == 0:
        return f"{limit // MIB} MiB"
    return f"{limit // KIB} KiB" if limit % KIB == 0 else f"{limit} bytes"


def _read_bytes(path: Path, limit: int) -> bytes:
    """Open without following a final symlink and without blocking (a FIFO is refused, not
    waited on); the size is checked on what is read, not on what stat says (/proc files)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileRefused(exc.strerror or str(exc)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRefused("not a regular file")
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(limit + 1)
        except OSError as exc:
            raise FileRefused(exc.strerror or str(exc)) from None
    if len(data) > limit:
        raise FileTooLarge(f"larger than {size_text(limit)}")
    return data


@dataclass
class RuleFolder:
    """The folder of a rule file: where the files it names must lie, and the bytes read so far.

    Its path is resolved once; a named file counts as inside when its resolved path is.
    """

    main: Path
    total_limit: int = MAX_RULESET_BYTES
    read_bytes: int = 0
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.main.parent.resolve()

    def read_main(self) -> str:
        return self._read(self.main.resolve(), MAX_RULE_FILE_BYTES)

    def read_named(self, written: str, limit: int) -> str:
        """The text of a file named in the rule file as `written` (relative to its folder)."""
        if Path(written).is_absolute():
            raise FileRefused("an absolute path; name files relative to the rule file's folder")
        target = (self.main.parent / written).resolve()
        if not target.is_relative_to(self.root):
            raise FileRefused("outside the rule file's folder")
        return self._read(target, limit)

    def _read(self, path: Path, limit: int) -> str:
        left = self.total_limit - self.read_bytes
        try:
            data = _read_bytes(path, min(limit, left))
        except FileTooLarge:
            if left >= limit:
                raise
            together = size_text(self.total_limit)
            raise FileRefused(f"the rule files together are larger than {together}") from None
        self.read_bytes += len(data)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FileRefused(f"not UTF-8 text (byte {exc.start + 1})") from None


class RuleSource(Protocol):
    """Where a load reads the main rule file and the files it names (the loader's only I/O)."""

    def read_main(self) -> str: ...

    def read_named(self, written: str, limit: int) -> str: ...


@dataclass
class UploadedRuleFiles:
    """Rule files held in memory (a candidate uploaded for replay), read like a RuleFolder.

    `files` maps paths relative to the main file's folder to their text; a name the rule
    file writes is looked up there after normalization, never on the disk. The same size
    caps and the same refusals (absolute paths, paths leaving the folder) apply.
    """

    files: Mapping[str, str]
    main: str
    total_limit: int = MAX_RULESET_BYTES
    read_bytes: int = 0

    def read_main(self) -> str:
        return self._read(self.main, MAX_RULE_FILE_BYTES)

    def read_named(self, written: str, limit: int) -> str:
        if PurePosixPath(written).is_absolute() or Path(written).is_absolute():
            raise FileRefused("an absolute path; name files relative to the rule file's folder")
        base = posixpath.dirname(posixpath.normpath(self.main))
        name = posixpath.normpath(posixpath.join(base, written))
        if name == ".." or name.startswith("../"):
            raise FileRefused("outside the rule file's folder")
        return self._read(name, limit)

    def _read(self, name: str, limit: int) -> str:
        text = self.files.get(name)
        if text is None:
            text = self.files.get(posixpath.normpath(name))
        if text is None:
            raise FileRefused("no such file among the uploaded files")
        size = len(text.encode("utf-8", "surrogatepass"))
        left = self.total_limit - self.read_bytes
        if size > min(limit, left):
            if left >= limit:
                raise FileTooLarge(f"larger than {size_text(limit)}")
            raise FileRefused(
                f"the rule files together are larger than {size_text(self.total_limit)}"
            )
        self.read_bytes += size
        return text
