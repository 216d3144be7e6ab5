"""Dedupe claims and the call log in process memory, for a single process."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any

from app.store.call_log import CALL_LOG_SIZE, check_limit, later_life
from app.store.dedupe import (
    DONE_KEEP_S,
    SIP_CALL_KEEP_S,
    Claim,
    ClaimResult,
    check_claim_args,
    check_keep_s,
)

log = logging.getLogger("sip_router.store")

# Completed calls kept at most; beyond, the oldest are forgotten (about 450 bytes each).
MAX_DONE_CALLS = 100_000
# After the first, at most one "forgetting" log line per this many seconds.
FORGET_LOG_INTERVAL_S = 60.0
# The value of a webhook id's record: the outcome is the one recorded for its call.
_PROCESSED = ""


class _ExpiringTable:
    """Keys with a value and an expiry; kept in the order they were last written.

    An expired entry is gone for `get`; `sweep` frees expired entries from the oldest on
    and stops at the first one still alive, so an entry kept longer than the ones written
    after it only delays their freeing, never their expiry.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def put(self, key: str, value: str, expires_at: float) -> None:
        # Written again, the key moves to the newest end.
        self._entries.pop(key, None)
        self._entries[key] = (value, expires_at)

    def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def sweep(self, now: float) -> None:
        for key in list(self._oldest_expired(now)):
            del self._entries[key]

    def drop_oldest(self) -> None:
        del self._entries[next(iter(self._entries))]

    def _oldest_expired(self, now: float) -> Iterator[str]:
        for key, (_, expires_at) in self._entries.items():
            if expires_at > now:
                return
            yield key


