"""Decisions for calls described by numbers rather than by a webhook: `simulate`, `tests:`.

Services that `consult` rules ask are not called here: a case's `consult:` (or
`simulate --consult`) gives their answers, and a service without one is passed over.

A simulated call goes through the same SIP header parsing as a real one: its numbers
are written into `From` and `To` headers first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.call_api import CallApi
from app.rules.call_context import CallContext
from app.rules.file_model import TestCaseSpec
from app.rules.profile_control import control_summary
from app.rules.ruleset import Decision, Ruleset
from app.sip_identity import SipHeaders, parse_parties

SIMULATED_CALL_ID = "rtc_simulated"
SIMULATED_SESSION_ID = "live_simulated"


def simulated_call_id(api: CallApi) -> str:
    """The id a simulated call has: a Realtime `call_id` or a GPT-Live `session_id`."""
    return SIMULATED_SESSION_ID if api == "live" else SIMULATED_CALL_ID


def sip_headers_for(
    caller: str, called: str, extra: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """`From`/`To` (and any extra headers) as a SIP trunk would send them for these numbers."""
    if caller.strip().lower() in ("anonymous", ""):
        from_value = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=sim'
    else:
        from_value = f"<sip:{caller.strip()}@trunk.sip-router.invalid>;tag=sim"
    headers = [("From", from_value), ("To", f"<sip:{called.strip()}@trunk.sip-router.invalid>")]
    headers.extend((name, value) for name, value in (extra or {}).items())
    return headers


def simulated_context(
    ruleset: Ruleset,
    caller: str,
    called: str,
    at: datetime,
    headers: Mapping[str, str] | None = None,
    call_id: str | None = None,
    *,
    api: CallApi = "realtime",
    media_security: str | None = None,
) -> CallContext:
    """The CallContext of a call from `caller` to `called` at `at`, announced on `api`."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=ruleset.timezone)
    sip_headers = SipHeaders.from_pairs(sip_headers_for(caller, called, headers))
    parties = parse_parties(sip_headers, ruleset.region or "ZZ")
    return CallContext(
        call_id=call_id if call_id is not None else simulated_call_id(api),
        parties=parties,
        headers=sip_headers,
        at=at,
        api=api,
        media_security=media_security,
    )


def decision_json(decision: Decision, call_id: str | None = None) -> dict[str, Any]:
    """The `simulate --json` object (README "Command line")."""
    if call_id is None:
        call_id = simulated_call_id(decision.api)
    result: dict[str, Any] = {
        "rule": decision.rule,
        "action": decision.action,
        "api": decision.api,
        "request": {"path": decision.path(call_id), "body": dict(decision.request_body)},
        "trace": [
            {"rule": step.rule, "matched": step.matched, "reason": step.reason}
            for step in decision.trace
        ],
        "ruleset": decision.ruleset,
    }
    if decision.profile is not None:
        result["profile"] = decision.profile
    if decision.max_duration_s is not None:
        result["max_duration_s"] = decision.max_duration_s
    if decision.error is not None:
        result["error"] = decision.error
    if decision.consulted:
        result["consulted"] = [note.as_record() for note in decision.consulted]
    if decision.control is not None:
        # What sip-router would do on the call's sideband after the accept (section 10).
        result["after_accept"] = control_summary(decision.control, decision.tools_added)
    return result


@dataclass(frozen=True, slots=True)
class RuleTestResult:
    """One `tests:` case: where it is, and why it failed (None when it passed)."""

    file: str
    line: int
    description: str
    failure: str | None

    @property
    def passed(self) -> bool:
        return self.failure is None


def run_rule_tests(ruleset: Ruleset, now: datetime) -> list[RuleTestResult]:
    """Run the rule file's `tests:` block; cases without `at` are decided at `now`."""
    results = []
    for line, case in ruleset.tests:
        at = case.at or now
        ctx = simulated_context(
            ruleset,
            case.from_,
            case.to,
            at,
            case.headers,
            api=case.api,
            media_security=case.media_security,
        )
        decision = ruleset.decide(ctx, answers=case.consult)
        description = f"{case.from_} -> {case.to}" + (
            f" at {case.at.isoformat()}" if case.at else ""
        )
        if case.api != "realtime":
            description += f" on {case.api}"
        results.append(
            RuleTestResult(ruleset.main_file, line, description, _mismatch(case, decision))
        )
    return results


def _mismatch(case: TestCaseSpec, decision: Decision) -> str | None:
    expect = case.expect
    got_rule = decision.rule or "default"
    got = f"got {decision.action} by {got_rule}{_consulted(decision)}"
    if expect.rule is not None and expect.rule != got_rule:
        return f"expected rule {expect.rule}, {got}"
    if expect.action is not None and expect.action != decision.action:
        return f"expected {expect.action}, {got}"
    if expect.status_code is not None and decision.body.get("status_code") != expect.status_code:
        return f"expected status_code {expect.status_code}, {got} {dict(decision.body)}"
    if expect.target_uri is not None and decision.body.get("target_uri") != expect.target_uri:
        return f"expected target_uri {expect.target_uri}, {got} {dict(decision.body)}"
    if expect.profile is not None and decision.profile != expect.profile:
        return f"expected profile {expect.profile}, {got} with profile {decision.profile}"
    if decision.error is not None:
        return f"{got} after an error: {decision.error}"
    return None


def _consulted(decision: Decision) -> str:
    """How the decision's consultations went, for a failure message."""
    notes = [
        f"{note.service} {note.outcome}" + (f" ({note.reason})" if note.reason else "")
        for note in decision.consulted
    ]
    return f" [consulted: {'; '.join(notes)}]" if notes else ""
