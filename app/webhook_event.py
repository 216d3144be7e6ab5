"""The `realtime.call.incoming` event, parsed from a verified body (unknown fields tolerated)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from app.errors import UnreadablePayload
from app.rules.call_context import CallApi

INCOMING_CALL = "realtime.call.incoming"
MAX_SIP_HEADERS = 256
# 9999-12-31T23:59:59Z: the last instant a datetime can hold; later times are unreadable.
LATEST_CREATED_AT = 253_402_300_799

CallId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,128}$")]


class _SipHeader(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: StrictStr
    value: StrictStr


class _CallData(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    call_id: CallId
    sip_headers: Annotated[list[_SipHeader], Field(max_length=MAX_SIP_HEADERS)]


class _IncomingCall(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    type: StrictStr
    created_at: Annotated[StrictInt, Field(ge=0, le=LATEST_CREATED_AT)]
    data: _CallData


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """One incoming call: event id, arrival time (Unix s), call id, SIP headers in order.

    `api` says which API announced it; for Live, `call_id` is the `session_id`.
    """

    event_id: str
    created_at: int
    call_id: str
    sip_headers: tuple[tuple[str, str], ...]
    api: CallApi = "realtime"
    media_security: str | None = None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any other event type: acknowledged, nothing done."""

    type: str


def parse_event(body: str) -> IncomingCall | OtherEvent:
    """Parse a verified body; raise UnreadablePayload when it is not a usable event."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raise UnreadablePayload("the body is not JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise UnreadablePayload("the body is not an event object with a type")
    if raw["type"] != INCOMING_CALL:
        return OtherEvent(raw["type"][:100])
    try:
        event = _IncomingCall.model_validate(raw)
    except ValidationError:
        raise UnreadablePayload("the realtime.call.incoming event lacks required fields") from None
    return IncomingCall(
        event_id=event.id,
        created_at=event.created_at,
        call_id=event.data.call_id,
        sip_headers=tuple((_text(h.name), _text(h.value)) for h in event.data.sip_headers),
    )


def _text(value: str) -> str:
    """JSON may carry lone surrogates (`\\ud800`); they cannot be encoded again, so replace them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value
