"""Problems found in rule files, reported as `file:line: message`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Problem:
    """One error or warning at a place in a rule file (line is 1-based, 0 when unknown)."""

    file: str
    line: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{place}: {prefix}{self.message}"


class RuleFileError(Exception):
    """A rule file (or a file it references) is invalid; it is never put into service."""

    def __init__(self, problems: list[Problem], files: tuple[str, ...] = ()) -> None:
        self.problems = problems
        # Every file the load read or tried to read, so a reload can watch them all.
        self.files = files
        super().__init__("\n".join(str(p) for p in problems))
