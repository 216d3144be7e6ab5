"""The owner of every call this replica stays with: one task per call, cancelled on shutdown.

Each call's task is a boundary: an error in one call is logged there and never reaches
another call or the process (structured concurrency, STYLE.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from app.call_api import CallApi
from app.calls.sideband_connection import CallOutcome
from app.metrics import Metrics

log = logging.getLogger("sip_router.sideband")

# A call's run ends with its outcome, or None when another replica took the call over.
CallRun = Callable[[], Awaitable[CallOutcome | None]]
OnCallEnd = Callable[[CallOutcome | None], Awaitable[None]]


class ActiveCalls:
    """A task group of calls, keyed by call_id; use as `async with ActiveCalls() as calls:`."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    async def __aenter__(self) -> ActiveCalls:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closing = True
        for task in list(self._tasks.values()):
            task.cancel()
        assert self._group is not None
        await self._group.__aexit__(exc_type, exc, traceback)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def start(
        self,
        call_id: str,
        run: CallRun,
        on_end: OnCallEnd | None = None,
        *,
        api: CallApi = "realtime",
    ) -> bool:
        """Start driving `call_id` (a call of `api`); False if this replica already drives it
        or is closing."""
        if self._group is None or self._closing or call_id in self._tasks:
            return False
        self._tasks[call_id] = self._group.create_task(self._guarded(call_id, run, on_end, api))
        return True

    async def stop(self, call_id: str) -> None:
        """Stop driving one call (hand-over); returns once its task has ended."""
        task = self._tasks.get(call_id)
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _guarded(
        self, call_id: str, run: CallRun, on_end: OnCallEnd | None, api: CallApi
    ) -> None:
        gauge: Any = self._metrics.active_calls.labels(api=api) if self._metrics else None
        if gauge is not None:
            gauge.inc()
        try:
            outcome = await run()
            if on_end is not None:
                await on_end(outcome)
        except asyncio.CancelledError:
            # Shutdown or hand-over: the call goes on without this replica.
            log.info("call_released", extra={"fields": {"call_id": call_id}})
            raise
        except Exception:
            log.exception("a call's task failed", extra={"fields": {"call_id": call_id}})
        finally:
            if gauge is not None:
                gauge.dec()
            self._tasks.pop(call_id, None)
