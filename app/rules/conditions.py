"""Compiled `when` conditions: each answers `matches(ctx)` fast and `explain(ctx)` for traces.

Number conditions compare E.164 strings against sets, prefix tables and precompiled
RE2 regexes, so their cost does not depend on the size of the lists they reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from app.call_api import CallApi
from app.rules.call_context import CallContext
from app.rules.linear_regex import Regex
from app.rules.number_set import NumberSet
from app.rules.schedule import CompiledSchedule
from app.rules.templates import clean_untrusted
from app.sip_identity import Party

PartyRole = Literal["caller", "called"]
MediaSecurity = Literal["srtp", "rtp"]


class Condition(Protocol):
    """A compiled condition of a rule's `when`."""

    def matches(self, ctx: CallContext) -> bool: ...

    def explain(self, ctx: CallContext) -> tuple[bool, str]: ...


def _party(ctx: CallContext, role: PartyRole) -> Party:
    return ctx.parties.caller if role == "caller" else ctx.parties.called


def _shown(party: Party) -> str:
    # Traces are read by the operator who typed the numbers (simulate): shown in full.
    return "anonymous" if party.e164 is None else party.e164


class NumberTest(Protocol):
    """One term of a number condition, tested against a party."""

    @property
    def description(self) -> str: ...

    def test(self, party: Party) -> bool: ...


@dataclass(frozen=True, slots=True)
class ExactNumber:
    number: str
    description: str

    def test(self, party: Party) -> bool:
        return party.e164 == self.number


@dataclass(frozen=True, slots=True)
class NumberPrefix:
    prefix: str
    description: str

    def test(self, party: Party) -> bool:
        return party.e164 is not None and party.e164.startswith(self.prefix)


@dataclass(frozen=True, slots=True)
class NumberRegex:
    """`pattern` and `regex` terms, both compiled to a full-match RE2 regex at load."""

    regex: Regex
    description: str

    def test(self, party: Party) -> bool:
        return party.e164 is not None and self.regex.fullmatch(party.e164) is not None


@dataclass(frozen=True, slots=True)
class InNumberList:
    numbers: NumberSet
    description: str

    def test(self, party: Party) -> bool:
        return party.e164 is not None and self.numbers.match(party.e164) is not None


@dataclass(frozen=True, slots=True)
class InCountries:
    countries: frozenset[str]
    description: str

    def test(self, party: Party) -> bool:
        return party.country is not None and party.country in self.countries


@dataclass(frozen=True, slots=True)
class IsAnonymous:
    anonymous: bool
    description: str

    def test(self, party: Party) -> bool:
        return party.anonymous is self.anonymous


@dataclass(frozen=True, slots=True)
class NumberCondition:
    """`caller:` or `called:`: holds when any of its terms does."""

    role: PartyRole
    terms: tuple[NumberTest, ...]

    def matches(self, ctx: CallContext) -> bool:
        party = _party(ctx, self.role)
        return any(term.test(party) for term in self.terms)

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        party = _party(ctx, self.role)
        for term in self.terms:
            if term.test(party):
                return True, f"{self.role} {_shown(party)} is {term.description}"
        wanted = " or ".join(term.description for term in self.terms)
        return False, f"{self.role} {_shown(party)} is not {wanted}"


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    """One header test; names are compared lower-case, any repeated value may match."""

    name: str
    kind: Literal["equals", "regex", "present"]
    value: str | Regex | bool
    description: str

    def matches(self, ctx: CallContext) -> bool:
        values = ctx.headers.get_all(self.name)
        if self.kind == "present":
            return bool(values) is self.value
        if self.kind == "equals":
            return any(v == self.value for v in values)
        regex = self.value
        assert not isinstance(regex, str | bool)
        return any(regex.fullmatch(v) is not None for v in values)

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        ok = self.matches(ctx)
        return ok, f"header {self.description}" + ("" if ok else " does not hold")


@dataclass(frozen=True, slots=True)
class ScheduleCondition:
    schedule: CompiledSchedule

    def matches(self, ctx: CallContext) -> bool:
        return self.schedule.is_open(ctx.at)

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        verdict = self.schedule.evaluate(ctx.at)
        return verdict.open, f"schedule {self.schedule.name}: {verdict.reason}"


@dataclass(frozen=True, slots=True)
class ApiCondition:
    """`api: realtime|live`: which of OpenAI's voice APIs announced the call (section 11)."""

    api: CallApi

    def matches(self, ctx: CallContext) -> bool:
        return ctx.api == self.api

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        if self.matches(ctx):
            return True, f"api is {self.api}"
        return False, f"api is {ctx.api}, not {self.api}"


@dataclass(frozen=True, slots=True)
class MediaSecurityCondition:
    """`media_security: srtp|rtp`: the delivery's `sip_media_security`.

    A call whose media protection is unknown (not given, or a value other than these)
    matches neither.
    """

    media_security: MediaSecurity

    def matches(self, ctx: CallContext) -> bool:
        return ctx.media_security == self.media_security

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        if self.matches(ctx):
            return True, f"media_security is {self.media_security}"
        given = ctx.media_security
        if given is None:
            shown = "unknown"
        elif given in ("srtp", "rtp"):
            shown = given
        else:
            shown = f"{clean_untrusted(given[:32])!r} (unknown)"
        return False, f"media_security is {shown}, not {self.media_security}"


@dataclass(frozen=True, slots=True)
class AllOf:
    """The keys of one `when` mapping, and `all:` lists."""

    parts: tuple[Condition, ...]

    def matches(self, ctx: CallContext) -> bool:
        return all(part.matches(ctx) for part in self.parts)

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        if not self.parts:
            return True, "no conditions"
        reasons = []
        for part in self.parts:
            ok, reason = part.explain(ctx)
            if not ok:
                return False, reason
            reasons.append(reason)
        return True, "; ".join(reasons)


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Condition, ...]

    def matches(self, ctx: CallContext) -> bool:
        return any(part.matches(ctx) for part in self.parts)

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        reasons = []
        for part in self.parts:
            ok, reason = part.explain(ctx)
            if ok:
                return True, reason
            reasons.append(reason)
        return False, "none of: " + "; ".join(reasons)


@dataclass(frozen=True, slots=True)
class Not:
    part: Condition

    def matches(self, ctx: CallContext) -> bool:
        return not self.part.matches(ctx)

    def explain(self, ctx: CallContext) -> tuple[bool, str]:
        ok, reason = self.part.explain(ctx)
        return not ok, f"not ({reason})"


ALWAYS = AllOf(())


def all_of(parts: Sequence[Condition]) -> Condition:
    """One condition from ANDed parts, without a wrapper for a single part."""
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))
