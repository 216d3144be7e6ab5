"""The call log: the most recent routing decisions, newest first, for /admin/calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

CALL_LOG_SIZE = 1000


class CallLog(Protocol):
    """A bounded list of already-masked decision entries (JSON objects)."""

    async def append(self, entry: Mapping[str, Any]) -> None:
        """Add one entry; only the last CALL_LOG_SIZE entries are kept."""
        ...

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` entries (at most CALL_LOG_SIZE), newest first."""
        ...


def check_limit(limit: int) -> int:
    """The number of entries to return for `limit`; ValueError when it is negative."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    return min(limit, CALL_LOG_SIZE)
