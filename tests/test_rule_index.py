"""The rule index picks the same rule as trying every rule in order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.rules.loader import load_ruleset
from app.rules.simulation import simulated_context

AT = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
NUMBERS = ["+14155550100", "+14155550101", "+14155551234", "+16505550100", "+4930123456"]
PREFIXES = ["+1415*", "+141555501*", "+1650*", "+49*", "+1*"]

condition = st.one_of(
    st.builds(lambda n: {"caller": n}, st.sampled_from(NUMBERS + PREFIXES)),
    st.builds(lambda n: {"called": n}, st.sampled_from(NUMBERS + PREFIXES)),
    st.builds(
        lambda ns: {"caller": ns},
        st.lists(st.sampled_from(NUMBERS + PREFIXES), min_size=1, max_size=3),
    ),
    st.builds(
        lambda a, b: {"caller": a, "called": b}, st.sampled_from(NUMBERS), st.sampled_from(PREFIXES)
    ),
    st.builds(lambda c: {"caller": {"country": c}}, st.sampled_from(["US", "DE"])),
    st.builds(lambda n: {"not": {"caller": n}}, st.sampled_from(NUMBERS)),
    st.builds(lambda v: {"header": {"X-Tier": v}}, st.sampled_from(["gold", "silver"])),
    st.builds(
        lambda v, p: {"header": {"x-tier": v}, "caller": p},
        st.sampled_from(["gold", "silver"]),
        st.sampled_from(PREFIXES),
    ),
    st.builds(
        lambda v, n: {"header": {"X-Tier": v}, "called": n},
        st.sampled_from(["gold", "silver"]),
        st.sampled_from(NUMBERS),
    ),
    st.just({}),
)


class _PlainDumper(yaml.SafeDumper):
    """Writes a value used twice out twice: rule files may not hold anchors and aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _write_rules(tmp: Path, conditions: list[dict[str, object]]) -> Path:
    doc = {
        "version": 1,
        "defaults": {"timezone": "UTC", "region": "US"},
        "rules": [
            {"name": f"r{i}", "when": when, "reject": {"status_code": 400 + i % 300}}
            for i, when in enumerate(conditions)
        ],
        "default": {"reject": {"status_code": 603}},
    }
    path = tmp / "rules.yaml"
    path.write_text(yaml.dump(doc, Dumper=_PlainDumper))
    return path


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    conditions=st.lists(condition, min_size=1, max_size=12),
    caller=st.sampled_from([*NUMBERS, "+12125550199", "anonymous"]),
    called=st.sampled_from(NUMBERS),
    tier=st.sampled_from([None, "gold", "silver"]),
)
def test_index_agrees_with_trying_every_rule(
    tmp_path: Path, conditions: list[dict[str, object]], caller: str, called: str, tier: str | None
) -> None:
    ruleset = load_ruleset(_write_rules(tmp_path, conditions))
    headers = {"X-Tier": tier} if tier else None
    ctx = simulated_context(ruleset, caller, called, AT, headers)
    indexed = ruleset.decide(ctx)
    in_order = ruleset.decide(ctx, explain=True)
    assert indexed.rule == in_order.rule
    assert dict(indexed.body) == dict(in_order.body)


def test_rules_filed_under_numbers_are_not_tried_for_other_calls(tmp_path: Path) -> None:
    conditions: list[dict[str, object]] = [{"caller": f"+1415555{i:04d}"} for i in range(1000)]
    conditions.append({"caller": {"country": "DE"}})
    ruleset = load_ruleset(_write_rules(tmp_path, conditions))
    ctx = simulated_context(ruleset, "+14155550999", "+14155550100", AT)
    assert list(ruleset.index.candidates(ctx)) == [999, 1000]
    assert ruleset.decide(ctx).rule == "r999"
    other = simulated_context(ruleset, "+4930123456", "+14155550100", AT)
    assert list(ruleset.index.candidates(other)) == [1000]
    assert ruleset.decide(other).rule == "r1000"


def test_the_most_selective_condition_files_a_rule(tmp_path: Path) -> None:
    conditions: list[dict[str, object]] = [
        {"caller": "+1415*", "called": "+14155550100"},
        {"caller": "+1415*", "header": {"X-Tenant": "T1"}},
        {"caller": "+1415*"},
    ]
    ruleset = load_ruleset(_write_rules(tmp_path, conditions))
    call = simulated_context(ruleset, "+14155550123", "+14155550199", AT, {"X-Tenant": "T2"})
    assert list(ruleset.index.candidates(call)) == [2]
    tenant = simulated_context(ruleset, "+14155550123", "+14155550199", AT, {"x-tenant": "T1"})
    assert list(ruleset.index.candidates(tenant)) == [1, 2]
    assert ruleset.decide(tenant).rule == "r1"
