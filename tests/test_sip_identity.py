"""Caller and called identity from SIP headers, over header shapes seen from real trunks."""

from __future__ import annotations

import dataclasses
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import sip_identity
from app.sip_identity import (
    MAX_HEADER_VALUE_CHARS,
    CallParties,
    Party,
    SipHeaders,
    parse_parties,
)


def parties(*pairs: tuple[str, str], region: str = "US") -> CallParties:
    return parse_parties(SipHeaders.from_pairs(pairs), region)


def number(e164: str, country: str | None, display_name: str | None = None) -> Party:
    return Party(e164=e164, display_name=display_name, country=country, anonymous=False)


def anonymous(display_name: str | None = None) -> Party:
    return Party(e164=None, display_name=display_name, country=None, anonymous=True)


def unreadable(display_name: str | None = None) -> Party:
    return Party(e164=None, display_name=display_name, country=None, anonymous=False)


# --- SipHeaders ---------------------------------------------------------------------------


def test_headers_keep_order_and_repeats_and_ignore_name_case() -> None:
    headers = SipHeaders.from_pairs(
        [("Diversion", "<sip:1@a>"), ("X-Tag", "one"), ("diversion", "<sip:2@b>")]
    )
    assert headers.get_all("DIVERSION") == ("<sip:1@a>", "<sip:2@b>")
    assert headers.first("diversion") == "<sip:1@a>"
    assert headers.first("x-tag") == "one"
    assert headers.get_all("Missing") == ()
    assert headers.first("Missing") is None
    assert list(headers) == [
        ("Diversion", "<sip:1@a>"),
        ("X-Tag", "one"),
        ("diversion", "<sip:2@b>"),
    ]
    assert len(headers) == 3


def test_headers_cap_values_and_trim_names() -> None:
    headers = SipHeaders.from_pairs((name, value) for name, value in [(" X-Long ", "a" * 70_000)])
    (value,) = headers.get_all("x-long")
    assert value == "a" * MAX_HEADER_VALUE_CHARS
    assert MAX_HEADER_VALUE_CHARS == 256


def test_headers_template_dict_has_lower_case_names_and_first_values() -> None:
    headers = SipHeaders.from_pairs(
        [("X-Partner-Id", "ABC1234"), ("x-partner-id", "ZZZ9999"), ("Call-ID", "c" * 300)]
    )
    assert headers.as_template_dict() == {"x-partner-id": "ABC1234", "call-id": "c" * 256}


def test_headers_are_immutable_and_compare_by_content() -> None:
    headers = SipHeaders.from_pairs([("From", "sip:+14155550123@a")])
    with pytest.raises(AttributeError):
        headers._pairs = ()
    headers.as_template_dict()["from"] = "changed"
    assert headers.first("From") == "sip:+14155550123@a"
    assert headers == SipHeaders.from_pairs([("From", "sip:+14155550123@a")])
    assert hash(headers) == hash(SipHeaders.from_pairs([("From", "sip:+14155550123@a")]))
    assert headers != SipHeaders.from_pairs([("From", "sip:+14155550124@a")])


def test_party_is_frozen() -> None:
    party = number("+14155550123", "US")
    with pytest.raises(dataclasses.FrozenInstanceError):
        party.e164 = "+1"  # type: ignore[misc]


# --- the shapes in the webhook reference ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            '"Alice Example" <sip:+14155550123@pstn.twilio.com>;tag=64467c1b',
            number("+14155550123", "US", "Alice Example"),
        ),
        ("<sip:4155550123@203.0.113.7:5060;user=phone>;tag=abc", number("+14155550123", "US")),
        ("sip:+142555512112@sip.example.com", number("+142555512112", None)),
        ("<tel:+44-20-7946-0958>;tag=1", number("+442079460958", "GB")),
        ('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=xyz', anonymous("Anonymous")),
    ],
)
def test_reference_from_shapes(value: str, expected: Party) -> None:
    assert parties(("From", value)).caller == expected


