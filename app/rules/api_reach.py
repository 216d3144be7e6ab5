"""Which API's calls can reach each action of a rule file, for `check`'s warnings (section 11).

A call announced on Realtime cannot be accepted with a GPT-Live profile, nor the other way
round: such a decision applies `on_error`. A rule reaches the calls its `when` can hold for
(`api` conditions narrow it) that no earlier rule caught in full (a rule whose `when` is
only about the API catches every call of that API). Rule files that never mention GPT-Live
(no `api: live` profile, no `api` condition) are taken to serve Realtime only, and get no
such warnings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import get_args

from app.call_api import CallApi
from app.rules.conditions import AllOf, AnyOf, ApiCondition, Condition, Not
from app.rules.profile_control import ANNOUNCER_PROFILE
from app.rules.ruleset import (
    API_NAMES,
    LAST_RESORT,
    AcceptAction,
    Action,
    CompiledRule,
    Consult,
    ReferAction,
    SplitAction,
)
from app.rules.yaml_source import Path as DataPath

BOTH: frozenset[CallApi] = frozenset(get_args(CallApi))


@dataclass(frozen=True, slots=True)
class ApiWarning:
    path: DataPath
    message: str


def can_hold_for(condition: Condition) -> frozenset[CallApi]:
    """The APIs whose calls `condition` may hold for (as far as its `api` terms tell)."""
    if isinstance(condition, ApiCondition):
        return frozenset({condition.api})
    if isinstance(condition, AllOf):
        apis = BOTH
        for part in condition.parts:
            apis &= can_hold_for(part)
        return apis
    if isinstance(condition, AnyOf):
        return frozenset().union(*(can_hold_for(part) for part in condition.parts))
    if isinstance(condition, Not) and isinstance(condition.part, ApiCondition):
        return BOTH - {condition.part.api}
    return BOTH


def holds_for_all(condition: Condition) -> frozenset[CallApi]:
    """The APIs every call of which `condition` holds for."""
    if isinstance(condition, ApiCondition):
        return frozenset({condition.api})
    if isinstance(condition, AllOf):
        apis = BOTH
        for part in condition.parts:
            apis &= holds_for_all(part)
        return apis
    if isinstance(condition, AnyOf):
        return frozenset().union(*(holds_for_all(part) for part in condition.parts))
    if isinstance(condition, Not) and isinstance(condition.part, ApiCondition):
        return BOTH - {condition.part.api}
    return frozenset()


def mentions_api(condition: Condition) -> bool:
    if isinstance(condition, ApiCondition):
        return True
    if isinstance(condition, AllOf | AnyOf):
        return any(mentions_api(part) for part in condition.parts)
    if isinstance(condition, Not):
        return mentions_api(condition.part)
    return False


def api_warnings(
    rules: Sequence[tuple[int, CompiledRule]],
    default: Action | None,
    on_error: Action | None,
    live_profiles: bool,
) -> list[ApiWarning]:
    """Where an action can meet a call of the API its profile is not for (see module doc)."""
    if not live_profiles and not any(mentions_api(rule.when) for _, rule in rules):
        return []
    warnings: list[ApiWarning] = []
    caught: frozenset[CallApi] = frozenset()
    for index, rule in rules:
        apis = can_hold_for(rule.when) - caught
        if isinstance(rule.action, Consult):
            continue
        for message in _mismatches(
            rule.action, apis, "this rule can also match", "narrow it with when: {{api: {api}}}"
        ):
            warnings.append(ApiWarning(("rules", index), f"rule '{rule.name}': {message}"))
        caught |= holds_for_all(rule.when)
    if default is not None:
        for message in _mismatches(
            default,
            BOTH - caught,
            "the default can be reached by",
            "give those calls a rule of their own before the default",
        ):
            warnings.append(ApiWarning(("default",), f"default: {message}"))
    for message in _mismatches(
        on_error or LAST_RESORT,
        BOTH,
        "on_error can apply to",
        "on_error answers calls of both APIs: a reject fits both",
        outcome="the caller gets SIP 503 instead",
    ):
        warnings.append(ApiWarning(("on_error",), f"on_error: {message}"))
    return warnings


def _mismatches(
    action: Action,
    apis: Iterable[CallApi],
    reached: str,
    hint: str,
    *,
    outcome: str = "they get on_error",
) -> list[str]:
    messages: list[str] = []
    for accept in _accepts(action):
        for api in sorted(apis):
            if api == accept.api:
                continue
            if isinstance(action, ReferAction) and api == "live":
                if accept.profile != ANNOUNCER_PROFILE:
                    messages.append(
                        f"profile '{accept.profile}' is for {API_NAMES[accept.api]}, and"
                        f" {reached} GPT-Live calls: on those the refer accepts with the"
                        " built-in GPT-Live announcer instead (give the refer an api: live"
                        " profile to use one)"
                    )
                continue
            if accept.profile == ANNOUNCER_PROFILE:
                continue
            messages.append(
                f"profile '{accept.profile}' is for {API_NAMES[accept.api]} (api: {accept.api}),"
                f" and {reached} {API_NAMES[api]} calls: {outcome}"
                f" ({hint.format(api=accept.api)})"
            )
    return messages


def _accepts(action: Action) -> list[AcceptAction]:
    if isinstance(action, AcceptAction):
        return [action]
    if isinstance(action, SplitAction):
        return [choice for choice, _ in action.choices]
    if isinstance(action, ReferAction) and action.accept is not None:
        return [action.accept]
    return []
