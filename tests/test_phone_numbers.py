"""Number normalization, prefixes, countries and masking."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from phonenumbers import ValidationResult

from app.phone_numbers import (
    NumberFormatError,
    country_of,
    is_known_region,
    mask_number,
    normalize_number,
    normalize_prefix,
    parse_header_number,
)


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("4155550123", "US", "+14155550123"),
        ("+1 (415) 555-0123", "US", "+14155550123"),
        ("14155550123", "US", "+14155550123"),
        ("+14155550123", "US", "+14155550123"),
        ("(415) 555-0123", "US", "+14155550123"),
        ("415.555.0123", "US", "+14155550123"),
        ("1-415-555-0123", "US", "+14155550123"),
        ("  +14155550123\t", "US", "+14155550123"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        ("+44-20-7946-0958", "US", "+442079460958"),
        ("+44 (0)20 7946 0958", "GB", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("00 49 30 123456", "DE", "+4930123456"),
        ("030 123456", "DE", "+4930123456"),
        ("030/123456", "DE", "+4930123456"),
        ("0151 12345678", "DE", "+4915112345678"),
        ("+49 (0)30 123456", "US", "+4930123456"),
        ("01 23 45 67 89", "FR", "+33123456789"),
        ("00 33 1 23 45 67 89", "FR", "+33123456789"),
        ("+33 6 12 34 56 78", "DE", "+33612345678"),
        ("4155550123", "us", "+14155550123"),
        # Canonical form with a trunk prefix after the country code is cleaned up.
        ("+49030123456", "US", "+4930123456"),
        ("+4402079460958", "US", "+442079460958"),
        # Italian numbers keep their leading zero.
        ("+39 06 1234 5678", "US", "+390612345678"),
        ("+80012345678", "US", "+80012345678"),
    ],
)
def test_normalize_number_reads_common_written_forms(text: str, region: str, expected: str) -> None:
    assert normalize_number(text, region) == expected


@pytest.mark.parametrize(
    ("text", "region", "fragment"),
    [
        ("", "US", "empty phone number"),
        ("   ", "US", "empty phone number"),
        ("abc", "US", "letters are not allowed"),
        ("1-800-FLOWERS", "US", "letters are not allowed"),
        ("+1 415 555 0123 ext 5", "US", "letters are not allowed"),
        ("+1 415 555 0123#", "US", "only digits"),
        ("+1415*", "US", "only digits"),
        ("1+4155550123", "US", "only digits"),
        ("++14155550123", "US", "only digits"),
        ("+", "US", "no digits"),
        ("( - )", "US", "no digits"),
        ("+1 415", "US", "too short"),
        ("+1 415 555 0123 4567", "US", "too long"),
        ("5550123", "US", "local number"),
        ("+999 1234567", "US", "country calling code"),
        ("4155550123", "XX", "region 'XX'"),
        ("1" * 65, "US", "too long to be a phone number"),
        ("\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff12\uff13", "US", "only digits"),
    ],
)
def test_normalize_number_refuses_what_is_not_a_number(
    text: str, region: str, fragment: str
) -> None:
    with pytest.raises(NumberFormatError) as caught:
        normalize_number(text, region)
    assert fragment in str(caught.value)


def test_number_errors_quote_the_text_and_cut_long_text() -> None:
    with pytest.raises(NumberFormatError, match=r"^'\+1 415' is too short for numbers of"):
        normalize_number("+1 415", "US")
    with pytest.raises(NumberFormatError) as caught:
        normalize_number("x" * 60, "US")
    assert "x" * 41 not in str(caught.value)
    assert "..." in str(caught.value)


def _reference_e164(text: str) -> str | None:
    """What the full phonenumbers parse makes of the text, for comparison with the fast path."""
    try:
        parsed = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(parsed) != ValidationResult.IS_POSSIBLE:
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


@given(st.from_regex(r"\A\+[0-9]{1,17}\Z"))
@example("+49030123456")
@example("+4402079460958")
@example("+390612345678")
@example("+79161234567")
@example("+89161234567")
@example("+61183112345678")
def test_canonical_numbers_normalize_like_a_full_parse(text: str) -> None:
    expected = _reference_e164(text)
    if expected is None:
        with pytest.raises(NumberFormatError):
            normalize_number(text, "US")
    else:
        assert normalize_number(text, "US") == expected


@pytest.mark.parametrize("region", sorted(phonenumbers.SUPPORTED_REGIONS))
def test_every_region_example_number_round_trips(region: str) -> None:
    example_number = phonenumbers.example_number(region)
    assert example_number is not None
    e164 = phonenumbers.format_number(example_number, phonenumbers.PhoneNumberFormat.E164)
    assert normalize_number(e164, "US") == e164
    national = phonenumbers.format_number(example_number, phonenumbers.PhoneNumberFormat.NATIONAL)
    assert normalize_number(national, region) == e164


@given(st.text(max_size=80), st.sampled_from(["US", "DE", "GB", "FR", "XX", ""]))
def test_normalize_number_raises_only_number_format_error(text: str, region: str) -> None:
    try:
        result = normalize_number(text, region)
    except NumberFormatError:
        return
    assert result.startswith("+")
    assert result[1:].isascii()
    assert result[1:].isdigit()


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("+1415", "US", "+1415"),
        ("1415", "US", "+1415"),
        ("415", "US", "+1415"),
        ("1 (415) 555", "US", "+1415555"),
        ("1", "US", "+1"),
        ("011 44", "US", "+44"),
        ("0151", "DE", "+49151"),
        ("151", "DE", "+49151"),
        ("0", "DE", "+49"),
        ("00 44 20", "DE", "+4420"),
        ("+44 20", "DE", "+4420"),
        ("020 7946", "GB", "+44207946"),
        ("06", "FR", "+336"),
        ("06", "IT", "+3906"),
        ("8 916", "RU", "+7916"),
        ("810 49", "RU", "+49"),
        ("0011 44", "AU", "+44"),
        ("+9", "US", "+9"),
        ("+99", "US", "+99"),
        ("0151", "de", "+49151"),
    ],
)
def test_normalize_prefix(text: str, region: str, expected: str) -> None:
    assert normalize_prefix(text, region) == expected


@pytest.mark.parametrize(
    ("text", "region", "fragment"),
    [
        ("", "US", "empty number prefix"),
        ("+", "US", "no digits"),
        ("abc", "US", "letters are not allowed"),
        ("+1415*", "US", "only digits"),
        ("011", "US", "no country code after the international prefix"),
        ("00", "DE", "no country code after the international prefix"),
        ("+999", "US", "does not begin with a country calling code"),
        ("+0", "US", "does not begin with a country calling code"),
        ("+1234567890123456", "US", "at most 15 digits"),
        ("0151", "XX", "region 'XX'"),
    ],
)
def test_normalize_prefix_refuses(text: str, region: str, fragment: str) -> None:
    with pytest.raises(NumberFormatError) as caught:
        normalize_prefix(text, region)
    assert fragment in str(caught.value)


@given(st.text(max_size=40), st.sampled_from(["US", "DE", "AU", "XX"]))
def test_normalize_prefix_raises_only_number_format_error(text: str, region: str) -> None:
    try:
        result = normalize_prefix(text, region)
    except NumberFormatError:
        return
    assert result.startswith("+")
    assert result[1:].isascii()
    assert result[1:].isdigit()


@pytest.mark.parametrize(
    ("user", "region", "expected"),
    [
        ("+14155550123", "US", "+14155550123"),
        # Not a number NANP assigns, but it is what the network sent.
        ("+142555512112", "US", "+142555512112"),
        ("+1-415-555-0123", "US", "+14155550123"),
        ("+1.415.555.0123", "US", "+14155550123"),
        ("(415) 555-0123", "US", "+14155550123"),
        ("4155550123", "US", "+14155550123"),
        ("14155550123", "US", "+14155550123"),
        ("011442079460958", "US", "+442079460958"),
        ("030123456", "DE", "+4930123456"),
        ("00442079460958", "DE", "+442079460958"),
        ("02079460958", "GB", "+442079460958"),
        ("0123456789", "FR", "+33123456789"),
        # E.164 without "+" in the region's own country code is still read.
        ("4930123456", "DE", "+4930123456"),
        ("442079460958", "GB", "+442079460958"),
        (" +14155550123 ", "US", "+14155550123"),
        ("+4930123456", "XX", "+4930123456"),
    ],
)
def test_parse_header_number(user: str, region: str, expected: str) -> None:
    assert parse_header_number(user, region) == expected


@pytest.mark.parametrize(
    "user",
    [
        "",
        "+",
        "-",
        "()",
        "anonymous",
        "Anonymous",
        "restricted",
        "unavailable",
        "415555O123",
        "alice",
        "*67",
        "+0123456789",
        "+1234567890123456",
        "1001",
        "4155550123" * 7,
        "+1\n415",
    ],
)
def test_parse_header_number_gives_none(user: str) -> None:
    assert parse_header_number(user, "US") is None


@pytest.mark.parametrize(
    ("user", "region"),
    [
        # Valid in Germany and Britain, but no valid number in the US: not guessed abroad.
        ("4930123456", "US"),
        ("442079460958", "US"),
        ("14155550123", "DE"),
        # Begins with the region's own country code but is no valid number there either.
        ("1555", "US"),
        ("491", "DE"),
        # Possible by length in the US, but no valid number (area code 099).
        ("0995550123", "US"),
    ],
)
def test_parse_header_number_does_not_guess_another_country(user: str, region: str) -> None:
    assert parse_header_number(user, region) is None


def test_parse_header_number_needs_a_known_region_for_national_forms() -> None:
    assert parse_header_number("4155550123", "XX") is None


@given(st.text(max_size=100), st.sampled_from(["US", "DE", "GB", "XX", ""]))
def test_parse_header_number_never_raises(user: str, region: str) -> None:
    result = parse_header_number(user, region)
    if result is not None:
        assert result.startswith("+")
        assert result[1:].isascii()
        assert result[1:].isdigit()


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        ("+14155550123", "US"),
        ("+16135550123", "CA"),
        ("+442079460958", "GB"),
        ("+4930123456", "DE"),
        ("+33123456789", "FR"),
        ("+77012345678", "KZ"),
        # Invalid, but +49 belongs to one region only.
        ("+4930", "DE"),
        # Invalid, and +1 is shared by many regions.
        ("+142555512112", None),
        ("+80012345678", None),
        ("+99912345678", None),
        ("14155550123", None),
        ("", None),
        ("anonymous", None),
    ],
)
def test_country_of(e164: str, expected: str | None) -> None:
    assert country_of(e164) == expected


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        ("+14155550123", "+1******0123"),
        ("+442079460958", "+44******0958"),
        ("+4930123456", "+49****3456"),
        ("+4915112345678", "+49*******5678"),
        ("+35312345678", "+353****5678"),
        ("+80012345678", "+800****5678"),
        ("+142555512112", "+1*******2112"),
        (None, "anonymous"),
        ("", "anonymous"),
        # Too short to keep four digits after the country code: all of them are masked.
        ("+1415", "+1***"),
        ("+14155", "+1****"),
        ("+141555", "+1*1555"),
        ("+49", "+49"),
        # No known country code: "+" and the last four.
        ("+99912345678", "+*******5678"),
        ("+0123", "+****"),
        # Not E.164 at all: nothing but digits and stars reach the log.
        ("4155550123", "+******0123"),
        ("+1 415\n555-0123", "+1******0123"),
    ],
)
def test_mask_number(e164: str | None, expected: str) -> None:
    assert mask_number(e164) == expected


@given(st.text(max_size=60))
def test_mask_number_shows_only_plus_digits_and_stars(text: str) -> None:
    masked = mask_number(text)
    assert masked == "anonymous" or set(masked) <= set("+*0123456789")
    digits = [ch for ch in text if "0" <= ch <= "9"]
    assert sum(ch.isdigit() for ch in masked) <= min(len(digits), 3 + 4)


@pytest.mark.parametrize(
    ("region", "expected"), [("US", True), ("de", True), ("XX", False), ("", False)]
)
def test_is_known_region(region: str, expected: bool) -> None:
    assert is_known_region(region) is expected