def test_reference_delivery() -> None:
    result = parties(
        ("From", "sip:+142555512112@sip.example.com"),
        ("To", "sip:+18005551212@sip.example.com"),
        ("Call-ID", "03782086-4ce9-44bf-8b0d-4e303d2cc590"),
    )
    assert result == CallParties(
        caller=number("+142555512112", None), called=number("+18005551212", "US")
    )


def test_reference_asserted_identity_with_privacy() -> None:
    headers = [
        ("From", '"Alice" <sip:+14155550123@pstn.example>;tag=1'),
        ("P-Asserted-Identity", "<sip:+4930123456@carrier.example;user=phone>"),
        ("To", "<sip:+18005551212@sip.example.com>"),
        ("X-Partner-Id", "ABC1234"),
    ]
    assert parties(*headers).caller == number("+4930123456", "DE", "Alice")
    withheld = parties(*headers, ("Privacy", "id"))
    assert withheld.caller == anonymous()
    assert withheld.called == number("+18005551212", "US")


# --- more shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        # Twilio
        (
            '"+14155550123" <sip:+14155550123@example.pstn.twilio.com>;tag=92b1c4a0_6772d868',
            "US",
            number("+14155550123", "US", "+14155550123"),
        ),
        # Telnyx
        (
            "<sip:+13125550123@sip.telnyx.com:5060>;tag=1a2b3c",
            "US",
            number("+13125550123", "US"),
        ),
        # Vonage: E.164 without "+"
        ("<sip:14155550123@sip.nexmo.com>;tag=as1", "US", number("+14155550123", "US")),
        ("<sip:4930123456@sip.nexmo.com>;tag=as1", "DE", number("+4930123456", "DE")),
        # ... but digits that are no valid number in the region are not guessed abroad.
        ("<sip:4930123456@sip.nexmo.com>;tag=as1", "US", unreadable()),
        # Asterisk
        (
            '"John Doe" <sip:4155550123@192.168.1.10>;tag=as58f4201b',
            "US",
            number("+14155550123", "US", "John Doe"),
        ),
        ('"John Doe" <sip:1001@192.168.1.10>;tag=as1', "US", unreadable("John Doe")),
        # Unquoted display name
        (
            "Alice Example <sip:+14155550123@a.example>",
            "US",
            number("+14155550123", "US", "Alice Example"),
        ),
        ("Alice<sip:+14155550123@a.example>", "US", number("+14155550123", "US", "Alice")),
        # Escaped quotes, backslashes and Unicode in a quoted display name
        (
            r'"Al \"The Voice\" B\\x" <sip:+14155550123@a>',
            "US",
            number("+14155550123", "US", 'Al "The Voice" B\\x'),
        ),
        (
            '"Jürgen Müller 📞" <sip:+4930123456@a>',
            "US",
            number("+4930123456", "DE", "Jürgen Müller 📞"),
        ),
        (
            '"Zoë, Ltd; <CEO>" <sip:+4930123456@a>',
            "US",
            number("+4930123456", "DE", "Zoë, Ltd; <CEO>"),
        ),
        ('"" <sip:+4930123456@a>', "US", number("+4930123456", "DE")),
        # Control and bidi characters never reach a template
        (
            '"Eve\u202e\x00\n moc" <sip:+4930123456@a>',
            "US",
            number("+4930123456", "DE", "Eve moc"),
        ),
        # sips, ports, IPv6, URI and header parameters, URI headers
        (
            "<sips:+33123456789@[2001:db8::1]:5061;transport=tls>",
            "US",
            number("+33123456789", "FR"),
        ),
        ("<sip:+33123456789@[2001:db8::1]>", "US", number("+33123456789", "FR")),
        ("<SIP:+33123456789@Example.COM:5080>", "US", number("+33123456789", "FR")),
        (
            "<sip:+14155550123@a.example;user=phone;transport=udp?X-Foo=bar>;tag=9;expires=3",
            "US",
            number("+14155550123", "US"),
        ),
        ("<sip:+14155550123:secret@a.example>", "US", number("+14155550123", "US")),
        # Number portability and ISDN parameters in the user part
        (
            "<sip:+14155550123;npdi;rn=+14155550000@a.example;user=phone>",
            "US",
            number("+14155550123", "US"),
        ),
        # Percent-encoded "+" and separators
        ("<sip:%2B14155550123@a.example>", "US", number("+14155550123", "US")),
        ("<sip:+1-415-555-0123@a.example;user=phone>", "US", number("+14155550123", "US")),
        ("<sip:+1%20415%20555%200123@a.example>", "US", number("+14155550123", "US")),
        # tel URIs
        ("tel:+1-415-555-0123", "US", number("+14155550123", "US")),
        ("<tel:+1.415.555.0123;ext=22>", "US", number("+14155550123", "US")),
        ("<tel:5550123;phone-context=+1-415>;tag=x", "US", number("+14155550123", "US")),
        ("tel:5550123;phone-context=+1-415", "DE", number("+14155550123", "US")),
        ("<tel:030123456;phone-context=example.com>", "DE", number("+4930123456", "DE")),
        (
            "<sip:5550123;phone-context=+1-415@gw.example;user=phone>",
            "US",
            number("+14155550123", "US"),
        ),
        ("<tel:+442079460958;phone-context=+1-415>", "US", number("+442079460958", "GB")),
        # Without angle brackets
        ("sip:+14155550123@a.example;tag=1", "US", number("+14155550123", "US")),
        ("sips:+14155550123@a.example:5061", "US", number("+14155550123", "US")),
        # Bare numbers and user@host without a scheme
        ("+1 415 555 0123", "US", number("+14155550123", "US")),
        ("4155550123@a.example", "US", number("+14155550123", "US")),
        # National formats read in the region
        ("<sip:4155550123@a>", "US", number("+14155550123", "US")),
        ("<sip:(415)555-0123@a>", "US", number("+14155550123", "US")),
        ("<sip:6135550123@a>", "US", number("+16135550123", "CA")),
        ("<sip:030123456@a>", "DE", number("+4930123456", "DE")),
        ("<sip:015112345678@a>", "DE", number("+4915112345678", "DE")),
        ("<sip:00442079460958@a>", "DE", number("+442079460958", "GB")),
        ("<sip:02079460958@a>", "GB", number("+442079460958", "GB")),
        ("<sip:07400123456@a>", "GB", number("+447400123456", "GB")),
        ("<sip:0123456789@a>", "FR", number("+33123456789", "FR")),
        ("<sip:0612345678@a>", "FR", number("+33612345678", "FR")),
        ("<sip:0033123456789@a>", "FR", number("+33123456789", "FR")),
        # A national number cannot be read in an unknown region, but "+" numbers can
        ("<sip:4155550123@a>", "XX", unreadable()),
        ("<sip:+4155550123@a>", "XX", number("+4155550123", "CH")),
    ],
)
def test_caller_shapes(value: str, region: str, expected: Party) -> None:
    assert parties(("From", value), region=region).caller == expected


