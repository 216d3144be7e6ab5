"""Asking your own service for a decision (`consult`): the pure part.

What a service receives (`consult_request_body`), what it may answer (`read_answer`: JSON
bytes -> ServiceAnswer, or InvalidAnswer saying why not), and what a decision keeps of
each consultation (ConsultNote). Whether an answer's action fits the ruleset (a known
profile, overrides the accept schema allows) is the Ruleset's to judge; sending the
request is app.service_consultation's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from app.rules.call_context import CallContext
from app.rules.file_model import Name
from app.rules.templates import clean_untrusted
from app.sip_identity import Party

MAX_ANSWER_BYTES = 64 * 1024
MAX_VARIABLES = 32
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

AnswerKind = Literal["accept", "refer", "reject", "continue"]
# What became of one consultation, as `sip_router_consult_total{outcome}` counts it.
ConsultOutcome = Literal["answered", "continue", "timeout", "error", "invalid", "not_asked"]


class InvalidAnswer(ValueError):
    """A service's answer that is not one sip-router can follow; the message says why."""


class _Accept(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: Name
    overrides: dict[str, Any] | None = None


class _Refer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    target_uri: StrictStr = Field(min_length=1, max_length=512)


class _Reject(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    status_code: StrictInt = Field(ge=400, le=699)


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    accept: _Accept | None = None
    refer: _Refer | None = None
    reject: _Reject | None = None
    continue_: Literal[True] | None = Field(default=None, alias="continue")
    variables: dict[StrictStr, StrictStr] | None = None


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    """An answer that has the right shape: one action (or `continue`) and its variables."""

    kind: AnswerKind
    profile: str | None = None
    overrides: Mapping[str, Any] | None = None
    target_uri: str | None = None
    status_code: int | None = None
    variables: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the call log keeps of the answer: its action, never the numbers it names."""
        shown: dict[str, Any] = {"action": self.kind}
        if self.profile is not None:
            shown["profile"] = self.profile
        if self.overrides:
            shown["overrides"] = sorted(self.overrides)
        if self.status_code is not None:
            shown["status_code"] = self.status_code
        if self.variables:
            shown["variables"] = sorted(self.variables)
        return shown


@dataclass(frozen=True, slots=True)
class ServiceReply:
    """What came back from asking a service: an answer of the right shape, or why none."""

    outcome: ConsultOutcome
    answer: ServiceAnswer | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ConsultNote:
    """One consultation of a decision: who was asked by which rule, and what became of it."""

    service: str
    rule: str
    outcome: ConsultOutcome
    reason: str | None = None
    answer: Mapping[str, Any] | None = None

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"service": self.service, "rule": self.rule}
        record["outcome"] = self.outcome
        if self.answer is not None:
            record["answer"] = dict(self.answer)
        if self.reason is not None:
            record["reason"] = self.reason
        return record


def read_answer(content: bytes) -> ServiceAnswer:
    """A service's answer from its response body; InvalidAnswer when it is not one."""
    if len(content) > MAX_ANSWER_BYTES:
        raise InvalidAnswer("the answer is longer than 64 KiB")
    try:
        data = json.loads(content, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidAnswer("the answer is not JSON") from None
    return answer_from_data(data)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def answer_from_data(data: Any) -> ServiceAnswer:
    """An answer from decoded JSON (a response body, or a stub in `tests:`/`simulate`)."""
    if not isinstance(data, dict):
        raise InvalidAnswer("the answer is not a JSON object")
    try:
        answer = _Answer.model_validate(data)
    except ValidationError as exc:
        raise InvalidAnswer(_first_problem(exc)) from None
    chosen = [
        kind
        for kind, value in (
            ("accept", answer.accept),
            ("refer", answer.refer),
            ("reject", answer.reject),
            ("continue", answer.continue_),
        )
        if value is not None
    ]
    if len(chosen) != 1:
        raise InvalidAnswer("the answer takes exactly one of accept, refer, reject, continue")
    variables = _clean_variables(answer.variables or {})
    if answer.accept is not None:
        return ServiceAnswer(
            "accept",
            profile=answer.accept.profile,
            overrides=answer.accept.overrides,
            variables=variables,
        )
    if answer.refer is not None:
        return ServiceAnswer("refer", target_uri=answer.refer.target_uri, variables=variables)
    if answer.reject is not None:
        return ServiceAnswer("reject", status_code=answer.reject.status_code, variables=variables)
    return ServiceAnswer("continue", variables=variables)


def _first_problem(exc: ValidationError) -> str:
    # The place and the kind of problem only: an answer's values never reach the log.
    error = exc.errors()[0]
    place = ".".join(str(part).rstrip("_") for part in error["loc"]) or "answer"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{place}: {message}"


def _clean_variables(variables: Mapping[str, str]) -> dict[str, str]:
    """The answer's variables as templates see them: named plainly, values made safe."""
    if len(variables) > MAX_VARIABLES:
        raise InvalidAnswer(f"the answer has more than {MAX_VARIABLES} variables")
    for name in variables:
        if not _VARIABLE_NAME.fullmatch(name):
            raise InvalidAnswer(
                "variable names are letters, digits and _ (at most 64, not starting with a digit)"
            )
    # Values come from outside, like header values: no controls, no line breaks, capped.
    return {name: clean_untrusted(value) for name, value in variables.items()}


# Names that never resolve on the public internet: a Kubernetes service, a private zone.
def consult_request_body(ctx: CallContext, rule: str) -> dict[str, Any]:
    """The JSON a consulted service receives; `api` is the call's."""
    return {
        "call_id": ctx.call_id,
        "api": ctx.api,
        "caller": _party(ctx.parties.caller),
        "called": _party(ctx.parties.called),
        "headers": {
            name: clean_untrusted(value) for name, value in ctx.headers.as_template_dict().items()
        },
        "at": ctx.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "rule": rule,
    }


def _party(party: Party) -> dict[str, Any]:
    return {
        "e164": party.e164,
        "display_name": clean_untrusted(party.display_name) if party.display_name else None,
        "country": party.country,
    }
