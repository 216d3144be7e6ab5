"""Webhooks first: the calls sip-router stays with step aside while a webhook is decided.

One event loop serves the webhooks and the accepted calls' sidebands. A caller waiting for
a decision hears every millisecond; a call already talking to the agent does not notice a
few. So the calls' work (handling a sideband event, posting a function call) waits here
while any webhook is in flight, and no longer than `MAX_DEFER_S`, so that webhooks
arriving back to back never starve the calls.
"""

from __future__ import annotations

import asyncio

# The longest a call's next piece of work waits for the webhooks in flight.
MAX_DEFER_S = 0.01


class WebhooksFirst:
    """Counts the webhooks in flight; `after_webhooks` waits until none is (or a while)."""

    def __init__(self, max_defer_s: float = MAX_DEFER_S) -> None:
        self._max_defer_s = max_defer_s
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def started(self) -> None:
        """A webhook arrived."""
        self._in_flight += 1
        self._idle.clear()

    def finished(self) -> None:
        """A webhook was answered (once per `started`)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no webhook is in flight (however long that takes)."""
        await self._idle.wait()

    async def after_webhooks(self) -> None:
        """Return once no webhook is in flight, or after `max_defer_s` at the latest."""
        if self._in_flight == 0:
            return
        try:
            async with asyncio.timeout(self._max_defer_s):
                await self._idle.wait()
        except TimeoutError:
            pass