@pytest.mark.parametrize(
    ("value", "display_name"),
    [
        ("<sip:anonymous@anonymous.invalid>", None),
        ("<sip:Anonymous@192.0.2.1>", None),
        ("<sip:ANONYMOUS@carrier.example;user=phone>", None),
        ("sip:anonymous@anonymous.invalid;tag=1", None),
        ('"Anonymous" <sip:anonymous@anonymous.invalid>', "Anonymous"),
        ("<sip:+14155550123@anonymous.invalid>", None),
        ("<sip:+14155550123@Anonymous.Invalid:5060>", None),
        ('"Restricted" <sip:restricted@a.example>', "Restricted"),
        ("<sip:unavailable@a.example>", None),
        ("<sip:unknown@10.0.0.1>", None),
        ('"Private" <sip:Private@a.example>', "Private"),
        ("<sip:alice@example.com>", None),
        # Withheld-caller sentinels that look like numbers: keypad spellings of ANONYMOUS,
        # RESTRICTED, UNAVAILABLE, UNKNOWN and BLOCKED (Twilio), with or without "+".
        ("<sip:+266696687@sip.twilio.com>", None),
        ("<sip:266696687@a.example>", None),
        ("<tel:+7378742833>", None),
        ("<sip:+86282452253@a.example>", None),
        ("<sip:+8656696@a.example>", None),
        ("<sip:2562533@a.example>", None),
        # All zeros, any length, alone or after a country code.
        ("<sip:0000000000@a.example>", None),
        ("<sip:0@a.example>", None),
        ("<sip:000-000-0000@a.example>", None),
        ("<tel:+10000000000>", None),
        ("<sip:+490000000@a.example>", None),
        ("<sip:a.example>", None),
        ("<sip:@a.example>", None),
        ("<sip:%20@a.example>", None),
        ("<tel:anonymous>", None),
        ("<tel:>", None),
        ("<sip:*67@a.example>", None),
        ("<sip:+@a.example>", None),
        ("<urn:service:sos>", None),
        ("<https://example.com/+14155550123>", None),
        ("<>", None),
        ("", None),
        ("   ", None),
        # Unreadable syntax: no closing bracket or quote.
        ("<sip:+14155550123@a.example", None),
        ('"Alice <sip:+14155550123@a.example>', None),
    ],
)
def test_anonymous_callers(value: str, display_name: str | None) -> None:
    assert parties(("From", value)).caller == anonymous(display_name)


