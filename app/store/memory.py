"""Dedupe claims and the call log in process memory, for a single process."""

from __future__ import annotations

import heapq
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from app.store.call_log import CALL_LOG_SIZE, check_limit
from app.store.dedupe import (
    DONE_KEEP_S,
    Claim,
    ClaimResult,
    check_claim_args,
    check_keep_s,
)

# A table maps a key to (value, expires_at on the store's clock).
_Table = dict[str, tuple[str, float]]


class MemoryStore:
    """DedupeStore and CallLog over dicts with expiry on a monotonic clock.

    No method awaits between its checks and its writes, so each one is atomic within an
    event loop; it cannot protect several processes (use RedisStore for that).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: _Table = {}
        self._done: _Table = {}
        # Expiry times to sweep dead entries without scanning; stale heap items are skipped.
        self._expiries: list[tuple[float, bool, str]] = []
        self._calls: deque[str] = deque(maxlen=CALL_LOG_SIZE)

    async def claim(self, webhook_id: str, call_id: str, lease_s: float) -> Claim:
        """Check both done records, then both leases, and lease both ids if free."""
        check_claim_args(webhook_id, call_id, lease_s)
        now = self._sweep()
        webhook_key, call_key = _keys(webhook_id, call_id)
        for key, result in (
            (webhook_key, ClaimResult.DUPLICATE_DONE),
            (call_key, ClaimResult.CALL_DONE),
        ):
            done = self._done.get(key)
            if done is not None:
                return Claim(result, webhook_id, call_id, outcome=json.loads(done[0]))
        if webhook_key in self._leases or call_key in self._leases:
            return Claim(ClaimResult.IN_FLIGHT, webhook_id, call_id)
        token = secrets.token_hex(16)
        for key in (webhook_key, call_key):
            self._put(self._leases, key, token, now + lease_s)
        return Claim(ClaimResult.ACQUIRED, webhook_id, call_id, token=token)

    async def finish(
        self, claim: Claim, outcome: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the outcome for both ids for keep_s and drop the leases still owned."""
        token = claim.lease_token()
        check_keep_s(keep_s)
        text = json.dumps(dict(outcome), separators=(",", ":"))
        now = self._sweep()
        keys = _keys(claim.webhook_id, claim.call_id)
        for key in keys:
            self._put(self._done, key, text, now + keep_s)
        return self._drop_leases(keys, token)

    async def release(self, claim: Claim) -> bool:
        """Drop the leases still owned by this claim; another owner's lease stays."""
        token = claim.lease_token()
        self._sweep()
        return self._drop_leases(_keys(claim.webhook_id, claim.call_id), token)

    async def append(self, entry: Mapping[str, Any]) -> None:
        """Add one call log entry, dropping the oldest beyond CALL_LOG_SIZE."""
        self._calls.append(json.dumps(dict(entry), separators=(",", ":")))

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` call log entries, newest first."""
        count = check_limit(limit)
        return [json.loads(text) for text in islice(reversed(self._calls), count)]

    async def ping(self) -> None:
        """Always answers: process memory is available while the process runs."""

    async def aclose(self) -> None:
        """Nothing to close."""

    def _put(self, table: _Table, key: str, value: str, expires_at: float) -> None:
        table[key] = (value, expires_at)
        heapq.heappush(self._expiries, (expires_at, table is self._done, key))

    def _drop_leases(self, keys: tuple[str, str], token: str) -> bool:
        owned = 0
        for key in keys:
            lease = self._leases.get(key)
            if lease is not None and lease[0] == token:
                del self._leases[key]
                owned += 1
        return owned == len(keys)

    def _sweep(self) -> float:
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            _, is_done, key = heapq.heappop(self._expiries)
            table = self._done if is_done else self._leases
            entry = table.get(key)
            # The key may have been written again since with a later expiry.
            if entry is not None and entry[1] <= now:
                del table[key]
        return now


def _keys(webhook_id: str, call_id: str) -> tuple[str, str]:
    return f"webhook:{webhook_id}", f"call:{call_id}"
