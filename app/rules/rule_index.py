"""An index that narrows the rules worth trying for one call, so 1,000 rules cost like 10.

A rule whose `when` requires the caller (or, failing that, the called number) to be one
of some exact numbers or prefixes can only match calls from those numbers: it is filed
under them. Every other rule is "generic" and always tried. A decision tries, in file
order, the generic rules plus the rules filed under the call's numbers, so it picks the
same rule as trying them all, at a cost that depends on how many rules could match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import merge

from app.rules.call_context import CallContext
from app.rules.conditions import AllOf, Condition, ExactNumber, NumberCondition, NumberPrefix


@dataclass(frozen=True, slots=True)
class _NumberIndex:
    exact: dict[str, tuple[int, ...]]
    prefixes: dict[str, tuple[int, ...]]
    prefix_lengths: tuple[int, ...]

    def candidates(self, number: str | None) -> list[tuple[int, ...]]:
        if number is None:
            return []
        found = []
        hit = self.exact.get(number)
        if hit:
            found.append(hit)
        for length in self.prefix_lengths:
            if length > len(number):
                break
            hit = self.prefixes.get(number[:length])
            if hit:
                found.append(hit)
        return found


def _build_number_index(
    exact: dict[str, list[int]], prefixes: dict[str, list[int]]
) -> _NumberIndex:
    return _NumberIndex(
        exact={k: tuple(sorted(set(v))) for k, v in exact.items()},
        prefixes={k: tuple(sorted(set(v))) for k, v in prefixes.items()},
        prefix_lengths=tuple(sorted({len(p) for p in prefixes})),
    )


@dataclass(frozen=True, slots=True)
class RuleIndex:
    """Which rules (by position) can match a call; see the module docstring."""

    generic: tuple[int, ...]
    caller: _NumberIndex
    called: _NumberIndex

    def candidates(self, ctx: CallContext) -> Sequence[int]:
        """Positions of the rules to try, in file order, without duplicates."""
        parts = self.caller.candidates(ctx.parties.caller.e164)
        parts += self.called.candidates(ctx.parties.called.e164)
        if not parts:
            return self.generic
        ordered: list[int] = []
        last = -1
        for position in merge(self.generic, *parts):
            if position != last:
                ordered.append(position)
                last = position
        return ordered


def _number_terms(condition: Condition, role: str) -> list[ExactNumber | NumberPrefix] | None:
    """The exact/prefix terms a top-level `caller`/`called` condition requires, if indexable."""
    parts = condition.parts if isinstance(condition, AllOf) else (condition,)
    for part in parts:
        if isinstance(part, NumberCondition) and part.role == role and part.terms:
            terms = [t for t in part.terms if isinstance(t, ExactNumber | NumberPrefix)]
            if len(terms) == len(part.terms):
                return terms
    return None


def build_rule_index(conditions: Sequence[Condition]) -> RuleIndex:
    """Index rules by the caller, else called, numbers their `when` requires."""
    generic: list[int] = []
    tables: dict[str, tuple[dict[str, list[int]], dict[str, list[int]]]] = {
        "caller": (defaultdict(list), defaultdict(list)),
        "called": (defaultdict(list), defaultdict(list)),
    }
    for position, condition in enumerate(conditions):
        for role in ("caller", "called"):
            terms = _number_terms(condition, role)
            if terms is None:
                continue
            exact, prefixes = tables[role]
            for term in terms:
                if isinstance(term, ExactNumber):
                    exact[term.number].append(position)
                else:
                    prefixes[term.prefix].append(position)
            break
        else:
            generic.append(position)
    return RuleIndex(
        generic=tuple(generic),
        caller=_build_number_index(*tables["caller"]),
        called=_build_number_index(*tables["called"]),
    )
