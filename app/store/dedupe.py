"""Leased claims that let each webhook delivery, and each call, be acted on at most once."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# OpenAI retries a delivery for up to 72 hours; keep completed records longer than that.
DONE_KEEP_S = 96 * 3600
MAX_ID_LENGTH = 256


class ClaimResult(enum.Enum):
    """What a claim found: it now owns the leases, or why it does not."""

    ACQUIRED = "acquired"
    IN_FLIGHT = "in_flight"
    DUPLICATE_DONE = "duplicate_done"
    CALL_DONE = "call_done"


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to one claim; `token` is set when ACQUIRED, `outcome` when *_DONE."""

    result: ClaimResult
    webhook_id: str
    call_id: str
    token: str | None = None
    outcome: dict[str, Any] | None = None

    def lease_token(self) -> str:
        """The owner token of an acquired claim; ValueError for any other result."""
        if self.result is not ClaimResult.ACQUIRED or self.token is None:
            raise ValueError(f"claim was not acquired ({self.result.value})")
        return self.token


class DedupeStore(Protocol):
    """Per-delivery and per-call leases and completed records, shared by every replica."""

    async def claim(self, webhook_id: str, call_id: str, lease_s: float) -> Claim:
        """Atomically check the done records and leases of both ids and lease both if free."""
        ...

    async def finish(
        self, claim: Claim, outcome: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the outcome for both ids and drop the leases this claim still owns.

        Returns whether both leases were still owned (False: a lease expired first).
        """
        ...

    async def release(self, claim: Claim) -> bool:
        """Drop the leases this claim still owns so a redelivery can try again."""
        ...


def check_claim_args(webhook_id: str, call_id: str, lease_s: float) -> None:
    """Reject ids that are empty, longer than MAX_ID_LENGTH or not encodable, and bad leases."""
    for name, value in (("webhook_id", webhook_id), ("call_id", call_id)):
        if not value or len(value) > MAX_ID_LENGTH:
            raise ValueError(f"{name} must be 1 to {MAX_ID_LENGTH} characters")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{name} is not valid text") from None
    if not (math.isfinite(lease_s) and lease_s > 0):
        raise ValueError("lease_s must be a positive number of seconds")


def check_keep_s(keep_s: int) -> None:
    """Reject a non-positive retention for completed records."""
    if keep_s <= 0:
        raise ValueError("keep_s must be a positive number of seconds")
