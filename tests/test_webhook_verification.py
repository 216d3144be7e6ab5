"""WebhookVerifier on real Standard Webhooks signatures, and parse_event, without HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from app.errors import DeliveryError, MalformedDelivery, SignatureMismatch, UnreadablePayload
from app.webhook_event import IncomingCall, OtherEvent, parse_event
from app.webhook_signing import incoming_call_body, live_call_body
from app.webhook_verification import VerifiedDelivery, WebhookVerifier
from tests.conftest import new_webhook_secret

NOW = 1_780_000_000
TOLERANCE_S = 300.0
SECRET = new_webhook_secret()
OTHER_SECRET = new_webhook_secret()
WEBHOOK_ID = "wh_0123456789abcdef"
BODY = incoming_call_body("rtc_abc123", NOW, [("From", "<sip:+14155550123@example.com>")])


def sign(
    body: bytes = BODY,
    *,
    secret: str = SECRET,
    webhook_id: str = WEBHOOK_ID,
    timestamp: int = NOW,
) -> dict[str, str]:
    """Headers as OpenAI sends them, signed by the standardwebhooks library itself."""
    signature = Webhook(secret).sign(
        webhook_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def digest_of(headers: dict[str, str]) -> str:
    return headers["webhook-signature"].split(",", 1)[1]


def verifier(*secrets: str, tolerance_s: float = TOLERANCE_S) -> WebhookVerifier:
    return WebhookVerifier(secrets or (SECRET,), tolerance_s)


def test_a_valid_signature_verifies() -> None:
    delivery = verifier().verify(BODY, sign(), now=NOW)

    assert delivery == VerifiedDelivery(WEBHOOK_ID, NOW, BODY.decode())


def test_rotation_a_delivery_signed_with_the_second_secret_verifies() -> None:
    headers = sign(secret=OTHER_SECRET)

    assert verifier(SECRET, OTHER_SECRET).verify(BODY, headers, now=NOW).webhook_id == WEBHOOK_ID
    with pytest.raises(SignatureMismatch):
        verifier(SECRET).verify(BODY, headers, now=NOW)


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param(["v1,{bad}", "v1,{good}"], id="good-second"),
        pytest.param(["v1,{good}", "v1,{bad}"], id="good-first"),
        pytest.param(["v2,{good}", "garbage", "v1,{good}"], id="after-ill-formed"),
        pytest.param(["v1a,{good}", "v1,not*base64", "v1,{good}"], id="after-bad-base64"),
    ],
)
def test_one_matching_entry_among_several_signatures_is_enough(entries: list[str]) -> None:
    good = digest_of(sign())
    bad = digest_of(sign(secret=OTHER_SECRET))
    headers = {**sign(), "webhook-signature": " ".join(entries).format(good=good, bad=bad)}

    assert verifier().verify(BODY, headers, now=NOW).body == BODY.decode()


def test_the_tolerance_boundary_is_inclusive() -> None:
    early, late = sign(timestamp=NOW - 300), sign(timestamp=NOW + 300)

    assert verifier().verify(BODY, early, now=NOW).timestamp == NOW - 300
    assert verifier().verify(BODY, late, now=NOW).timestamp == NOW + 300


def _replace(**changes: str) -> dict[str, str]:
    return {**sign(), **{name.replace("_", "-"): value for name, value in changes.items()}}


def _without(name: str) -> dict[str, str]:
    headers = sign()
    del headers[name]
    return headers


GOOD_DIGEST = digest_of(sign())

# (headers, body, expected error): each is refused before any secret could match.
REFUSED: list[object] = [
    pytest.param(
        _replace(webhook_signature="v1" + GOOD_DIGEST), BODY, MalformedDelivery, id="no-comma"
    ),
    pytest.param(
        _replace(webhook_signature=f"v1,{GOOD_DIGEST},x"), BODY, MalformedDelivery, id="two-commas"
    ),
    pytest.param(
        _replace(webhook_signature="v1,%%%not-base64%%%"), BODY, MalformedDelivery, id="bad-base64"
    ),
    pytest.param(
        _replace(webhook_signature="v1," + GOOD_DIGEST[:-4]),
        BODY,
        MalformedDelivery,
        id="short-digest",
    ),
    pytest.param(
        _replace(webhook_signature="v2," + GOOD_DIGEST), BODY, MalformedDelivery, id="v2-only"
    ),
    pytest.param(
        _replace(webhook_signature="v1a," + GOOD_DIGEST), BODY, MalformedDelivery, id="v1a-only"
    ),
    pytest.param(sign(secret=OTHER_SECRET), BODY, SignatureMismatch, id="wrong-secret"),
    pytest.param(sign(timestamp=NOW - 301), BODY, SignatureMismatch, id="old-timestamp"),
    pytest.param(sign(timestamp=NOW + 301), BODY, SignatureMismatch, id="future-timestamp"),
    pytest.param(_replace(webhook_timestamp="soon"), BODY, MalformedDelivery, id="word-timestamp"),
    pytest.param(
        _replace(webhook_timestamp=f"{NOW}.0"), BODY, MalformedDelivery, id="fractional-timestamp"
    ),
    pytest.param(
        _replace(webhook_timestamp=f"-{NOW}"), BODY, MalformedDelivery, id="negative-timestamp"
    ),
    pytest.param(
        _replace(webhook_timestamp="1" * 13), BODY, MalformedDelivery, id="thirteen-digit-timestamp"
    ),
    pytest.param(
        _replace(webhook_timestamp="\u0661\u0662\u0663"),
        BODY,
        MalformedDelivery,
        id="arabic-digits",
    ),
    pytest.param(_without("webhook-id"), BODY, MalformedDelivery, id="missing-id"),
    pytest.param(_without("webhook-timestamp"), BODY, MalformedDelivery, id="missing-timestamp"),
    pytest.param(_without("webhook-signature"), BODY, MalformedDelivery, id="missing-signature"),
    pytest.param(_replace(webhook_id="   "), BODY, MalformedDelivery, id="blank-id"),
    pytest.param(_replace(webhook_signature=""), BODY, MalformedDelivery, id="empty-signature"),
    pytest.param(
        sign(), BODY.replace(b"rtc_abc123", b"rtc_abc124"), SignatureMismatch, id="tampered"
    ),
    pytest.param(sign(), BODY + b" ", SignatureMismatch, id="appended-space"),
    pytest.param(sign(), b"\xff\xfe" + BODY, MalformedDelivery, id="non-utf8-body"),
    pytest.param(sign(), b"", SignatureMismatch, id="empty-body-other-signature"),
    pytest.param(sign(webhook_id="wh 1"), BODY, MalformedDelivery, id="id-with-space"),
    pytest.param(sign(webhook_id="wh\x001"), BODY, MalformedDelivery, id="id-with-nul"),
    pytest.param(sign(webhook_id="wh\x7f1"), BODY, MalformedDelivery, id="id-with-del"),
    pytest.param(sign(webhook_id="wh\t1"), BODY, MalformedDelivery, id="id-with-tab"),
    pytest.param(sign(webhook_id="wh_é"), BODY, MalformedDelivery, id="id-non-ascii"),
    pytest.param(sign(webhook_id="w" * 257), BODY, MalformedDelivery, id="id-257-chars"),
]


@pytest.mark.parametrize(("headers", "body", "error"), REFUSED)
def test_malformed_and_unverifiable_deliveries_raise_the_domain_error(
    headers: dict[str, str], body: bytes, error: type[DeliveryError]
) -> None:
    with pytest.raises(error) as raised:
        verifier().verify(body, headers, now=NOW)

    # Exactly that class: a 400 case answered 401 (or the reverse) is a bug too.
    assert type(raised.value) is error
    assert raised.value.status_code == (401 if error is SignatureMismatch else 400)


def test_a_256_char_id_is_still_accepted() -> None:
    headers = sign(webhook_id="w" * 256)

    assert verifier().verify(BODY, headers, now=NOW).webhook_id == "w" * 256


def test_an_empty_body_that_is_signed_verifies_but_is_no_event() -> None:
    delivery = verifier().verify(b"", sign(b""), now=NOW)

    with pytest.raises(UnreadablePayload):
        parse_event(delivery.body)


def test_error_messages_never_echo_the_delivery() -> None:
    marker = "MARKER-7f3a"
    headers = {
        "webhook-id": f"{marker} id",
        "webhook-timestamp": marker,
        "webhook-signature": f"v1,{marker}",
    }
    for case in (headers, {**sign(), "webhook-signature": f"v1,{marker}"}):
        with pytest.raises((MalformedDelivery, SignatureMismatch)) as raised:
            verifier().verify(marker.encode(), case, now=NOW)
        assert marker not in str(raised.value)


def test_at_least_one_secret_is_required() -> None:
    with pytest.raises(ValueError, match="secret"):
        WebhookVerifier([], TOLERANCE_S)


def test_an_out_of_range_timestamp_is_refused_whatever_the_tolerance() -> None:
    headers = {**sign(), "webhook-timestamp": "999999999999"}

    with pytest.raises((MalformedDelivery, SignatureMismatch)):
        verifier(tolerance_s=1e13).verify(BODY, headers, now=NOW)


# --- properties -------------------------------------------------------------------------

_VALID = sign()


def _header_values(name: str, plausible: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.just(_VALID[name]), plausible, st.text(max_size=300))


_signature_entries = st.lists(
    st.one_of(
        st.just("v1," + GOOD_DIGEST),
        st.builds(lambda raw: "v1," + base64.b64encode(raw).decode(), st.binary(max_size=40)),
        st.text(alphabet="v12,=+/ abcAZ09", max_size=60),
    ),
    max_size=20,
).map(" ".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(st.just(BODY), st.binary(max_size=2000)),
    webhook_id=_header_values("webhook-id", st.text(alphabet="wh_ \t\x00abc", max_size=300)),
    timestamp=_header_values(
        "webhook-timestamp",
        st.integers(min_value=-(10**14), max_value=10**14).map(str),
    ),
    signature=_header_values("webhook-signature", _signature_entries),
    tolerance_s=st.sampled_from([1.0, TOLERANCE_S, 3600.0 * 24 * 365]),
)
def test_verify_raises_only_domain_errors(
    body: bytes,
    webhook_id: str | None,
    timestamp: str | None,
    signature: str | None,
    tolerance_s: float,
) -> None:
    headers = {
        name: value
        for name, value in (
            ("webhook-id", webhook_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        )
        if value is not None
    }
    try:
        delivery = verifier(tolerance_s=tolerance_s).verify(body, headers, now=NOW)
    except (MalformedDelivery, SignatureMismatch):
        return
    # Whatever verified was really signed with the secret.
    assert (delivery.webhook_id, delivery.body) == (WEBHOOK_ID, BODY.decode())
    assert body == BODY


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_call_events = st.fixed_dictionaries(
    {"type": st.sampled_from(["realtime.call.incoming", "response.completed"])},
    optional={
        "id": _json_values | st.text(max_size=300),
        "created_at": _json_values | st.integers(),
        "object": _json_values,
        "data": _json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "call_id": _json_values | st.from_regex(r"[A-Za-z0-9_\-]{0,130}", fullmatch=True),
                "sip_headers": _json_values
                | st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"name": _json_values, "value": _json_values}
                    ),
                    max_size=3,
                ),
            },
        ),
    },
)


@settings(max_examples=300)
@given(
    text=st.one_of(
        st.text(),
        _json_values.map(json.dumps),
        _call_events.map(json.dumps),
        st.integers(min_value=1, max_value=5000).map(lambda depth: "[" * depth + "]" * depth),
    )
)
def test_parse_event_raises_only_unreadable_payload(text: str) -> None:
    try:
        event = parse_event(text)
    except UnreadablePayload:
        return
    assert isinstance(event, IncomingCall | OtherEvent)
    if isinstance(event, IncomingCall):
        raw = json.loads(text)
        assert raw["type"] == "realtime.call.incoming"
        assert event.call_id == raw["data"]["call_id"]


def test_parse_event_reads_an_incoming_call() -> None:
    event = parse_event(BODY.decode())

    assert isinstance(event, IncomingCall)
    assert (event.call_id, event.created_at) == ("rtc_abc123", NOW)
    assert event.sip_headers == (("From", "<sip:+14155550123@example.com>"),)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda e: e["data"].pop("call_id"), id="no-call-id"),
        pytest.param(lambda e: e["data"].update(call_id="rtc bad/../x"), id="bad-call-id"),
        pytest.param(lambda e: e["data"].update(call_id="r" * 129), id="long-call-id"),
        pytest.param(lambda e: e.pop("created_at"), id="no-created-at"),
        pytest.param(lambda e: e.update(created_at="1780000000"), id="string-created-at"),
        pytest.param(lambda e: e.update(created_at=-1), id="negative-created-at"),
        pytest.param(lambda e: e["data"].pop("sip_headers"), id="no-sip-headers"),
        pytest.param(
            lambda e: e["data"].update(sip_headers=[{"name": "From"}]), id="header-no-value"
        ),
        pytest.param(lambda e: e.pop("data"), id="no-data"),
        pytest.param(lambda e: e.update(type=7), id="numeric-type"),
    ],
)
def test_an_incoming_call_without_its_required_fields_is_unreadable(
    mutate: Callable[[dict[str, Any]], object],
) -> None:
    event = json.loads(BODY)
    mutate(event)

    with pytest.raises(UnreadablePayload):
        parse_event(json.dumps(event))


# --- GPT-Live events ---------------------------------------------------

LIVE_SESSION = "live_u0_479a275623b54bdb9b6fbae2f7cbd408"
LIVE_HEADERS = [
    ("From", "<sip:+14155550123@example.com>;tag=abc123"),
    ("To", "<sip:+14155550100@example.com>"),
    ("Call-ID", "call-123@example.com"),
]


def live_event(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(live_call_body(LIVE_SESSION, NOW, LIVE_HEADERS))
    event.update(changes)
    return event


def test_parse_event_reads_a_live_transport_incoming() -> None:
    body = live_call_body(LIVE_SESSION, NOW, LIVE_HEADERS)

    event = parse_event(body.decode())

    assert event == IncomingCall(
        event_id=json.loads(body)["id"],
        created_at=NOW,
        call_id=LIVE_SESSION,
        sip_headers=tuple(LIVE_HEADERS),
        api="live",
        media_security="srtp",
    )


def test_parse_event_reads_the_deprecated_live_call_incoming() -> None:
    body = live_call_body(
        LIVE_SESSION, NOW, LIVE_HEADERS, media_security=None, event_type="live.call.incoming"
    )
    assert "type" not in json.loads(body)["data"]

    event = parse_event(body.decode())

    assert isinstance(event, IncomingCall)
    assert (event.api, event.call_id, event.media_security) == ("live", LIVE_SESSION, None)


@pytest.mark.parametrize("value", ["rtp", "srtp", "zrtp", "SRTP", "x" * 64])
def test_a_live_media_security_value_is_kept_as_given(value: str) -> None:
    event = parse_event(
        live_call_body(LIVE_SESSION, NOW, LIVE_HEADERS, media_security=value).decode()
    )

    assert isinstance(event, IncomingCall)
    assert event.media_security == value


def test_a_realtime_call_has_no_media_security() -> None:
    event = parse_event(BODY.decode())

    assert isinstance(event, IncomingCall)
    assert (event.api, event.media_security) == ("realtime", None)


def test_a_live_session_id_keeps_its_prefix_up_to_160_characters() -> None:
    session_id = "live_u0_" + "a" * 152
    event = parse_event(live_call_body(session_id, NOW, LIVE_HEADERS).decode())

    assert isinstance(event, IncomingCall)
    assert event.call_id == session_id


@pytest.mark.parametrize("transport", ["webrtc", "websocket", ""])
def test_a_live_transport_other_than_sip_is_another_event(transport: str) -> None:
    event = live_event()
    event["data"]["type"] = transport

    parsed = parse_event(json.dumps(event))

    assert isinstance(parsed, OtherEvent)
    assert parsed.type == "live.transport.incoming"
    assert parsed.detail == f"transport {transport!r} is not sip"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda e: e["data"].pop("type"), id="no-transport-type"),
        pytest.param(lambda e: e["data"].update(type=1), id="numeric-transport-type"),
        pytest.param(lambda e: e["data"].pop("session_id"), id="no-session-id"),
        pytest.param(lambda e: e["data"].update(session_id="live_u0 x"), id="space-session-id"),
        pytest.param(lambda e: e["data"].update(session_id="live/../x"), id="path-session-id"),
        pytest.param(lambda e: e["data"].update(session_id="l" * 161), id="long-session-id"),
        pytest.param(lambda e: e["data"].update(session_id=""), id="empty-session-id"),
        pytest.param(lambda e: e["data"].update(sip_media_security=1), id="numeric-security"),
        pytest.param(lambda e: e["data"].update(sip_media_security="s" * 65), id="long-security"),
        pytest.param(lambda e: e["data"].pop("sip_headers"), id="no-sip-headers"),
        pytest.param(lambda e: e.pop("created_at"), id="no-created-at"),
        pytest.param(lambda e: e.pop("id"), id="no-event-id"),
        pytest.param(lambda e: e.update(data=[]), id="data-not-an-object"),
    ],
)
def test_a_live_event_without_its_required_fields_is_unreadable(
    mutate: Callable[[dict[str, Any]], object],
) -> None:
    event = live_event()
    mutate(event)

    with pytest.raises(UnreadablePayload, match=r"live\.transport\.incoming"):
        parse_event(json.dumps(event))


def test_a_deprecated_live_event_needs_no_transport_type_but_its_session_id() -> None:
    event = live_event(type="live.call.incoming")
    event["data"].pop("type")
    event["data"].pop("session_id")

    with pytest.raises(UnreadablePayload, match=r"live\.call\.incoming"):
        parse_event(json.dumps(event))


_live_events = st.fixed_dictionaries(
    {"type": st.sampled_from(["live.transport.incoming", "live.call.incoming"])},
    optional={
        "id": _json_values | st.text(max_size=300),
        "created_at": _json_values | st.integers(),
        "data": _json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "type": _json_values | st.sampled_from(["sip", "webrtc"]),
                "session_id": _json_values
                | st.from_regex(r"live_[A-Za-z0-9_\-]{0,160}", fullmatch=True),
                "sip_media_security": _json_values | st.sampled_from(["srtp", "rtp"]),
                "sip_headers": _json_values
                | st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"name": _json_values, "value": _json_values}
                    ),
                    max_size=3,
                ),
            },
        ),
    },
)


@settings(max_examples=300)
@given(event=_live_events)
def test_parse_event_of_a_live_event_raises_only_unreadable_payload(event: dict[str, Any]) -> None:
    try:
        parsed = parse_event(json.dumps(event))
    except UnreadablePayload:
        return
    if isinstance(parsed, IncomingCall):
        assert parsed.api == "live"
        assert parsed.call_id == event["data"]["session_id"]
        assert event["data"].get("type") in ("sip", None)
    else:
        assert parsed.detail is not None
