"""Leased claims that let each webhook delivery, and each call, be acted on at most once."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# OpenAI retries a delivery for up to 72 hours; keep completed records longer than that.
DONE_KEEP_S = 96 * 3600
# Both announcements of one phone call (Realtime and GPT-Live) arrive within seconds; the
# phone call's own record is kept this long (a later copy is stale anyway, or OpenAI
# answers it `decision_already_made`).
SIP_CALL_KEEP_S = 15 * 60
MAX_ID_LENGTH = 256


class ClaimResult(enum.Enum):
    """What a claim found: it now owns the leases, or why it does not."""

    ACQUIRED = "acquired"
    IN_FLIGHT = "in_flight"
    DUPLICATE_DONE = "duplicate_done"
    CALL_DONE = "call_done"
    # The phone call was decided through its other announcement (another call id).
    SIP_CALL_DONE = "sip_call_done"


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to one claim; `token` is set when ACQUIRED, `outcome` when *_DONE.

    `decision`, when ACQUIRED, is the request an earlier owner of the call recorded before
    sending it and never saw through (it crashed, or its lease expired): the new owner
    sends exactly that request again instead of deciding. `sip_call` is the phone call's
    key (app.sip_call_key) leased and recorded with the call id, when the delivery had one.
    """

    result: ClaimResult
    webhook_id: str
    call_id: str
    token: str | None = None
    outcome: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    sip_call: str | None = None

    def lease_token(self) -> str:
        """The owner token of an acquired claim; ValueError for any other result."""
        if self.result is not ClaimResult.ACQUIRED or self.token is None:
            raise ValueError(f"claim was not acquired ({self.result.value})")
        return self.token


class DedupeStore(Protocol):
    """Per-delivery and per-call leases and completed records, shared by every replica."""

    async def claim(
        self, webhook_id: str, call_id: str, lease_s: float, sip_call: str | None = None
    ) -> Claim:
        """Atomically check the done records and leases of the ids and lease them all if free.

        `sip_call`, when given, is a third id (the phone call's, shared by its Realtime and
        GPT-Live announcements): checked and leased with the others, and finished with a
        record kept SIP_CALL_KEEP_S.
        """
        ...

    async def record_decision(
        self, claim: Claim, decision: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the request about to be sent for the call, kept for keep_s.

        Atomic, and only while this claim still owns the call's lease: False means another
        owner has the call now, and nothing may be sent.
        """
        ...

    async def finish(
        self, claim: Claim, outcome: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the outcome for the ids, drop the call's recorded decision and the leases
        this claim still owns.

        The webhook id's record only marks the delivery as processed; a claim that finds it
        gets the outcome recorded for the call it names. The phone call's record (when the
        claim has `sip_call`) is kept SIP_CALL_KEEP_S at most. Returns whether every lease
        was still owned (False: a lease expired first).
        """
        ...

    async def release(self, claim: Claim, *, keep_decision: bool = False) -> bool:
        """Drop the leases this claim still owns so a redelivery can try again.

        The decision this claim recorded is dropped too (the action certainly had no
        effect), unless `keep_decision`: then the next owner sends that request again.
        """
        ...


def check_claim_args(
    webhook_id: str, call_id: str, lease_s: float, sip_call: str | None = None
) -> None:
    """Reject ids that are empty, longer than MAX_ID_LENGTH or not encodable, and bad leases."""
    ids = [("webhook_id", webhook_id), ("call_id", call_id)]
    if sip_call is not None:
        ids.append(("sip_call", sip_call))
    for name, value in ids:
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
