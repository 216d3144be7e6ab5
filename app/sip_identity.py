"""Caller and called identity from the SIP headers of an incoming call.

Header values are untrusted: every parser here is linear in the (capped) value and never raises.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import islice
from types import MappingProxyType
from typing import Final
from urllib.parse import unquote

from app.phone_numbers import country_code_of, country_of, parse_header_number

__all__ = [
    "MAX_HEADER_VALUE_CHARS",
    "CallParties",
    "Party",
    "SipHeaders",
    "parse_parties",
]

MAX_HEADER_VALUE_CHARS: Final = 256

# RFC 3261 compact forms: "f" is From, "t" is To.
_CALLER_HEADERS: Final = ("from", "f")
_CALLED_HEADERS: Final = ("to", "t")
_ASSERTED_IDENTITY: Final = "p-asserted-identity"
# How many comma-separated P-Asserted-Identity entries are read, over all its values: a
# hostile INVITE may carry hundreds, and the work per delivery must stay small.
_MAX_ASSERTED_PARTS: Final = 4
_PRIVACY: Final = "privacy"
_ANONYMOUS_HOST: Final = "anonymous.invalid"
# Numbers that carriers and PBXs send in place of a withheld caller ID. Words as user parts
# ("anonymous", "Restricted", "Unavailable", "Private", RFC 3323's anonymous@anonymous.invalid)
# are not numbers and are anonymous already. Twilio spells the withheld-caller words on a
# phone keypad and sends them as numbers: ANONYMOUS, RESTRICTED, UNAVAILABLE, UNKNOWN, BLOCKED.
_KEYPAD_WORDS: Final = frozenset({"266696687", "7378742833", "86282452253", "8656696", "2562533"})
_NUMBER_CHARS: Final = frozenset("0123456789+-.() ")
_DIAL_SCHEMES: Final = frozenset({"sip", "sips", "tel"})
# Characters a display name never needs and that could hide or reorder text in a template.
_INVISIBLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class Party:
    """One end of a call; `e164` is None when the number is withheld or unreadable."""

    e164: str | None
    display_name: str | None
    country: str | None
    anonymous: bool


@dataclass(frozen=True, slots=True)
class CallParties:
    """Who is calling and which number was called."""

    caller: Party
    called: Party


class SipHeaders:
    """The INVITE's headers in order, repeats kept; names case-insensitive, values capped."""

    __slots__ = ("_by_name", "_pairs")

    _pairs: tuple[tuple[str, str], ...]
    _by_name: Mapping[str, tuple[str, ...]]

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        kept = tuple((name.strip(), value[:MAX_HEADER_VALUE_CHARS]) for name, value in pairs)
        by_name: dict[str, list[str]] = {}
        for name, value in kept:
            by_name.setdefault(name.lower(), []).append(value)
        object.__setattr__(self, "_pairs", kept)
        object.__setattr__(
            self, "_by_name", MappingProxyType({k: tuple(v) for k, v in by_name.items()})
        )

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> SipHeaders:
        """Build from (name, value) pairs; names are trimmed, values capped at 256 chars."""
        return cls(pairs)

    def get_all(self, name: str) -> tuple[str, ...]:
        """Every value of header `name` (any case), in order."""
        return self._by_name.get(name.strip().lower(), ())

    def first(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        values = self._by_name.get(name.strip().lower())
        return values[0] if values else None

    def as_template_dict(self) -> dict[str, str]:
        """Lower-case header names mapped to their first value, for templates."""
        return {name: values[0] for name, values in self._by_name.items()}

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipHeaders):
            return NotImplemented
        return self._pairs == other._pairs

    def __hash__(self) -> int:
        return hash(self._pairs)

    def __repr__(self) -> str:
        return f"SipHeaders({len(self._pairs)} headers)"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SipHeaders is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SipHeaders is immutable")


@dataclass(frozen=True, slots=True)
class _Address:
    display_name: str | None
    scheme: str
    user: str
    phone_context: str | None
    host: str


_ABSENT: Final = Party(e164=None, display_name=None, country=None, anonymous=True)


def parse_parties(headers: SipHeaders, region: str) -> CallParties:
    """Caller from P-Asserted-Identity (else From), called from To; national forms in `region`."""
    called = _party(_first_address(headers, _CALLED_HEADERS), region)
    if _privacy_withholds_identity(headers):
        return CallParties(caller=_ABSENT, called=called)
    from_address = _first_address(headers, _CALLER_HEADERS)
    asserted = _asserted_addresses(headers)
    if not asserted:
        return CallParties(caller=_party(from_address, region), called=called)
    # A sip and a tel URI may both be asserted; the number is in one, the name maybe in another.
    chosen = next((address for address in asserted if _is_numeric_user(address.user)), asserted[0])
    caller = _party(chosen, region)
    if caller.display_name is None:
        names = [address.display_name for address in (*asserted, from_address) if address]
        caller = replace(caller, display_name=next((name for name in names if name), None))
    return CallParties(caller=caller, called=called)


def _first_address(headers: SipHeaders, names: tuple[str, ...]) -> _Address | None:
    for name in names:
        value = headers.first(name)
        if value is not None:
            return _parse_address(value)
    return None


def _asserted_addresses(headers: SipHeaders) -> list[_Address]:
    """The first few asserted identities: RFC 3325 allows two (a sip and a tel URI)."""
    parts = (
        part
        for value in headers.get_all(_ASSERTED_IDENTITY)
        for part in _split_top_level_commas(value)
    )
    addresses = (_parse_address(part) for part in islice(parts, _MAX_ASSERTED_PARTS))
    return [address for address in addresses if address is not None]


