"""An index that narrows the rules worth trying for one call, so 1,000 rules cost like 10.

A rule whose `when` requires the caller or the called number to be one of some exact
numbers or prefixes, or a header to have an exact value, can only match such calls: it is
filed under those numbers or that value (exact numbers first, then header values, then
prefixes: the most selective key wins). Every other rule is "generic" and always tried.
A decision tries, in file order, the generic rules plus the rules filed under the call's
numbers and header values, so it picks the same rule as trying them all, at a cost that
depends on how many rules could match.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from heapq import merge

from app.rules.call_context import CallContext
from app.rules.conditions import (
    AllOf,
    Condition,
    ExactNumber,
    HeaderCondition,
    NumberCondition,
    NumberPrefix,
)


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
    headers: dict[str, dict[str, tuple[int, ...]]]

    def candidates(self, ctx: CallContext) -> Sequence[int]:
        """Positions of the rules to try, in file order, without duplicates."""
        parts = self.caller.candidates(ctx.parties.caller.e164)
        parts += self.called.candidates(ctx.parties.called.e164)
        for name, by_value in self.headers.items():
            for value in ctx.headers.get_all(name):
                hit = by_value.get(value)
                if hit:
                    parts.append(hit)
        if not parts:
            return self.generic
        ordered: list[int] = []
        last = -1
        for position in merge(self.generic, *parts):
            if position != last:
                ordered.append(position)
                last = position
        return ordered


_Key = tuple[str, str, str]  # (table, name, value): ("caller", "exact", "+1415...")


def _index_keys(condition: Condition) -> list[_Key] | None:
    """The keys to file a rule under, from its most selective required condition."""
    parts = condition.parts if isinstance(condition, AllOf) else (condition,)
    header: list[_Key] | None = None
    prefixed: list[_Key] | None = None
    for part in parts:
        if isinstance(part, NumberCondition) and part.terms:
            keys: list[_Key] = []
            for term in part.terms:
                if isinstance(term, ExactNumber):
                    keys.append((part.role, "exact", term.number))
                elif isinstance(term, NumberPrefix):
                    keys.append((part.role, "prefix", term.prefix))
                else:
                    break
            else:
                if all(kind == "exact" for _, kind, _ in keys):
                    return keys
                prefixed = prefixed or keys
        elif isinstance(part, HeaderCondition) and part.kind == "equals" and header is None:
            header = [("header", part.name, str(part.value))]
    return header or prefixed


def build_rule_index(conditions: Sequence[Condition]) -> RuleIndex:
    """File each rule under its most selective key; see the module docstring."""
    generic: list[int] = []
    numbers: dict[str, tuple[dict[str, list[int]], dict[str, list[int]]]] = {
        "caller": (defaultdict(list), defaultdict(list)),
        "called": (defaultdict(list), defaultdict(list)),
    }
    headers: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for position, condition in enumerate(conditions):
        keys = _index_keys(condition)
        if keys is None:
            generic.append(position)
            continue
        for table, name, value in keys:
            if table == "header":
                headers[name][value].append(position)
            else:
                exact, prefixes = numbers[table]
                (exact if name == "exact" else prefixes)[value].append(position)
    return RuleIndex(
        generic=tuple(generic),
        caller=_build_number_index(*numbers["caller"]),
        called=_build_number_index(*numbers["called"]),
        headers={
            name: {value: tuple(found) for value, found in by_value.items()}
            for name, by_value in headers.items()
        },
    )
