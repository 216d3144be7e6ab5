"""The decision recorded for a call before its request is sent, and how a re-send ends.

A delivery records its decision (verb, exact body, rule, ruleset version) under the call's
lease, then sends it. Whoever later finds that record without a result (a redelivery after
a crash, an expired lease or a failed final write) sends exactly the recorded request
again and never decides anew, so one call never gets two different actions; the same
request may reach OpenAI more than once, and OpenAI's `decision_already_made` for a copy
counts as done.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast, get_args

from app.call_api import CallApi
from app.calls.call_control import control_from_json, control_to_json
from app.openai_calls import ActionResult
from app.rules.ruleset import ActionKind, Decision

_ACTIONS = frozenset(get_args(ActionKind))
_APIS = frozenset(get_args(CallApi))


def decision_record(decision: Decision) -> dict[str, Any]:
    """What the store keeps of a decision: enough to send its request again, exactly."""
    record: dict[str, Any] = {
        "action": decision.action,
        "body": dict(decision.body),
        "rule": decision.rule,
        "ruleset": decision.ruleset,
        "profile": decision.profile,
        "max_duration_s": decision.max_duration_s,
        "error": decision.error,
        # A refer carried out after an accept: the accept is what was sent.
        "accept_body": dict(decision.accept_body) if decision.accept_body is not None else None,
        # The API whose endpoints receive the request (a re-send goes to the same one).
        "api": decision.api,
        # What to do after the accept, as decided (a re-send stays with the call the same
        # way, even after a reload or when the rule consulted a service).
        "control": control_to_json(decision.control) if decision.control is not None else None,
        "tools_added": list(decision.tools_added) or None,
    }
    return {key: value for key, value in record.items() if value is not None}


def decision_from_record(record: Mapping[str, Any]) -> Decision:
    """The decision a record holds; ValueError if it is not one `decision_record` wrote."""
    action, body = record.get("action"), record.get("body")
    if action not in _ACTIONS or not isinstance(action, str) or not isinstance(body, dict):
        raise ValueError("not a recorded decision")
    texts = {name: record.get(name) for name in ("rule", "profile", "error")}
    if not all(value is None or isinstance(value, str) for value in texts.values()):
        raise ValueError("not a recorded decision")
    accept_body = record.get("accept_body")
    if accept_body is not None and not isinstance(accept_body, dict):
        raise ValueError("not a recorded decision")
    max_duration_s = record.get("max_duration_s")
    if max_duration_s is not None and not isinstance(max_duration_s, int | float):
        raise ValueError("not a recorded decision")
    # Recorded before GPT-Live calls existed: a Realtime call's.
    api = record.get("api", "realtime")
    if api not in _APIS:
        raise ValueError("not a recorded decision")
    tools_added = record.get("tools_added", [])
    if not isinstance(tools_added, list) or not all(isinstance(t, str) for t in tools_added):
        raise ValueError("not a recorded decision")
    control = record.get("control")
    if control is not None:
        try:
            control = control_from_json(control)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError("not a recorded decision") from exc
    return Decision(
        action=cast(ActionKind, action),
        body=body,
        rule=texts["rule"],
        profile=texts["profile"],
        max_duration_s=max_duration_s,
        ruleset=str(record.get("ruleset", "")),
        error=texts["error"],
        accept_body=accept_body,
        api=cast(CallApi, api),
        control=control,
        tools_added=tuple(tools_added),
    )


def resent_outcome(result: ActionResult) -> str | None:
    """How a recorded request sent again ended; None when it had no effect (try later).

    An earlier copy may have been applied, so a refusal of this copy is `unknown`, never a
    failure that would lead to `on_error`.
    """
    if result.outcome != "failed":
        return result.outcome
    if result.status is not None and 400 <= result.status < 500 and result.status not in (408, 429):
        return "unknown"
    return None
