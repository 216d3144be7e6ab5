"""Replay: decide recorded calls again with a candidate ruleset.

Pure: recorded calls in (the side records of app.recorded_calls, or lines of a JSONL
export), a report out. Each call is decided at its own `created_at` with its recorded SIP
headers; a call recorded without inputs is counted as skipped. "Before" is what the rules
in service chose when the call came (the rule and the action it asked for, before any
`on_error`); "after" is what the candidate chooses, read the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.recorded_calls import context_from_inputs, newest_per_call
from app.rules.ruleset import Decision, Ruleset


@dataclass(frozen=True, slots=True)
class ChangedCall:
    call_id: str
    time: str | None
    before: dict[str, str | None]
    after: dict[str, str | None]

    def as_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "time": self.time,
            "before": self.before,
            "after": self.after,
        }


@dataclass
class ReplayReport:
    """`calls` decided again, `skipped` without inputs, and those whose decision changed."""

    version: str
    warnings: tuple[str, ...]
    calls: int = 0
    skipped: int = 0
    changed: list[ChangedCall] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "warnings": list(self.warnings),
            "calls": self.calls,
            "skipped": self.skipped,
            "changed": [c.as_json() for c in self.changed],
        }


def replay_calls(candidate: Ruleset, records: Iterable[Mapping[str, Any]]) -> ReplayReport:
    """Decide each recorded call (newest first, once per call id) with `candidate`."""
    report = ReplayReport(candidate.version, candidate.warnings)
    for record in newest_per_call(list(records)):
        call_id = str(record["call_id"])
        inputs = record.get("inputs")
        if not isinstance(inputs, Mapping):
            report.skipped += 1
            continue
        try:
            ctx = context_from_inputs(inputs, call_id, candidate)
        except ValueError:
            report.skipped += 1
            continue
        report.calls += 1
        before = recorded_choice(record)
        after = choice(candidate, candidate.decide(ctx, answers=recorded_answers(record)))
        if before != after:
            report.changed.append(ChangedCall(call_id, _time(record), before, after))
    return report


def recorded_answers(record: Mapping[str, Any]) -> dict[str, Any]:
    """The answers the services consulted for the call gave, as `decide` takes them.

    A replay never asks a service: a candidate's `consult` rule gets the answer recorded
    for that service (its action; the call log keeps no more of it), and one that was not
    consulted then (or did not answer) is not asked, so the next rule decides.
    """
    entry = record.get("entry")
    notes = (entry if isinstance(entry, Mapping) else record).get("consulted")
    answers: dict[str, Any] = {}
    for note in notes if isinstance(notes, list) else []:
        if not isinstance(note, Mapping) or note.get("outcome") not in ("answered", "continue"):
            continue
        summary = note.get("answer")
        service = note.get("service")
        if not isinstance(summary, Mapping) or not isinstance(service, str):
            continue
        answer = _answer_from_summary(summary)
        if answer is not None:
            answers.setdefault(service, answer)
    return answers


def _answer_from_summary(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = summary.get("action")
    if kind == "continue":
        return {"continue": True}
    if kind == "accept" and isinstance(summary.get("profile"), str):
        return {"accept": {"profile": summary["profile"]}}
    if kind == "reject" and isinstance(summary.get("status_code"), int):
        return {"reject": {"status_code": summary["status_code"]}}
    if kind == "refer":
        # The target is not recorded (it may name a number); any valid one gives the
        # same rule and action.
        return {"refer": {"target_uri": "sip:replayed@sip-router.invalid"}}
    return None


def choice(ruleset: Ruleset, decision: Decision) -> dict[str, str | None]:
    """The rule that decided (`default` when none) and the action it asked for."""
    action: str = decision.action
    if decision.error is not None and decision.failed is not None:
        action = decision.failed
    elif decision.error is not None:
        # The action could not be rendered and on_error's was sent; the rule chose its own.
        for compiled in ruleset.rules:
            if compiled.name == decision.rule:
                action = compiled.action.kind
                break
        else:
            action = ruleset.default.kind
    return {"rule": decision.rule or "default", "action": action}


def recorded_choice(record: Mapping[str, Any]) -> dict[str, str | None]:
    """What the rules in service chose for a recorded call."""
    decided = record.get("decision")
    if isinstance(decided, Mapping) and "action" in decided:
        return {"rule": decided.get("rule"), "action": decided.get("action")}
    entry = record.get("entry")
    entry = entry if isinstance(entry, Mapping) else record
    return {"rule": entry.get("rule"), "action": entry.get("failed_action") or entry.get("action")}


def _time(record: Mapping[str, Any]) -> str | None:
    entry = record.get("entry")
    source = entry if isinstance(entry, Mapping) else record
    time = source.get("time")
    return time if isinstance(time, str) else None


def read_jsonl(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Recorded calls from JSONL (one `GET /admin/calls?inputs=true` entry a line).

    ValueError naming the line when one is not a JSON object with a `call_id`.
    """
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise ValueError(f"line {number}: not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("call_id"), str):
            raise ValueError(f"line {number}: not a recorded call (an object with a call_id)")
        records.append(record)
    return records


def export_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """A side record as one call of `GET /admin/calls?inputs=true` (and one JSONL line)."""
    entry = record.get("entry")
    shown: dict[str, Any] = dict(entry) if isinstance(entry, Mapping) else {}
    shown["call_id"] = record.get("call_id")
    if "decision" in record:
        decided = record["decision"]
        shown["decision"] = {k: v for k, v in decided.items() if k != "trace"}
    if "inputs" in record:
        shown["inputs"] = record["inputs"]
    return shown
