"""The regular expressions a rule file supplies, compiled with RE2: linear-time matching.

Numbers and header values come from whoever places the call. A backtracking engine takes
exponential time on patterns such as `(a|a|ab)*c` or `([A-Za-z0-9]{1,64}){1,64}-x`, and
no check of a pattern's shape catches them all. RE2 matches in time linear in the input,
whatever the pattern; what it cannot do that way (back-references, look-around) it
refuses, and so does the load, with RE2's reason.
"""

from __future__ import annotations

import re
from typing import Protocol

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the load reports the problem itself

# The start of RE2's reason -> what the rule file's author can do about it.
_HINTS = (
    ("invalid perl operator: (?<=", "look-behind is not supported"),
    ("invalid perl operator: (?<!", "look-behind is not supported"),
    ("invalid perl operator: (?=", "look-ahead is not supported"),
    ("invalid perl operator: (?!", "look-ahead is not supported"),
    ("invalid repetition size", "at most 1000 repetitions, nested counts multiplied"),
    ("pattern too large", "the compiled pattern is over RE2's memory limit"),
)
_BACK_REFERENCE = re.compile(r"invalid escape sequence: \\[1-9]")


class Regex(Protocol):
    """A compiled pattern; `fullmatch` runs in time linear in the text."""

    @property
    def pattern(self) -> str: ...

    def fullmatch(self, text: str) -> object | None: ...


class RegexError(ValueError):
    """A pattern RE2 refuses; the message is RE2's reason, with a hint where one helps."""


def compile_regex(pattern: str) -> Regex:
    """Compile `pattern` with RE2; raise RegexError with the reason it is refused."""
    try:
        compiled: Regex = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise RegexError(_reason(exc)) from None
    return compiled


def _reason(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else ""
    reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    hints = [hint for start, hint in _HINTS if reason.startswith(start)]
    if _BACK_REFERENCE.match(reason):
        hints.append("back-references are not supported")
    return f"RE2 cannot compile it: {reason}" + "".join(f" ({hint})" for hint in hints)
