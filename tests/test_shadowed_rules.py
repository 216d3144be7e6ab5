"""The shadowed-rule warning: the indexed search finds exactly what comparing every pair finds."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.rules import shadowed_rules as module
from app.rules.shadowed_rules import RuleSignature, ShadowedRule, is_broader, shadowed_rules


def pairwise(signatures: list[RuleSignature]) -> list[ShadowedRule]:
    """Every later rule against every earlier one, in order: the definition."""
    found = []
    for position, (index, name, later) in enumerate(signatures):
        if later is None:
            continue
        for _, earlier_name, earlier in signatures[:position]:
            if earlier is not None and is_broader(earlier, later):
                found.append(ShadowedRule(index, name, earlier_name))
                break
    return found


# Few distinct values, so that broader rules actually occur.
numbers = st.sampled_from(["+1415555", "+14155550100", "+14155550199", "+1212", "+44"])
terms = st.one_of(
    st.tuples(st.just("exact"), numbers),
    st.tuples(st.just("prefix"), st.sampled_from(["+", "+1", "+1415", "+1415555", "+44"])),
    st.tuples(st.just("other"), st.sampled_from(["regex a", "country DE"])),
)
term_lists = st.lists(terms, min_size=1, max_size=3).map(tuple)
signatures_st = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "caller": term_lists,
            "called": term_lists,
            "schedule": st.sampled_from(['"office"', '"night"']),
            "header": st.sampled_from(['{"x-a": "1"}', '{"x-b": {"present": true}}']),
            "not": st.just('{"schedule": "office"}'),
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(signatures_st, max_size=25))
def test_indexed_search_equals_comparing_every_pair(raw: list[Any]) -> None:
    signatures: list[RuleSignature] = [(i, f"r{i}", sig) for i, sig in enumerate(raw)]
    assert shadowed_rules(signatures) == pairwise(signatures)


def test_a_prefix_rule_shadows_later_numbers_it_covers() -> None:
    signatures: list[RuleSignature] = [
        (0, "us", {"caller": (("prefix", "+1"),)}),
        (1, "sf", {"caller": (("exact", "+14155550100"),), "schedule": '"office"'}),
        (2, "uk", {"caller": (("exact", "+442071234567"),)}),
        (3, "any-office", {"schedule": '"office"'}),
        (4, "sf-office", {"caller": (("prefix", "+1415"),), "schedule": '"office"'}),
    ]
    assert shadowed_rules(signatures) == [
        ShadowedRule(1, "sf", "us"),
        ShadowedRule(4, "sf-office", "us"),
    ]


def test_ten_thousand_distinct_numbers_are_compared_with_few_earlier_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counting comparisons, not time: a later rule looks only at rules that can cover it."""
    compared = 0

    def counting(earlier: Any, later: Any) -> bool:
        nonlocal compared
        compared += 1
        return is_broader(earlier, later)

    signatures: list[RuleSignature] = [
        (i, f"tenant-{i}", {"called": (("exact", f"+1415555{i:04d}"),), "schedule": '"office"'})
        for i in range(10_000)
    ]
    monkeypatch.setattr(module, "is_broader", counting)
    assert shadowed_rules(signatures) == []
    assert compared == 0