class MemoryStore:
    """DedupeStore and CallLog over dicts with expiry on a monotonic clock.

    No method awaits between its checks and its writes, so each one is atomic within an
    event loop; it cannot protect several processes (use RedisStore for that). At most
    `max_done_calls` completed calls are remembered: beyond that the oldest are forgotten
    (logged), and a redelivery of a forgotten call would be acted on again. Leases and
    recorded decisions are never forgotten before they expire.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_done_calls: int = MAX_DONE_CALLS,
    ) -> None:
        if max_done_calls < 1:
            raise ValueError("max_done_calls must be at least 1")
        self._clock = clock
        self._max_done = 2 * max_done_calls  # a record for the call and one for its webhook id
        self._max_sip_calls = max_done_calls
        self._leases = _ExpiringTable()
        self._decisions = _ExpiringTable()
        self._done = _ExpiringTable()
        # Phone calls' records: all kept SIP_CALL_KEEP_S, so they expire in the order written.
        self._sip_done = _ExpiringTable()
        self._forgotten = 0
        self._forget_logged_at: float | None = None
        self._calls: deque[str] = deque(maxlen=CALL_LOG_SIZE)
        # Side records by call id; the ids in append order, and how often each is listed.
        self._records: dict[str, str] = {}
        self._record_order: deque[str] = deque()
        self._record_counts: Counter[str] = Counter()

    async def claim(
        self, webhook_id: str, call_id: str, lease_s: float, sip_call: str | None = None
    ) -> Claim:
        """Check the done records, then the leases, and lease every id if free."""
        check_claim_args(webhook_id, call_id, lease_s, sip_call)
        now = self._sweep()
        keys = _keys(webhook_id, call_id, sip_call)
        webhook_key, call_key = keys[0], keys[1]
        outcome = self._done.get(call_key, now)
        if self._done.get(webhook_key, now) is not None:
            done = None if outcome is None else json.loads(outcome)
            return Claim(ClaimResult.DUPLICATE_DONE, webhook_id, call_id, outcome=done)
        if outcome is not None:
            return Claim(ClaimResult.CALL_DONE, webhook_id, call_id, outcome=json.loads(outcome))
        sip_outcome = self._sip_done.get(keys[2], now) if sip_call is not None else None
        if sip_outcome is not None:
            return Claim(
                ClaimResult.SIP_CALL_DONE, webhook_id, call_id, outcome=json.loads(sip_outcome)
            )
        if any(self._leases.get(key, now) for key in keys):
            return Claim(ClaimResult.IN_FLIGHT, webhook_id, call_id)
        token = secrets.token_hex(16)
        for key in keys:
            self._leases.put(key, token, now + lease_s)
        decision = self._decisions.get(call_key, now)
        return Claim(
            ClaimResult.ACQUIRED,
            webhook_id,
            call_id,
            token=token,
            decision=None if decision is None else json.loads(decision),
            sip_call=sip_call,
        )

    async def record_decision(
        self, claim: Claim, decision: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the request about to be sent, if this claim still owns the call's lease."""
        token = claim.lease_token()
        check_keep_s(keep_s)
        text = json.dumps(dict(decision), separators=(",", ":"))
        now = self._sweep()
        call_key = _keys(claim.webhook_id, claim.call_id, None)[1]
        if self._leases.get(call_key, now) != token:
            return False
        self._decisions.put(call_key, text, now + keep_s)
        return True

    async def finish(
        self, claim: Claim, outcome: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the outcome for both ids for keep_s and drop the leases still owned."""
        token = claim.lease_token()
        check_keep_s(keep_s)
        text = json.dumps(dict(outcome), separators=(",", ":"))
        now = self._sweep()
        keys = _keys(claim.webhook_id, claim.call_id, claim.sip_call)
        webhook_key, call_key = keys[0], keys[1]
        self._done.put(webhook_key, _PROCESSED, now + keep_s)
        self._done.put(call_key, text, now + keep_s)
        if claim.sip_call is not None:
            self._sip_done.put(keys[2], text, now + min(keep_s, SIP_CALL_KEEP_S))
        self._decisions.delete(call_key)
        self._forget_beyond_bound(now)
        return self._drop_leases(keys, token, now)

    async def release(self, claim: Claim, *, keep_decision: bool = False) -> bool:
        """Drop the leases still owned by this claim (and its decision unless kept)."""
        token = claim.lease_token()
        now = self._sweep()
        keys = _keys(claim.webhook_id, claim.call_id, claim.sip_call)
        if not keep_decision and self._leases.get(keys[1], now) == token:
            self._decisions.delete(keys[1])
        return self._drop_leases(keys, token, now)

    async def append(
        self, entry: Mapping[str, Any], record: Mapping[str, Any] | None = None
    ) -> None:
        """Add one call log entry (and its call's record), dropping the oldest beyond
        CALL_LOG_SIZE."""
        self._calls.append(json.dumps(dict(entry), separators=(",", ":")))
        call_id = entry.get("call_id")
        if record is None or not isinstance(call_id, str):
            return
        self._records[call_id] = json.dumps(dict(record), separators=(",", ":"))
        self._record_order.append(call_id)
        self._record_counts[call_id] += 1
        while len(self._record_order) > CALL_LOG_SIZE:
            oldest = self._record_order.popleft()
            self._record_counts[oldest] -= 1
            if self._record_counts[oldest] == 0:
                del self._record_counts[oldest]
                del self._records[oldest]

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """The side record of `call_id`, or None."""
        text = self._records.get(call_id)
        return None if text is None else dict(json.loads(text))

    async def call_records(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` side records, one per call, newest first."""
        count = check_limit(limit)
        ids = list(dict.fromkeys(reversed(self._record_order)))[:count]
        return [json.loads(self._records[call_id]) for call_id in ids]

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` call log entries, newest first."""
        count = check_limit(limit)
        entries = [json.loads(text) for text in islice(reversed(self._calls), count)]
        return [{**entry, **self._later_life(entry.get("call_id"))} for entry in entries]

    async def add_to_call(self, call_id: str, fields: Mapping[str, Any]) -> bool:
        """Join `fields` to the call's record (only while the record is kept)."""
        text = self._records.get(call_id)
        if text is None:
            return False
        record = {**json.loads(text), **fields}
        self._records[call_id] = json.dumps(record, separators=(",", ":"))
        return True

    def _later_life(self, call_id: Any) -> dict[str, Any]:
        text = self._records.get(call_id) if isinstance(call_id, str) else None
        return later_life(json.loads(text)) if text is not None else {}

    async def ping(self) -> None:
        """Always answers: process memory is available while the process runs."""

    async def aclose(self) -> None:
        """Nothing to close."""

    def _drop_leases(self, keys: tuple[str, ...], token: str, now: float) -> bool:
        owned = 0
        for key in keys:
            if self._leases.get(key, now) == token:
                self._leases.delete(key)
                owned += 1
        return owned == len(keys)

    def _forget_beyond_bound(self, now: float) -> None:
        while len(self._sip_done) > self._max_sip_calls:
            self._sip_done.drop_oldest()
        while len(self._done) > self._max_done:
            self._done.drop_oldest()
            self._forgotten += 1
        if self._forgotten and (
            self._forget_logged_at is None or now - self._forget_logged_at >= FORGET_LOG_INTERVAL_S
        ):
            log.warning(
                "in-memory store is full: forgetting the oldest completed calls; a redelivery"
                " of a forgotten call is acted on again (use Redis to keep them 96 hours)",
                extra={
                    "fields": {
                        "max_done_calls": self._max_done // 2,
                        "records_forgotten": self._forgotten,
                    }
                },
            )
            self._forget_logged_at = now
            self._forgotten = 0

    def _sweep(self) -> float:
        now = self._clock()
        for table in (self._leases, self._decisions, self._done, self._sip_done):
            table.sweep(now)
        return now


def _keys(webhook_id: str, call_id: str, sip_call: str | None) -> tuple[str, ...]:
    """The webhook id's key, the call's, then the phone call's when there is one."""
    keys = (f"w:{webhook_id}", f"c:{call_id}")
    return keys if sip_call is None else (*keys, f"s:{sip_call}")