def test_a_sentinel_in_asserted_identity_withholds_the_caller() -> None:
    result = parties(
        ("From", "<sip:+14155550123@a.example>"),
        ("P-Asserted-Identity", "<sip:+266696687@a.example>"),
    )
    assert result.caller == anonymous()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Zeros inside a number, and a number with a sentinel's digits inside it, are callers.
        ("<sip:+14155550100@a>", number("+14155550100", "US")),
        ("<sip:+4930000000@a>", number("+4930000000", "DE")),
        ("<sip:+12666966870@a>", number("+12666966870", None)),
    ],
)
def test_numbers_near_sentinels_are_callers(value: str, expected: Party) -> None:
    assert parties(("From", value)).caller == expected


def test_missing_headers_are_anonymous() -> None:
    result = parties(("Call-ID", "x"))
    assert result == CallParties(caller=anonymous(), called=anonymous())


@pytest.mark.parametrize(
    "privacy",
    [
        ["id"],
        ["ID"],
        [" id "],
        ["id;critical"],
        ["header;id"],
        ["user; id ;critical"],
        ["header, id"],
        ["none", "id"],
    ],
)
def test_privacy_id_withholds_the_caller_only(privacy: list[str]) -> None:
    result = parties(
        ("From", '"Alice" <sip:+14155550123@a>'),
        ("P-Asserted-Identity", "<sip:+14155550123@carrier>"),
        ("To", "<sip:+18005551212@b>"),
        *(("Privacy", value) for value in privacy),
    )
    assert result.caller == anonymous()
    assert result.called == number("+18005551212", "US")


@pytest.mark.parametrize(
    "privacy", ["none", "header", "user;session", "identity", "idx", "critical"]
)
def test_other_privacy_values_keep_the_caller(privacy: str) -> None:
    result = parties(("From", "<sip:+14155550123@a>"), ("Privacy", privacy))
    assert result.caller == number("+14155550123", "US")


def test_asserted_identity_wins_over_from() -> None:
    result = parties(
        ("From", '"Spoof" <sip:+18005550100@a>'),
        ("P-Asserted-Identity", '"Carrier Name" <sip:+442079460958@carrier>'),
    )
    assert result.caller == number("+442079460958", "GB", "Carrier Name")


