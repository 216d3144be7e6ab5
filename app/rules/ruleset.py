"""A compiled ruleset and the decision it makes for one call (pure: the time is an input)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

from app.rules.accept_body import AcceptTemplates
from app.rules.call_context import CallContext
from app.rules.conditions import Condition
from app.rules.file_model import TestCaseSpec
from app.rules.rule_index import RuleIndex, build_rule_index
from app.rules.templates import (
    Template,
    TemplateRenderError,
    clean_untrusted,
    template_variables,
)
from app.sip_identity import Party

ActionKind = Literal["accept", "refer", "reject"]

_TEL_URI = re.compile(r"tel:\+[1-9][0-9]{6,14}(?:;[A-Za-z0-9\-_.!~*'()&=+$,;:]*)?")
_SIP_URI = re.compile(
    r"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+@)?"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?(?:;[A-Za-z0-9\-_.!~*'()&=+$,:%]*)*"
)


def check_target_uri(uri: str) -> str | None:
    """None when `uri` is a `tel:` E.164 or `sip:`/`sips:` URI fit for Refer-To, else why not."""
    if len(uri) > 512:
        return "target_uri is longer than 512 characters"
    if _TEL_URI.fullmatch(uri) or _SIP_URI.fullmatch(uri):
        return None
    return "target_uri must be tel:+<E.164> or a sip:/sips: URI"


class ActionRenderError(Exception):
    """The chosen action could not be turned into a request (template or rendered URI)."""


@dataclass(frozen=True, slots=True)
class AcceptAction:
    profile: str
    body: Mapping[str, Any]
    templates: AcceptTemplates | None
    max_duration_s: float | None
    kind: ActionKind = "accept"

    @property
    def is_static(self) -> bool:
        return self.templates is None

    def render(self, variables: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.templates is None:
            return self.body
        try:
            return self.templates.render(self.body, variables)
        except TemplateRenderError as exc:
            raise ActionRenderError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ReferAction:
    target: Template
    kind: ActionKind = "refer"

    @property
    def is_static(self) -> bool:
        return self.target.is_static

    def render(self, variables: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            uri = self.target.render(variables).strip()
        except TemplateRenderError as exc:
            raise ActionRenderError(f"target_uri template: {exc}") from None
        problem = check_target_uri(uri)
        if problem is not None:
            raise ActionRenderError(f"rendered {problem}")
        return {"target_uri": uri}


@dataclass(frozen=True, slots=True)
class RejectAction:
    status_code: int
    kind: ActionKind = "reject"

    @property
    def is_static(self) -> bool:
        return True

    def render(self, variables: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"status_code": self.status_code}


Action = AcceptAction | ReferAction | RejectAction

# When even `on_error` cannot be rendered, the caller still gets a clear answer.
LAST_RESORT = RejectAction(503)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    when: Condition
    action: Action
    line: int


@dataclass(frozen=True, slots=True)
class TraceStep:
    rule: str
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one call, and the request that does it."""

    action: ActionKind
    body: Mapping[str, Any]
    rule: str | None
    profile: str | None
    max_duration_s: float | None
    ruleset: str
    trace: tuple[TraceStep, ...] = ()
    error: str | None = None

    def path(self, call_id: str) -> str:
        return f"/realtime/calls/{call_id}/{self.action}"


def party_fields(party: Party) -> dict[str, Any]:
    return {
        "e164": party.e164,
        "display_name": clean_untrusted(party.display_name) if party.display_name else None,
        "country": party.country,
        "anonymous": party.anonymous,
    }


@dataclass(frozen=True)
class Ruleset:
    """Rules compiled from one set of files; `version` identifies their exact content."""

    version: str
    files: tuple[str, ...]
    timezone: ZoneInfo
    region: str | None
    rules: tuple[CompiledRule, ...]
    default: Action
    on_error: Action
    warnings: tuple[str, ...] = ()
    tests: tuple[tuple[int, TestCaseSpec], ...] = field(default=(), repr=False)
    main_file: str = ""
    index: RuleIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", build_rule_index([r.when for r in self.rules]))

    def decide(self, ctx: CallContext, *, explain: bool = False) -> Decision:
        """The first rule whose `when` holds decides, else `default`."""
        trace: list[TraceStep] = []
        chosen: CompiledRule | None = None
        if explain:
            # Every rule in order, so the trace says why each earlier one did not match.
            for rule in self.rules:
                ok, reason = rule.when.explain(ctx)
                trace.append(TraceStep(rule.name, ok, reason))
                if ok:
                    chosen = rule
                    break
        else:
            rules = self.rules
            for position in self.index.candidates(ctx):
                if rules[position].when.matches(ctx):
                    chosen = rules[position]
                    break
        action = chosen.action if chosen is not None else self.default
        rule_name = chosen.name if chosen is not None else None
        try:
            return self._decision(action, rule_name, ctx, tuple(trace), None)
        except ActionRenderError as exc:
            return self.fallback(ctx, rule_name, str(exc), tuple(trace))

    def fallback(
        self,
        ctx: CallContext,
        rule: str | None,
        error: str,
        trace: tuple[TraceStep, ...] = (),
    ) -> Decision:
        """The `on_error` decision, used when the chosen action fails."""
        try:
            return self._decision(self.on_error, rule, ctx, trace, error)
        except ActionRenderError as exc:
            return self._decision(LAST_RESORT, rule, ctx, trace, f"{error}; on_error: {exc}")

    def _decision(
        self,
        action: Action,
        rule: str | None,
        ctx: CallContext,
        trace: tuple[TraceStep, ...],
        error: str | None,
    ) -> Decision:
        variables = {} if action.is_static else self.template_variables(ctx, rule)
        body = action.render(variables)
        accept = action if isinstance(action, AcceptAction) else None
        return Decision(
            action=action.kind,
            body=body,
            rule=rule,
            profile=accept.profile if accept else None,
            max_duration_s=accept.max_duration_s if accept else None,
            ruleset=self.version,
            trace=trace,
            error=error,
        )

    def template_variables(self, ctx: CallContext, rule: str | None) -> dict[str, Any]:
        return template_variables(
            caller=party_fields(ctx.parties.caller),
            called=party_fields(ctx.parties.called),
            call_id=ctx.call_id,
            rule=rule,
            headers=ctx.headers.as_template_dict(),
            now=ctx.at.astimezone(self.timezone),
        )
