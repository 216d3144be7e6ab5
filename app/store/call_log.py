"""The call log: the most recent routing decisions, newest first, for /admin/calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

CALL_LOG_SIZE = 1000


class CallLog(Protocol):
    """A bounded list of already-masked decision entries (JSON objects).

    An entry may come with its call's side record (app.recorded_calls: decision, trace,
    upstream requests, decision inputs), kept by call id for as long as the entry: while
    its call id is among the last CALL_LOG_SIZE appended with a record.
    """

    async def append(
        self, entry: Mapping[str, Any], record: Mapping[str, Any] | None = None
    ) -> None:
        """Add one entry (and its call's record); only the last CALL_LOG_SIZE are kept."""
        ...

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` entries (at most CALL_LOG_SIZE), newest first."""
        ...

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """The side record of `call_id`, or None when it is not (or no longer) kept."""
        ...

    async def call_records(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` side records, one per call, newest first."""
        ...

    async def add_to_call(self, call_id: str, fields: Mapping[str, Any]) -> bool:
        """Join `fields` to the call's record: its later life when sip-router stayed with it
        (LIFECYCLE_KEYS), which `recent` shows with
        the call's entry too. False when the call has no record (yet, or any more)."""
        ...


def check_limit(limit: int) -> int:
    """The number of entries to return for `limit`; ValueError when it is negative."""
    if limit < 0:
        raise ValueError("limit must not be negative")
    return min(limit, CALL_LOG_SIZE)


# The call's later life when sip-router stays with it, kept in its record.
LIFECYCLE_KEYS = ("ended_at", "duration_s", "end_reason", "transfer", "events", "transcript")


def later_life(record: Mapping[str, Any]) -> dict[str, Any]:
    """The lifecycle keys a call's record holds, for its call log entry."""
    return {key: record[key] for key in LIFECYCLE_KEYS if key in record}