def test_asserted_identity_anonymous_wins_over_from() -> None:
    result = parties(
        ("From", '"Alice" <sip:+14155550123@a>'),
        ("P-Asserted-Identity", "<sip:anonymous@anonymous.invalid>"),
    )
    assert result.caller == anonymous("Alice")


def test_asserted_identity_prefers_an_entry_with_a_number() -> None:
    in_one_header = parties(
        ("P-Asserted-Identity", '"Alice, A." <sip:alice@carrier.example>, <tel:+14155550123>')
    )
    assert in_one_header.caller == number("+14155550123", "US", "Alice, A.")
    in_two_headers = parties(
        ("P-Asserted-Identity", "<sip:alice@carrier.example>"),
        ("p-asserted-identity", "<tel:+4930123456>"),
    )
    assert in_two_headers.caller == number("+4930123456", "DE")
    both_numbers = parties(("P-Asserted-Identity", "<sip:+4930123456@carrier>, <tel:+14155550123>"))
    assert both_numbers.caller == number("+4930123456", "DE")


def test_unparseable_asserted_identity_falls_back_to_from() -> None:
    result = parties(
        ("From", "<sip:+14155550123@a>"), ("P-Asserted-Identity", "<sip:+4930123456@carrier")
    )
    assert result.caller == number("+14155550123", "US")


def test_header_names_are_case_insensitive_and_compact_forms_count() -> None:
    result = parties(
        ("p-asserted-identity", "<sip:+4930123456@carrier>"),
        ("to", "<sip:+18005551212@b>"),
    )
    assert result == CallParties(number("+4930123456", "DE"), number("+18005551212", "US"))
    compact = parties(("f", "<sip:+4930123456@a>"), ("t", "<sip:+18005551212@b>"))
    assert compact == result
    full_name_first = parties(("t", "<sip:+1@b>"), ("TO", "<sip:+18005551212@b>"))
    assert full_name_first.called == number("+18005551212", "US")


def test_repeated_from_uses_the_first() -> None:
    result = parties(("From", "<sip:+14155550123@a>"), ("From", "<sip:+4930123456@a>"))
    assert result.caller == number("+14155550123", "US")


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("<sip:+18005551212@sip.example.com>", "US", number("+18005551212", "US")),
        ("<sip:8005551212@sip.example.com;user=phone>", "US", number("+18005551212", "US")),
        ('"Sales" <sip:+4930123456@pbx.example>;tag=1', "US", number("+4930123456", "DE", "Sales")),
        ("<sip:030123456@pbx.example>", "DE", number("+4930123456", "DE")),
        ("<sip:sales@pbx.example>", "US", anonymous()),
        ("<sip:proxy.openai.example>", "US", anonymous()),
    ],
)
def test_called_number(value: str, region: str, expected: Party) -> None:
    assert parties(("To", value), region=region).called == expected


def test_called_is_not_withheld_by_privacy() -> None:
    result = parties(("To", "<sip:+18005551212@b>"), ("Privacy", "id"))
    assert result.called == number("+18005551212", "US")


def test_a_long_display_name_cannot_cut_the_number_short() -> None:
    # The value is capped at 256 characters inside the URI; a truncated number must not pass.
    value = '"' + "x" * 236 + '" <sip:+14155550123@a.example>'
    assert len(value) > MAX_HEADER_VALUE_CHARS
    assert parties(("From", value)).caller.e164 is None


# --- never raise, bounded cost ------------------------------------------------------------

_FRAGMENTS = st.sampled_from(
    [
        '"',
        "\\",
        "<",
        ">",
        ";",
        ",",
        ":",
        "@",
        "[",
        "]",
        "?",
        "=",
        "%",
        "%2B",
        "%ZZ",
        "%ff",
        " ",
        "\t",
        "\x00",
        "\u202e",
        "\ud800",
        "sip:",
        "sips:",
        "tel:",
        "+",
        "1",
        "4155550123",
        "030123456",
        "-",
        "(",
        ")",
        "anonymous",
        "anonymous.invalid",
        "phone-context=",
        "user=phone",
        "tag=",
        "id",
        "Alice",
        "Ü",
        "📞",
    ]
)
_HEADER_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(_FRAGMENTS, max_size=40).map("".join),
)
_NAMES = st.sampled_from(
    ["From", "To", "P-Asserted-Identity", "Privacy", "f", "t", "from", "X-Other"]
)


