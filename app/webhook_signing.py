"""Signed incoming-call deliveries as OpenAI sends them (send-test-call, tests):
`realtime.call.incoming`, and GPT-Live's `live.transport.incoming`."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks import Webhook

from app.call_api import CallApi
from app.rules.simulation import sip_headers_for


@dataclass(frozen=True, slots=True)
class SignedDelivery:
    headers: dict[str, str]
    body: bytes
    call_id: str
    webhook_id: str


def incoming_call_body(
    call_id: str, created_at: int, sip_headers: Sequence[tuple[str, str]]
) -> bytes:
    """The event's JSON, shaped like OpenAI's (see reference/webhook-event.md)."""
    event = {
        "object": "event",
        "id": "evt_" + secrets.token_hex(16),
        "type": "realtime.call.incoming",
        "created_at": created_at,
        "data": {
            "call_id": call_id,
            "sip_headers": [{"name": name, "value": value} for name, value in sip_headers],
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def live_call_body(
    session_id: str,
    created_at: int,
    sip_headers: Sequence[tuple[str, str]],
    *,
    media_security: str | None = "srtp",
    event_type: str = "live.transport.incoming",
) -> bytes:
    """A GPT-Live event's JSON (reference/gpt-live-sip.md section 3): `live.transport.incoming`
    with `data.type: "sip"`, or the deprecated `live.call.incoming` without it."""
    data: dict[str, object] = {
        "session_id": session_id,
        "sip_headers": [{"name": name, "value": value} for name, value in sip_headers],
    }
    if event_type == "live.transport.incoming":
        data = {"type": "sip", **data}
    if media_security is not None:
        data["sip_media_security"] = media_security
    event = {
        "object": "event",
        "id": "evt_" + secrets.token_hex(16),
        "type": event_type,
        "created_at": created_at,
        "data": data,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def sign_delivery(
    secret: str, body: bytes, *, webhook_id: str | None = None, timestamp: int
) -> dict[str, str]:
    """The Standard Webhooks headers for `body`, signed with `secret`."""
    webhook_id = webhook_id or "wh_" + secrets.token_hex(16)
    signature = Webhook(secret).sign(
        webhook_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    return {
        "content-type": "application/json",
        "user-agent": "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def signed_test_call(
    secret: str,
    caller: str,
    called: str,
    *,
    now: int,
    extra_headers: dict[str, str] | None = None,
    call_id: str | None = None,
    api: CallApi = "realtime",
    sip_call_id: str | None = None,
) -> SignedDelivery:
    """A realistic signed delivery for a call from `caller` to `called`.

    `api="live"` sends `live.transport.incoming` for a `live_u0_...` session over SRTP.
    `sip_call_id` is the INVITE's Call-ID (default: a new one): two deliveries with the same
    one and the same numbers announce one phone call.
    """
    if call_id is None:
        call_id = ("live_u0_" if api == "live" else "rtc_") + secrets.token_hex(16)
    sip_headers = sip_headers_for(caller, called, extra_headers)
    sip_headers.append(("Call-ID", sip_call_id or secrets.token_hex(8) + "@sip-router.invalid"))
    if api == "live":
        body = live_call_body(call_id, now, sip_headers)
    else:
        body = incoming_call_body(call_id, now, sip_headers)
    headers = sign_delivery(secret, body, timestamp=now)
    return SignedDelivery(headers, body, call_id, headers["webhook-id"])
