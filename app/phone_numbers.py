"""Phone number normalization to E.164, prefixes, countries and masking for logs.

Pure functions over the `phonenumbers` metadata; no I/O.
"""

from __future__ import annotations

import functools
import re
from functools import cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, ValidationResult

__all__ = [
    "NumberFormatError",
    "country_code_of",
    "country_of",
    "is_known_region",
    "mask_number",
    "normalize_number",
    "normalize_prefix",
    "parse_header_number",
]

# E.164 allows at most 15 digits after the "+".
_MAX_E164_DIGITS = 15
# Longer text is never a phone number; the cap also bounds the cost of every parse.
_MAX_TEXT_CHARS = 64
_QUOTED_CHARS = 40

# How people write numbers: digits, an optional leading "+", visual separators.
_WRITTEN_NUMBER = re.compile(r"\+?[0-9 \t().\-/]*", re.ASCII)
_SEPARATORS = re.compile(r"[ \t().\-/]", re.ASCII)
_E164_FORM = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)

_COUNTRY_CODES: frozenset[str] = frozenset(
    str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE
)
_COUNTRY_CODE_STARTS: frozenset[str] = frozenset(
    cc[:n] for cc in _COUNTRY_CODES for n in range(1, len(cc) + 1)
)


class NumberFormatError(ValueError):
    """A number or prefix that cannot be read; the message fits after `file:line: `."""


def is_known_region(region: str) -> bool:
    """True for an ISO 3166 region code that numbers can be read in ("US", "de")."""
    return _metadata(region) is not None


def normalize_number(text: str, region: str) -> str:
    """Read a written phone number as E.164 "+digits"; national forms are read in `region`.

    Raises NumberFormatError unless the result is a possible number (by length) of its country.
    """
    stripped = text.strip()
    fast = _fast_e164(stripped)
    if fast is not None:
        return fast
    _check_written_form(text, stripped, what="phone number")
    try:
        parsed = phonenumbers.parse(stripped, region.upper())
    except NumberParseException as exc:
        raise NumberFormatError(_parse_problem(text, region, exc)) from None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != ValidationResult.IS_POSSIBLE:
        raise NumberFormatError(_possibility_problem(text, parsed.country_code or 0, reason))
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def normalize_prefix(text: str, region: str) -> str:
    """Read a number prefix as "+digits" (no "*"); see the rule for prefixes without "+" below.

    With "+", the digits are taken as they are. Without, they are read in `region`: a leading
    international dialling prefix ("00", "011") is dropped and the rest is international;
    otherwise a leading national trunk prefix ("0", "1" in NANP) is dropped and the region's
    country code is put in front. So "0151" in DE is "+49151", "00 44 20" is "+4420", and in
    US both "1415" and "415" are "+1415".
    """
    stripped = text.strip()
    _check_written_form(text, stripped, what="number prefix")
    digits = _SEPARATORS.sub("", stripped)
    if digits.startswith("+"):
        digits = digits[1:]
        if not digits:
            raise NumberFormatError(f"{_quote(text)} has no digits after the '+'")
    else:
        digits = _international_digits_of_prefix(text, digits, region)
    if len(digits) > _MAX_E164_DIGITS:
        raise NumberFormatError(
            f"{_quote(text)} is too long for a prefix: "
            f"E.164 numbers have at most {_MAX_E164_DIGITS} digits"
        )
    if not (
        digits[:1] in _COUNTRY_CODES
        or digits[:2] in _COUNTRY_CODES
        or digits[:3] in _COUNTRY_CODES
        or digits in _COUNTRY_CODE_STARTS
    ):
        raise NumberFormatError(f"{_quote(text)} does not begin with a country calling code")
    return "+" + digits


def parse_header_number(user: str, region: str) -> str | None:
    """Read the user part of a SIP or tel URI as E.164 "+digits", leniently; None if it is none.

    "+digits" is kept as sent even when its country would not assign it. Digits without "+"
    are read in `region`: a valid number there, or one dialled with the region's
    international prefix. Digits that are not are never guessed into another country; only
    when they begin with the region's own country code and are valid so are they read as
    international ("14155550123" in US). Anything else is None: an unknown caller.
    """
    user = user.strip()
    if len(user) > _MAX_TEXT_CHARS or _WRITTEN_NUMBER.fullmatch(user) is None:
        return None
    digits = _SEPARATORS.sub("", user)
    if digits.startswith("+"):
        if 1 <= len(digits) - 1 <= _MAX_E164_DIGITS and not digits.startswith("+0"):
            return digits
        return None
    if not digits or len(digits) > _MAX_E164_DIGITS + 4:
        return None
    national = _parse_or_none(digits, region.upper())
    if national is not None and phonenumbers.is_valid_number(national):
        return _e164(national)
    metadata = _metadata(region)
    if metadata is None or not digits.startswith(str(metadata.country_code)):
        return None
    international = _parse_or_none("+" + digits, region.upper())
    if international is not None and phonenumbers.is_valid_number(international):
        return _e164(international)
    return None


@functools.lru_cache(maxsize=65536)
def country_of(e164: str) -> str | None:
    """The ISO 3166 region of an E.164 number ("US", "DE"), or None when it cannot be told.

    A number its country would not assign is placed only when its calling code has one region.
    """
    if _E164_FORM.fullmatch(e164) is None:
        return None
    parsed = _parse_or_none(e164, "ZZ")
    if parsed is None:
        return None
    region = phonenumbers.region_code_for_number(parsed)
    if region is None:
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(parsed.country_code or 0, ())
        region = regions[0] if len(regions) == 1 else None
    # "001" is the non-geographic pseudo-region (+800, +882, ...), not an ISO 3166 code.
    if region is None or not region.isalpha():
        return None
    return str(region)