@settings(max_examples=500)
@given(
    st.lists(st.tuples(st.one_of(_NAMES, st.text(max_size=20)), _HEADER_TEXT), max_size=8),
    st.sampled_from(["US", "DE", "GB", "FR", "XX", ""]),
)
def test_parse_parties_never_raises(pairs: list[tuple[str, str]], region: str) -> None:
    headers = SipHeaders.from_pairs(pairs)
    result = parse_parties(headers, region)
    for party in (result.caller, result.called):
        assert party.e164 is None or (party.e164[0] == "+" and party.e164[1:].isdigit())
        if party.anonymous:
            assert party.e164 is None
            assert party.country is None
        if party.display_name is not None:
            assert party.display_name == party.display_name.strip()
            assert party.display_name
            categories = {unicodedata.category(ch) for ch in party.display_name}
            assert not categories & {"Cc", "Cf", "Cs", "Zl", "Zp"}
    assert headers.as_template_dict().keys() == {name.strip().lower() for name, _ in pairs}


@given(st.lists(st.tuples(st.text(), st.text()), max_size=20))
def test_from_pairs_never_raises(pairs: list[tuple[str, str]]) -> None:
    headers = SipHeaders.from_pairs(pairs)
    assert len(headers) == len(pairs)
    for name, value in pairs:
        assert value[:MAX_HEADER_VALUE_CHARS] in headers.get_all(name)


@pytest.mark.parametrize(
    "value",
    [
        '"' + "\\" * 65_536,
        '"' + '\\"' * 32_768,
        "<" * 65_536,
        "sip:" + "+1" * 32_768 + "@a",
        '"a" ' * 16_384,
        ";" * 65_536,
        "<sip:" + "%" * 65_530 + "@a>",
        ("\u202e\x00" * 32_768),
        "<tel:1;phone-context=" + "+1" * 32_000 + ">",
    ],
)
def test_huge_hostile_values_are_cheap(value: str) -> None:
    headers = SipHeaders.from_pairs(
        [("From", value), ("To", value), ("P-Asserted-Identity", value), ("Privacy", value)] * 50
    )
    started = time.perf_counter()
    parse_parties(headers, "US")
    assert time.perf_counter() - started < 0.5


def test_hundreds_of_asserted_identities_cost_a_bounded_number_of_parses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 P-Asserted-Identity values of 256 commas each: at most a few addresses are read."""
    parsed: list[str] = []
    real_parse = sip_identity._parse_address

    def counting_parse(value: str) -> object:
        parsed.append(value)
        return real_parse(value)

    monkeypatch.setattr(sip_identity, "_parse_address", counting_parse)
    hostile = [("P-Asserted-Identity", "," * 256)] * 200
    headers = SipHeaders.from_pairs(
        [("From", "<sip:+14155550123@pbx.example.com>"), *hostile, ("To", "<sip:+18005550100@x>")]
    )

    parties = parse_parties(headers, "US")

    assert len(parsed) <= 6  # 4 asserted entries, From, To
    assert parties.called.e164 == "+18005550100"


def test_the_tel_identity_after_a_sip_identity_is_still_read() -> None:
    headers = SipHeaders.from_pairs(
        [
            ("P-Asserted-Identity", '"Front Desk" <sip:desk@pbx.example.com>'),
            ("P-Asserted-Identity", "<tel:+14155550123>"),
            ("To", "<sip:+18005550100@x>"),
        ]
    )
    caller = parse_parties(headers, "US").caller
    assert (caller.e164, caller.display_name) == ("+14155550123", "Front Desk")
