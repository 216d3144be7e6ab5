"""Tells the log when the shared store stops answering, while it stays away, and when it is back.

Without it a Redis that is down shows only as 503 answers to webhooks; with it an operator
sees one warning at start-up and then one at most every `repeat_s`, even without traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from app.store.errors import StoreUnavailable

CHECK_INTERVAL_S = 5.0
REPEAT_WARNING_S = 60.0

log = logging.getLogger("sip_router.store")


class Pingable(Protocol):
    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable otherwise."""
        ...


class StoreAvailability:
    """Pings the store and logs its changes: warning when down (repeated), info when back."""

    def __init__(
        self,
        store: Pingable,
        *,
        repeat_s: float = REPEAT_WARNING_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._repeat_s = repeat_s
        self._clock = clock
        self._down_since: float | None = None
        self._warned_at: float | None = None

    @property
    def answers(self) -> bool:
        """Whether the last check found the store answering."""
        return self._down_since is None

    async def check(self) -> bool:
        """Ping once and log what changed (or that it is still down, once per repeat_s)."""
        try:
            await self._store.ping()
        except StoreUnavailable as exc:
            self._note_down(str(exc))
            return False
        now = self._clock()
        if self._down_since is not None:
            log.info(
                "the shared store answers again",
                extra={"fields": {"down_s": round(now - self._down_since, 1)}},
            )
        self._down_since = self._warned_at = None
        return True

    async def watch(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        """Check every `interval_s` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.check()

    def _note_down(self, reason: str) -> None:
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
        if self._warned_at is not None and now - self._warned_at < self._repeat_s:
            return
        self._warned_at = now
        log.warning(
            "the shared store does not answer: webhooks are answered 503 until it does",
            extra={"fields": {"error": reason, "down_s": round(now - self._down_since, 1)}},
        )
