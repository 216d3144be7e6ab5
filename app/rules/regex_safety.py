"""Refuse regexes that can take exponential time on hostile header values.

Header values come from whoever places the call. A pattern such as `(a+)+b` backtracks
exponentially on `aaaa...c`, which would stall every decision of the process, so rule
files may not nest an unbounded repetition inside another repetition.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# The standard library's own parser of regex syntax (no public API, no type stubs).
sre_constants: Any = importlib.import_module("re._constants")
sre_parser: Any = importlib.import_module("re._parser")

_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)


def nested_unbounded_repeat(pattern: str) -> bool:
    """True when `pattern` repeats something that itself repeats without bound."""
    try:
        parsed = sre_parser.parse(pattern)
    except re.error:
        return False
    return _walk(list(parsed), inside_repeat=False)


def _walk(items: list[tuple[Any, Any]], *, inside_repeat: bool) -> bool:
    for op, arg in items:
        if op in _REPEATS:
            _low, high, body = arg
            if inside_repeat and high == sre_constants.MAXREPEAT:
                return True
            children = [list(body)]
            nested = inside_repeat or high > 1
        else:
            children = _sub_patterns(op, arg)
            nested = inside_repeat
        if any(_walk(child, inside_repeat=nested) for child in children):
            return True
    return False


def _sub_patterns(op: Any, arg: Any) -> list[list[tuple[Any, Any]]]:
    """The nested pattern lists of a group, an alternation or a lookaround."""
    if op is sre_constants.SUBPATTERN:
        return [list(arg[-1])]
    if op is sre_constants.BRANCH:
        return [list(branch) for branch in arg[1]]
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
        return [list(arg[1])]
    return []
