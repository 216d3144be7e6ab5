"""The incoming-call events, parsed from a verified body (unknown fields tolerated).

Realtime announces a call with `realtime.call.incoming` (`data.call_id`); GPT-Live with
`live.transport.incoming` (`data.type: "sip"`, `data.session_id`) or the deprecated
`live.call.incoming` (no `data.type`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from app.call_api import CallApi
from app.errors import UnreadablePayload

INCOMING_CALL = "realtime.call.incoming"
LIVE_TRANSPORT_INCOMING = "live.transport.incoming"
LIVE_CALL_INCOMING = "live.call.incoming"
SIP_TRANSPORT = "sip"
MAX_SIP_HEADERS = 256
MAX_MEDIA_SECURITY_CHARS = 64
# 9999-12-31T23:59:59Z: the last instant a datetime can hold; later times are unreadable.
LATEST_CREATED_AT = 253_402_300_799

CallId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,128}$")]
# A Live `session_id` (`live_u0_...`): the same safe characters, a little longer allowed.
SessionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,160}$")]


class _SipHeader(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: StrictStr
    value: StrictStr


SipHeaderList = Annotated[list[_SipHeader], Field(max_length=MAX_SIP_HEADERS)]


class _CallData(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    call_id: CallId
    sip_headers: SipHeaderList


class _LiveCallData(BaseModel):
    """`data` of both Live events; `type` is required for `live.transport.incoming` only."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: StrictStr | None = None
    session_id: SessionId
    sip_headers: SipHeaderList
    sip_media_security: Annotated[StrictStr, Field(max_length=MAX_MEDIA_SECURITY_CHARS)] | None = (
        None
    )


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    type: StrictStr
    created_at: Annotated[StrictInt, Field(ge=0, le=LATEST_CREATED_AT)]


class _IncomingCall(_Envelope):
    data: _CallData


class _IncomingLiveCall(_Envelope):
    data: _LiveCallData


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """One incoming call: event id, arrival time (Unix s), call id, SIP headers in order.

    `api` says which API announced it; for Live, `call_id` is the `session_id` (prefix
    included) and `media_security` the `sip_media_security` as given (None when absent).
    """

    event_id: str
    created_at: int
    call_id: str
    sip_headers: tuple[tuple[str, str], ...]
    api: CallApi = "realtime"
    media_security: str | None = None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any other event (or a Live transport other than SIP): acknowledged, nothing done."""

    type: str
    detail: str | None = None


def parse_event(body: str) -> IncomingCall | OtherEvent:
    """Parse a verified body; raise UnreadablePayload when it is not a usable event."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raise UnreadablePayload("the body is not JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise UnreadablePayload("the body is not an event object with a type")
    kind = raw["type"]
    if kind == INCOMING_CALL:
        return _realtime_call(raw)
    if kind in (LIVE_TRANSPORT_INCOMING, LIVE_CALL_INCOMING):
        return _live_call(raw, kind)
    return OtherEvent(kind[:100])


def _realtime_call(raw: dict[str, object]) -> IncomingCall:
    try:
        event = _IncomingCall.model_validate(raw)
    except ValidationError:
        raise UnreadablePayload(f"the {INCOMING_CALL} event lacks required fields") from None
    return IncomingCall(
        event_id=event.id,
        created_at=event.created_at,
        call_id=event.data.call_id,
        sip_headers=_headers(event.data.sip_headers),
    )


def _live_call(raw: dict[str, object], kind: str) -> IncomingCall | OtherEvent:
    data = raw.get("data")
    transport = data.get("type") if isinstance(data, dict) else None
    if isinstance(transport, str) and transport != SIP_TRANSPORT:
        # Only SIP transports are phone calls sip-router can route; another transport's
        # event is acknowledged whatever else it carries, so it is not delivered again.
        return OtherEvent(kind, detail=f"transport {_text(transport[:40])!r} is not sip")
    try:
        event = _IncomingLiveCall.model_validate(raw)
    except ValidationError:
        raise UnreadablePayload(f"the {kind} event lacks required fields") from None
    if event.data.type is None and kind == LIVE_TRANSPORT_INCOMING:
        raise UnreadablePayload(f"the {kind} event lacks data.type")
    return IncomingCall(
        event_id=event.id,
        created_at=event.created_at,
        call_id=event.data.session_id,
        sip_headers=_headers(event.data.sip_headers),
        api="live",
        media_security=(
            None if event.data.sip_media_security is None else _text(event.data.sip_media_security)
        ),
    )


def _headers(headers: list[_SipHeader]) -> tuple[tuple[str, str], ...]:
    return tuple((_text(h.name), _text(h.value)) for h in headers)


def _text(value: str) -> str:
    """JSON may carry lone surrogates (`\\ud800`); they cannot be encoded again, so replace them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value
