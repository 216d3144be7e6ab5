"""Rules that can never match because an earlier rule catches every call they would.

An earlier rule is broader than a later one when each of its `when` keys is also in the
later rule's, with the same value, except `caller`/`called`, where each of the later
rule's terms must be covered by one of the earlier rule's (the same term, or a prefix of
it). Comparing every pair costs n^2/2 comparisons (tens of seconds for 10,000 rules);
here earlier rules are indexed by the keys they require and by their number terms, so a
later rule looks up only the few earlier rules that can be broader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

NUMBER_ROLES = ("caller", "called")
Term = tuple[str, str]
Signature = Mapping[str, Any]
# (position in the file's rules, rule name, signature or None when it cannot be compared)
RuleSignature = tuple[int, str, Signature | None]

# Beyond this many other keys in one rule, its subsets are not enumerated (2^n): every
# group of earlier rules is tested for being a subset instead.
_MAX_SUBSET_KEYS = 8

GroupKey = tuple[frozenset[tuple[str, Any]], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class ShadowedRule:
    """Rule `index` (`name`) can never match: `by` before it catches every call it would."""

    index: int
    name: str
    by: str


@dataclass
class _Group:
    """Earlier rules that require exactly the same other keys and the same number roles."""

    roles: tuple[str, ...]
    members: list[int] = field(default_factory=list)  # positions, in order
    by_term: dict[Term, list[int]] = field(default_factory=dict)


def shadowed_rules(signatures: Sequence[RuleSignature]) -> list[ShadowedRule]:
    """Each rule with an earlier, broader rule, named after the first such rule in order."""
    groups: dict[GroupKey, _Group] = {}
    found: list[ShadowedRule] = []
    for position, (index, name, signature) in enumerate(signatures):
        if signature is None:
            continue
        earliest = _earliest_broader(signature, signatures, groups)
        if earliest is not None:
            found.append(ShadowedRule(index, name, signatures[earliest][1]))
        _add(position, signature, groups)
    return found


def is_broader(earlier: Signature, later: Signature) -> bool:
    """Whether `earlier` holds for every call `later` holds for (as far as keys tell)."""
    for key, value in earlier.items():
        if key not in later:
            return False
        if key in NUMBER_ROLES:
            if not _covers(value, later[key]):
                return False
        elif later[key] != value:
            return False
    return True


def _covers(broad: Sequence[Term], narrow: Sequence[Term]) -> bool:
    broad_terms = set(broad)
    prefixes = [value for kind, value in broad if kind == "prefix"]
    return all(_term_covered(term, broad_terms, prefixes) for term in narrow)


def _term_covered(term: Term, broad_terms: set[Term], prefixes: list[str]) -> bool:
    kind, value = term
    if term in broad_terms:
        return True
    return kind in ("exact", "prefix") and any(value.startswith(p) for p in prefixes)


def _split(signature: Signature) -> tuple[frozenset[tuple[str, Any]], tuple[str, ...]]:
    others = frozenset((k, v) for k, v in signature.items() if k not in NUMBER_ROLES)
    roles = tuple(role for role in NUMBER_ROLES if role in signature)
    return others, roles


def _add(position: int, signature: Signature, groups: dict[GroupKey, _Group]) -> None:
    others, roles = _split(signature)
    group = groups.setdefault((others, roles), _Group(roles))
    group.members.append(position)
    if roles:
        # Indexed by the terms of its first number role: a broader rule must cover the
        # later rule's first term with one of these.
        for term in set(signature[roles[0]]):
            group.by_term.setdefault(term, []).append(position)


def _earliest_broader(
    signature: Signature, signatures: Sequence[RuleSignature], groups: dict[GroupKey, _Group]
) -> int | None:
    earliest: int | None = None
    for group in _groups_within(signature, groups):
        for position in _candidates(group, signature):
            if earliest is not None and position >= earliest:
                continue
            earlier_signature = signatures[position][2]
            if earlier_signature is not None and is_broader(earlier_signature, signature):
                earliest = position
    return earliest


def _groups_within(signature: Signature, groups: dict[GroupKey, _Group]) -> Iterator[_Group]:
    """The groups whose required keys are all among this rule's."""
    others, roles = _split(signature)
    if len(others) > _MAX_SUBSET_KEYS:
        for (group_others, group_roles), group in groups.items():
            if group_others <= others and set(group_roles) <= set(roles):
                yield group
        return
    for other_keys in _subsets(others):
        for role_keys in _subsets(frozenset(roles)):
            group_roles = tuple(role for role in NUMBER_ROLES if role in role_keys)
            found = groups.get((other_keys, group_roles))
            if found is not None:
                yield found


def _candidates(group: _Group, signature: Signature) -> Iterator[int]:
    if not group.roles:
        # Every member requires only keys this rule has, with the same values: each is
        # broader, and the first is the earliest.
        yield from group.members[:1]
        return
    terms: list[Term] = list(signature[group.roles[0]])
    if not terms:
        yield from group.members
        return
    # Earlier rules whose first-role terms hold this rule's first term, or a prefix of it.
    kind, value = terms[0]
    yield from group.by_term.get((kind, value), ())
    if kind in ("exact", "prefix"):
        for end in range(len(value) + 1):
            yield from group.by_term.get(("prefix", value[:end]), ())


def _subsets(items: frozenset[Any]) -> Iterator[frozenset[Any]]:
    ordered = sorted(items, key=repr)
    for size in range(len(ordered) + 1):
        for chosen in combinations(ordered, size):
            yield frozenset(chosen)