def mask_number(e164: str | None) -> str:
    """Mask a number for logs: "+1******0123" ("+", country code, "*", last four digits)."""
    if e164 is None:
        return "anonymous"
    # Only digits ever reach a log line, whatever the input held.
    digits = "".join(ch for ch in e164 if "0" <= ch <= "9")
    if not digits:
        return "anonymous"
    country_code = _country_code_of_digits(digits) if e164.startswith("+") else ""
    rest = digits[len(country_code) :]
    if len(rest) <= 4:
        return "+" + country_code + "*" * len(rest)
    return "+" + country_code + "*" * (len(rest) - 4) + rest[-4:]


def _fast_e164(text: str) -> str | None:
    """Accept canonical "+digits" without a full parse, exactly when the parse would keep it."""
    if _E164_FORM.fullmatch(text) is None:
        return None
    country_code = _country_code_of_digits(text[1:])
    if not country_code:
        return None
    national = text[1 + len(country_code) :]
    lengths, trunk = _length_rules(int(country_code))
    # The full parse would strip a trunk prefix written after the country code ("+49030...").
    if len(national) not in lengths or (trunk is not None and trunk.match(national)):
        return None
    return text


@cache
def _length_rules(country_code: int) -> tuple[frozenset[int], re.Pattern[str] | None]:
    """National lengths that make a possible number, and the trunk prefix pattern, per code."""
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None or metadata.general_desc is None:
        return frozenset(), None
    desc = metadata.general_desc
    lengths = frozenset(desc.possible_length or ()) - frozenset(
        desc.possible_length_local_only or ()
    )
    pattern = metadata.national_prefix_for_parsing
    return lengths, (re.compile(pattern) if pattern else None)


def country_code_of(digits: str) -> str:
    """The country calling code that international `digits` (no "+") begin with, or ""."""
    return _country_code_of_digits(digits)


def _country_code_of_digits(digits: str) -> str:
    for size in (1, 2, 3):
        if digits[:size] in _COUNTRY_CODES:
            return digits[:size]
    return ""


def _international_digits_of_prefix(text: str, digits: str, region: str) -> str:
    metadata = _metadata(region)
    if metadata is None:
        raise NumberFormatError(
            f"{_quote(text)} cannot be read in region {region!r}: write it with '+' and the "
            "country code"
        )
    if metadata.international_prefix:
        dialled = re.match(metadata.international_prefix, digits)
        if dialled is not None:
            rest = digits[dialled.end() :]
            if not rest:
                raise NumberFormatError(
                    f"{_quote(text)} has no country code after the international prefix"
                )
            return rest
    trunk = metadata.national_prefix
    if trunk and digits.startswith(trunk):
        digits = digits[len(trunk) :]
    return str(metadata.country_code) + digits


def _metadata(region: str) -> PhoneMetadata | None:
    return PhoneMetadata.metadata_for_region(region.upper(), None)


def _check_written_form(text: str, stripped: str, *, what: str) -> None:
    if not stripped:
        raise NumberFormatError(f"empty {what}")
    if len(stripped) > _MAX_TEXT_CHARS:
        raise NumberFormatError(f"{_quote(text)} is too long to be a {what}")
    if _WRITTEN_NUMBER.fullmatch(stripped) is None:
        if any(ch.isalpha() for ch in stripped):
            problem = "letters are not allowed, write the digits"
        else:
            problem = "only digits, a leading '+' and the separators space ( ) - . / are allowed"
        raise NumberFormatError(f"{_quote(text)} is not a {what}: {problem}")
    if not any("0" <= ch <= "9" for ch in stripped):
        raise NumberFormatError(f"{_quote(text)} is not a {what}: it has no digits")


def _parse_problem(text: str, region: str, exc: NumberParseException) -> str:
    if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
        if text.strip().startswith("+"):
            return f"{_quote(text)} does not begin with a known country calling code"
        return (
            f"{_quote(text)} cannot be read in region {region!r}: write it with '+' and the "
            "country code"
        )
    if exc.error_type in (
        NumberParseException.TOO_SHORT_NSN,
        NumberParseException.TOO_SHORT_AFTER_IDD,
    ):
        return f"{_quote(text)} is too short to be a phone number"
    if exc.error_type == NumberParseException.TOO_LONG:
        return f"{_quote(text)} is too long to be a phone number"
    return f"{_quote(text)} is not a phone number"


def _possibility_problem(text: str, country_code: int, reason: int) -> str:
    where = f"numbers of country code +{country_code}"
    if reason == ValidationResult.INVALID_COUNTRY_CODE:
        return f"{_quote(text)} does not begin with a known country calling code"
    if reason == ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        return f"{_quote(text)} is a local number: write it with its area code"
    if reason == ValidationResult.TOO_SHORT:
        return f"{_quote(text)} is too short for {where}"
    if reason == ValidationResult.TOO_LONG:
        return f"{_quote(text)} is too long for {where}"
    return f"{_quote(text)} has a length that {where} never have"


def _parse_or_none(text: str, region: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException:
        return None


def _e164(parsed: phonenumbers.PhoneNumber) -> str:
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _quote(text: str) -> str:
    shown = text.strip()
    if len(shown) > _QUOTED_CHARS:
        shown = shown[:_QUOTED_CHARS] + "..."
    return repr(shown)
