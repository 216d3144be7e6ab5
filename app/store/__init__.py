"""Shared state: dedupe claims and the call log, in process memory or in Redis."""

from __future__ import annotations

from typing import Protocol

from app.store.availability import StoreAvailability
from app.store.call_log import CALL_LOG_SIZE, CallLog
from app.store.dedupe import (
    DONE_KEEP_S,
    MAX_ID_LENGTH,
    SIP_CALL_KEEP_S,
    Claim,
    ClaimResult,
    DedupeStore,
)
from app.store.errors import StoreUnavailable
from app.store.memory import MemoryStore
from app.store.redis_backend import RedisStore

__all__ = [
    "CALL_LOG_SIZE",
    "DONE_KEEP_S",
    "MAX_ID_LENGTH",
    "SIP_CALL_KEEP_S",
    "CallLog",
    "Claim",
    "ClaimResult",
    "DedupeStore",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreAvailability",
    "StoreUnavailable",
    "open_store",
]


class Store(DedupeStore, CallLog, Protocol):
    """Everything the service keeps between webhooks, plus readiness and shutdown."""

    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable otherwise."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def open_store(redis_url: str | None, *, memory_max_calls: int) -> Store:
    """A RedisStore for `redis_url` (connecting lazily), else a bounded MemoryStore."""
    if redis_url:
        return RedisStore.from_url(redis_url)
    return MemoryStore(max_done_calls=memory_max_calls)