def _privacy_withholds_identity(headers: SipHeaders) -> bool:
    for value in headers.get_all(_PRIVACY):
        tokens = value.replace(",", ";").split(";")
        if any(token.strip().lower() == "id" for token in tokens):
            return True
    return False


def _party(address: _Address | None, region: str) -> Party:
    if address is None:
        return _ABSENT
    anonymous = (
        address.scheme not in _DIAL_SCHEMES
        or address.host == _ANONYMOUS_HOST
        or not _is_numeric_user(address.user)
        or _is_withheld_sentinel(address.user)
    )
    if anonymous:
        return Party(None, address.display_name, None, anonymous=True)
    e164 = _number_of(address, region)
    country = country_of(e164) if e164 is not None else None
    return Party(e164, address.display_name, country, anonymous=False)


def _number_of(address: _Address, region: str) -> str | None:
    user = address.user.strip()
    context = (address.phone_context or "").strip()
    # RFC 3966: a local number whose phone-context is a global prefix ("+1-415") extends it.
    if not user.startswith("+") and context.startswith("+"):
        combined = context + user
        if _is_numeric_user(combined):
            return parse_header_number(combined, region)
    return parse_header_number(user, region)


def _is_withheld_sentinel(user: str) -> bool:
    """A number that stands for a withheld caller ID rather than a caller.

    The keypad spellings above, with or without "+"; and all zeros, alone ("0000000000", what
    FreeSWITCH and Kazoo present for a private caller) or after a country code
    ("+10000000000"), which no numbering plan assigns to a subscriber.
    """
    digits = "".join(ch for ch in user if "0" <= ch <= "9")
    if digits in _KEYPAD_WORDS or not digits.strip("0"):
        return True
    country_code = country_code_of(digits) if user.strip().startswith("+") else ""
    return bool(country_code) and not digits[len(country_code) :].strip("0")


def _is_numeric_user(user: str) -> bool:
    return any("0" <= ch <= "9" for ch in user) and all(ch in _NUMBER_CHARS for ch in user)


def _parse_address(value: str) -> _Address | None:
    """Parse a name-addr (`"Name" <uri>;params`) or addr-spec (`uri;params`) header value."""
    text = value.strip()
    display: str | None = None
    if text.startswith('"'):
        quoted = _read_quoted(text)
        if quoted is None:
            return None
        display, end = quoted
        text = text[end:]
    open_at = text.find("<")
    if open_at >= 0:
        close_at = text.find(">", open_at + 1)
        if close_at < 0:
            return None
        if display is None:
            display = text[:open_at]
        uri = text[open_at + 1 : close_at]
    else:
        # Without angle brackets RFC 3261 makes ";..." header parameters, but a bare tel URI's
        # phone-context is still needed; the URI parser ignores the parameters it does not use.
        uri = text
    return _parse_uri(uri, _clean_display_name(display))


def _read_quoted(text: str) -> tuple[str, int] | None:
    """The unescaped quoted-string at the start of `text` and the index after it."""
    chars: list[str] = []
    index = 1
    while index < len(text):
        ch = text[index]
        if ch == "\\" and index + 1 < len(text):
            chars.append(text[index + 1])
            index += 2
            continue
        if ch == '"':
            return "".join(chars), index + 1
        chars.append(ch)
        index += 1
    return None


def _parse_uri(uri: str, display_name: str | None) -> _Address:
    uri = uri.strip()
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.strip().lower()
    if colon and scheme not in _DIAL_SCHEMES and not _is_numeric_user(scheme):
        return _Address(display_name, scheme, "", None, "")
    bare = scheme not in _DIAL_SCHEMES
    if bare:
        # No scheme: a bare number, or "user@host" read like a SIP URI.
        scheme, rest = "sip", uri
    rest = rest.split("?", 1)[0]
    if scheme == "tel":
        subscriber, host = rest, ""
    else:
        userinfo, at, hostport = rest.partition("@")
        if not at:
            userinfo, hostport = (userinfo, "") if bare else ("", userinfo)
        # A password after the user ("user:secret@host") is never part of the number.
        subscriber = userinfo.split(":", 1)[0]
        host = _host_of(hostport)
    number, _, params = subscriber.partition(";")
    return _Address(
        display_name=display_name,
        scheme=scheme,
        user=unquote(number, errors="replace").strip(),
        phone_context=_phone_context(params),
        host=host,
    )


def _host_of(hostport: str) -> str:
    host = hostport.split(";", 1)[0].strip().lower()
    if host.startswith("["):
        # IPv6 reference: the port, if any, follows the "]".
        return host[: host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


def _phone_context(params: str) -> str | None:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "phone-context":
            return unquote(value, errors="replace")
    return None


def _split_top_level_commas(value: str) -> Iterator[str]:
    """Split a header holding several addresses, ignoring commas in quotes and brackets."""
    start = 0
    in_quotes = in_brackets = escaped = False
    for index, ch in enumerate(value):
        if escaped:
            escaped = False
        elif in_quotes:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_brackets = True
        elif ch == ">":
            in_brackets = False
        elif ch == "," and not in_brackets:
            yield value[start:index]
            start = index + 1
    yield value[start:]


def _clean_display_name(name: str | None) -> str | None:
    if name is None:
        return None
    visible = "".join(
        " " if ch.isspace() else ch
        for ch in name
        if ch.isspace() or unicodedata.category(ch) not in _INVISIBLE_CATEGORIES
    )
    cleaned = " ".join(visible.split())
    return cleaned or None
