"""What a routing decision is made from: one call's identity, headers and arrival time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.call_api import CallApi
from app.sip_identity import CallParties, SipHeaders


@dataclass(frozen=True, slots=True)
class CallContext:
    """The inputs of one decision; `at` is the event's `created_at`, timezone-aware.

    `call_id` is the id the API gave the call (a Live `session_id`, kept unchanged);
    `media_security` is the delivery's `sip_media_security` (`srtp`, `rtp`, another value,
    or None when not given).
    """

    call_id: str
    parties: CallParties
    headers: SipHeaders
    at: datetime
    api: CallApi = "realtime"
    media_security: str | None = None
