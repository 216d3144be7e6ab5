"""The key naming one phone call across its Realtime and GPT-Live announcements."""

from __future__ import annotations

import hashlib

from app.sip_call_key import sip_call_key

FROM = "<sip:+14155550123@example.com>;tag=abc123"
HEADERS = [("From", FROM), ("To", "<sip:+14155550100@example.com>"), ("Call-ID", "c-1@pbx")]


def test_the_key_is_a_prefixed_digest_of_call_id_and_from() -> None:
    expected = hashlib.sha256(f"c-1@pbx\n{FROM}".encode()).hexdigest()

    assert sip_call_key(HEADERS) == f"sipcall:{expected}"


def test_no_header_value_is_readable_in_the_key() -> None:
    key = sip_call_key(HEADERS)

    assert key is not None
    assert "pbx" not in key
    assert "4155550123" not in key


def test_names_are_case_insensitive_and_compact_forms_count() -> None:
    compact = [("f", FROM), ("i", "c-1@pbx")]
    shouted = [("CALL-ID", " c-1@pbx "), ("FROM", FROM)]

    assert sip_call_key(compact) == sip_call_key(shouted) == sip_call_key(HEADERS)


def test_the_first_value_of_each_header_counts() -> None:
    assert sip_call_key([*HEADERS, ("Call-ID", "other"), ("From", "<sip:x@y>")]) == sip_call_key(
        HEADERS
    )


def test_another_caller_with_the_same_call_id_is_another_phone_call() -> None:
    other = [("From", "<sip:+14155550999@example.com>;tag=zz"), ("Call-ID", "c-1@pbx")]

    assert sip_call_key(other) != sip_call_key(HEADERS)


def test_without_a_call_id_there_is_no_key() -> None:
    assert sip_call_key([("From", FROM)]) is None
    assert sip_call_key([("From", FROM), ("Call-ID", "  ")]) is None
    assert sip_call_key([]) is None


def test_a_call_id_without_from_still_names_the_call() -> None:
    assert sip_call_key([("Call-ID", "c-1@pbx")]) == sip_call_key([("Call-ID", "c-1@pbx")])
    assert sip_call_key([("Call-ID", "c-1@pbx")]) != sip_call_key(HEADERS)


def test_a_lone_surrogate_does_not_raise() -> None:
    assert sip_call_key([("Call-ID", "\ud800@pbx")]) is not None
