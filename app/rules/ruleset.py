"""A compiled ruleset and the decision it makes for one call (pure: the time is an input)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from app.call_api import CALL_PATHS, CallApi
from app.calls.call_control import (
    HANG_UP,
    CallControl,
    ReferAfterAccept,
    ReferFailure,
)
from app.rules.accept_body import (
    AcceptTemplates,
    SessionConfig,
    build_accept_body,
    compile_accept_templates,
    validate_session_config,
)
from app.rules.call_context import CallContext
from app.rules.call_control_tools import with_call_control_tools
from app.rules.conditions import Condition
from app.rules.consultation import (
    ConsultNote,
    InvalidAnswer,
    ServiceAnswer,
    ServiceReply,
    answer_from_data,
)
from app.rules.file_model import TestCaseSpec
from app.rules.file_shape import Finding, validation_findings
from app.rules.live_accept_body import (
    LIVE_ANNOUNCER_SESSION,
    LiveSessionConfig,
    build_live_accept_body,
    live_templated_fields,
    validate_live_session,
    with_live_call_control_tools,
)
from app.rules.profile_control import (
    ANNOUNCER_PROFILE,
    ANNOUNCER_SESSION,
    ControlRenderError,
    ProfileControl,
)
from app.rules.profile_overrides import NOT_OVERRIDABLE, deep_merge, max_duration
from app.rules.rule_index import RuleIndex, build_rule_index
from app.rules.target_uris import check_target_uri
from app.rules.templates import (
    Template,
    TemplateRenderError,
    clean_untrusted,
    template_variables,
)
from app.sip_identity import Party

ActionKind = Literal["accept", "refer", "reject"]


class ActionRenderError(Exception):
    """The chosen action could not be turned into a request (template or rendered URI)."""


@dataclass(frozen=True, slots=True)
class AcceptAction:
    profile: str
    body: Mapping[str, Any]
    templates: AcceptTemplates | None
    max_duration_s: float | None
    kind: ActionKind = "accept"
    # The profile's call-control keys (section 10); None: sip-router leaves after the accept.
    control: ProfileControl | None = None
    # The API the profile is for (section 11): its accept body is that API's.
    api: CallApi = "realtime"

    @property
    def is_static(self) -> bool:
        return self.templates is None and (self.control is None or self.control.is_static)

    def render_control(self, variables: Mapping[str, Any]) -> CallControl | None:
        if self.control is None:
            return None
        try:
            return self.control.render(variables)
        except ControlRenderError as exc:
            raise ActionRenderError(str(exc)) from None

    def render(self, variables: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.templates is None:
            return self.body
        try:
            return self.templates.render(self.body, variables)
        except TemplateRenderError as exc:
            raise ActionRenderError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class ReferAction:
    """A refer; unless `before_accept`, carried out after accepting with `accept` (section 10)."""

    target: Template
    kind: ActionKind = "refer"
    before_accept: bool = True
    accept: AcceptAction | None = None
    announce: Template | None = None

    @property
    def is_static(self) -> bool:
        return (
            self.target.is_static
            and (self.accept is None or self.accept.is_static)
            and (self.announce is None or self.announce.is_static)
        )

    def render_announce(self, variables: Mapping[str, Any]) -> str | None:
        if self.announce is None:
            return None
        try:
            return self.announce.render(variables)
        except TemplateRenderError as exc:
            raise ActionRenderError(f"announce template: {exc}") from None

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


@dataclass(frozen=True, slots=True)
class SplitAction:
    """Accept with one of several profiles, chosen by weight from the call_id (A/B tests).

    The choice is a stable hash of the call_id, so a redelivery of the same call, another
    replica and a replay all pick the same profile.
    """

    choices: tuple[tuple[AcceptAction, int], ...]
    kind: ActionKind = "accept"

    def pick(self, call_id: str) -> AcceptAction:
        total = sum(weight for _, weight in self.choices)
        point = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big") % total
        for action, weight in self.choices:
            if point < weight:
                return action
            point -= weight
        raise AssertionError("weights are positive")  # pragma: no cover


Action = AcceptAction | SplitAction | ReferAction | RejectAction

# When even `on_error` cannot be rendered, the caller still gets a clear answer.
LAST_RESORT = RejectAction(503)


@dataclass(frozen=True, slots=True)
class Consult:
    """A rule's `consult: SERVICE`: the service's answer decides, or the next rule does."""

    service: str
    kind: Literal["consult"] = "consult"


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """Where one of `services` is, and how long it may take to answer."""

    url: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ProfileBody:
    """A profile's merged accept fields (what answers' overrides apply to) and its action."""

    body: Mapping[str, Any]
    max_duration_s: float | None
    action: AcceptAction


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    when: Condition
    action: Action | Consult
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
    # With `error`: the kind of the action that was chosen but could not be rendered.
    failed: ActionKind | None = None
    failed_profile: str | None = None
    consulted: tuple[ConsultNote, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    # What sip-router does on the call after the accept (section 10), rendered for it.
    control: CallControl | None = None
    # A refer carried out after an accept: the accept body sent first.
    accept_body: Mapping[str, Any] | None = None
    tools_added: tuple[str, ...] = ()
    # The API of the delivery decided (its endpoints receive the request).
    api: CallApi = "realtime"

    @property
    def verb(self) -> ActionKind:
        """The request sent on the ringing call: an after-accept refer sends an accept."""
        return "accept" if self.accept_body is not None else self.action

    @property
    def request_body(self) -> Mapping[str, Any]:
        return self.accept_body if self.accept_body is not None else self.body

    @property
    def stays_with_call(self) -> bool:
        return self.control is not None and self.control.needs_sideband

    def path(self, call_id: str) -> str:
        return f"{CALL_PATHS[self.api]}/{call_id}/{self.verb}"


@dataclass(frozen=True, slots=True)
class Consultation:
    """Evaluation stopped at a `consult` rule: ask `service`, then `Ruleset.resume` with it."""

    service: str
    rule: str
    position: int
    trace: tuple[TraceStep, ...] = ()
    consulted: tuple[ConsultNote, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)


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
    services: Mapping[str, ServiceTarget] = field(default_factory=dict)
    # The URLs of the top-level `functions` (section 10), by name.
    functions: Mapping[str, str] = field(default_factory=dict)
    # Profiles by name, for the accept answers of consulted services.
    profiles: Mapping[str, ProfileBody] = field(default_factory=dict, repr=False)
    index: RuleIndex = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", build_rule_index([r.when for r in self.rules]))

    @property
    def consult_budget_s(self) -> float:
        """The longest time consulting services can add to one decision."""
        return sum(
            self.services[rule.action.service].timeout_s
            for rule in self.rules
            if isinstance(rule.action, Consult)
        )

    def decide(
        self,
        ctx: CallContext,
        *,
        explain: bool = False,
        answers: Mapping[str, Any] | None = None,
    ) -> Decision:
        """The first rule whose `when` holds decides, else `default`.

        A `consult` rule is followed with the stubbed answer in `answers` (by service name,
        as `tests:` and `simulate` give them); without one the service is not asked and
        the next rule decides, as when a service does not answer.
        """
        step = self.evaluate(ctx, explain=explain)
        while isinstance(step, Consultation):
            stub = (answers or {}).get(step.service)
            if stub is None:
                reply = ServiceReply("not_asked", reason="no answer given for this service")
            else:
                try:
                    reply = ServiceReply("answered", answer_from_data(stub))
                except InvalidAnswer as exc:
                    reply = ServiceReply("invalid", reason=str(exc))
            step = self.resume(ctx, step, reply, explain=explain)
        return step

    def evaluate(self, ctx: CallContext, *, explain: bool = False) -> Decision | Consultation:
        """The decision, or the consultation a `consult` rule asks for before it (`resume`)."""
        return self._evaluate(ctx, explain, Consultation("", "", -1))

    def resume(
        self,
        ctx: CallContext,
        consultation: Consultation,
        reply: ServiceReply,
        *,
        explain: bool = False,
    ) -> Decision | Consultation:
        """Go on after `consultation`: follow the service's answer, else the next rule."""
        service, rule = consultation.service, consultation.rule
        answer, outcome, reason = reply.answer, reply.outcome, reply.reason
        action: Action | None = None
        if answer is not None and answer.kind == "continue":
            outcome = "continue"
        elif answer is not None:
            try:
                action = self.answer_action(answer)
            except InvalidAnswer as exc:
                outcome, reason = "invalid", str(exc)
            else:
                outcome = "answered"
        summary = answer.summary() if answer is not None else None
        note = ConsultNote(service, rule, outcome, reason, summary)
        variables = dict(consultation.variables)
        if answer is not None and outcome in ("answered", "continue"):
            variables.update(answer.variables)
        trace = consultation.trace
        if explain and trace and trace[-1].rule == rule:
            # One step per rule: its conditions, then what the service said.
            said = f"answered {answer.kind}" if answer is not None else outcome.replace("_", " ")
            detail = f": {reason}" if reason else ""
            then = "its answer decides" if action is not None else "next rule"
            why = f"{trace[-1].reason}; {service} {said}{detail}; {then}"
            trace = (*trace[:-1], TraceStep(rule, action is not None, why))
        state = Consultation(
            service, rule, consultation.position, trace, (*consultation.consulted, note), variables
        )
        if action is None:
            return self._evaluate(ctx, explain, state)
        return self._decide_with(action, rule, ctx, state)

    def _evaluate(
        self, ctx: CallContext, explain: bool, state: Consultation
    ) -> Decision | Consultation:
        """Rules after `state.position` in order; the first that holds decides or consults."""
        trace = list(state.trace)
        chosen: CompiledRule | None = None
        position = -1
        start = state.position + 1
        if explain:
            # Every rule in order, so the trace says why each earlier one did not match.
            for position in range(start, len(self.rules)):
                rule = self.rules[position]
                ok, reason = rule.when.explain(ctx)
                trace.append(TraceStep(rule.name, ok, reason))
                if ok:
                    chosen = rule
                    break
        else:
            rules = self.rules
            for position in self.index.candidates(ctx):
                if position >= start and rules[position].when.matches(ctx):
                    chosen = rules[position]
                    break
        state = Consultation("", "", position, tuple(trace), state.consulted, state.variables)
        if chosen is not None and isinstance(chosen.action, Consult):
            if explain:
                trace[-1] = TraceStep(
                    chosen.name, True, f"{trace[-1].reason}; asks {chosen.action.service}"
                )
            return Consultation(
                chosen.action.service,
                chosen.name,
                position,
                tuple(trace),
                state.consulted,
                state.variables,
            )
        action = chosen.action if chosen is not None else self.default
        assert not isinstance(action, Consult)
        return self._decide_with(action, chosen.name if chosen else None, ctx, state)

    def _decide_with(
        self, action: Action, rule: str | None, ctx: CallContext, state: Consultation
    ) -> Decision:
        try:
            return self._decision(action, rule, ctx, state, None)
        except ActionRenderError as exc:
            failed = self.fallback(ctx, rule, str(exc), state.trace, variables=state.variables)
            if isinstance(action, SplitAction):
                action = action.pick(ctx.call_id)
            profile = action.profile if isinstance(action, AcceptAction) else None
            return _with(
                failed, failed=action.kind, failed_profile=profile, consulted=state.consulted
            )

    def fallback(
        self,
        ctx: CallContext,
        rule: str | None,
        error: str,
        trace: tuple[TraceStep, ...] = (),
        *,
        variables: Mapping[str, str] | None = None,
    ) -> Decision:
        """The `on_error` decision, used when the chosen action fails."""
        state = Consultation("", "", -1, trace, (), variables or {})
        try:
            return self._decision(self.on_error, rule, ctx, state, error)
        except ActionRenderError as exc:
            return self._decision(LAST_RESORT, rule, ctx, state, f"{error}; on_error: {exc}")

    def _decision(
        self,
        action: Action,
        rule: str | None,
        ctx: CallContext,
        state: Consultation,
        error: str | None,
    ) -> Decision:
        if isinstance(action, SplitAction):
            action = action.pick(ctx.call_id)
        action = _for_api(action, ctx.api)
        variables = {} if action.is_static else self.template_variables(ctx, rule, state.variables)
        body = action.render(variables)
        accept = action if isinstance(action, AcceptAction) else None
        control: CallControl | None = None
        accept_body: Mapping[str, Any] | None = None
        if isinstance(action, ReferAction) and action.accept is not None:
            accept = action.accept
            accept_body = accept.render(variables)
            profile_control = accept.render_control(variables) or CallControl()
            refer = ReferAfterAccept(
                str(body["target_uri"]),
                action.render_announce(variables),
                self._refer_failure(ctx, rule, state.variables),
            )
            control = replace(profile_control, refer=refer)
        elif accept is not None:
            control = accept.render_control(variables)
        tools = accept.control.added_tools if accept and accept.control else ()
        return Decision(
            action=action.kind,
            body=body,
            rule=rule,
            profile=accept.profile if accept else None,
            max_duration_s=accept.max_duration_s if accept else None,
            ruleset=self.version,
            trace=state.trace,
            error=error,
            consulted=state.consulted,
            variables=state.variables,
            control=control if control is not None and control.needs_sideband else None,
            accept_body=accept_body,
            tools_added=tools,
            api=ctx.api,
        )

    def _refer_failure(
        self, ctx: CallContext, rule: str | None, decided_with: Mapping[str, str]
    ) -> ReferFailure:
        """What `on_error` does to a live call whose after-accept refer failed.

        Rendered with the variables the decision was made with (a consult's `vars`).
        """
        on_error = self.on_error
        if isinstance(on_error, SplitAction):
            on_error = on_error.pick(ctx.call_id)
        if isinstance(on_error, AcceptAction) and on_error.api != ctx.api:
            # A session of the other API cannot take the call over.
            return HANG_UP
        try:
            variables = (
                {} if on_error.is_static else self.template_variables(ctx, rule, decided_with)
            )
            if isinstance(on_error, AcceptAction):
                # The agent keeps the call with on_error's profile: its session and its
                # call control (tools) from then on.
                rendered = on_error.render(variables)
                # A Live accept body is `{"session": {...}}`: the session is what changes.
                session = rendered["session"] if on_error.api == "live" else rendered
                return ReferFailure(
                    "session",
                    session=dict(session),
                    control=on_error.render_control(variables) or CallControl(),
                )
            if isinstance(on_error, ReferAction):
                return ReferFailure("refer", target_uri=on_error.render(variables)["target_uri"])
        except ActionRenderError:
            pass
        return HANG_UP

    def template_variables(
        self, ctx: CallContext, rule: str | None, variables: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        return template_variables(
            caller=party_fields(ctx.parties.caller),
            called=party_fields(ctx.parties.called),
            call_id=ctx.call_id,
            rule=rule,
            headers=ctx.headers.as_template_dict(),
            now=ctx.at.astimezone(self.timezone),
            variables=variables or {},
        )

    def answer_action(self, answer: ServiceAnswer) -> Action:
        """The action a service's answer asks for, validated like a rule's; else InvalidAnswer."""
        if answer.kind == "reject":
            assert answer.status_code is not None
            return RejectAction(answer.status_code)
        if answer.kind == "refer":
            assert answer.target_uri is not None
            problem = check_target_uri(answer.target_uri)
            if problem is not None:
                raise InvalidAnswer(problem)
            # Taken as written: a service's text is never a template. Carried out after an
            # accept, like a rule's refer.
            return ReferAction(
                Template(answer.target_uri, None, "uri"), before_accept=False, accept=announcer()
            )
        if answer.kind != "accept" or answer.profile is None:
            raise InvalidAnswer(f"{answer.kind} is not an action")
        profile = self.profiles.get(answer.profile)
        if profile is None:
            raise InvalidAnswer(f"unknown profile '{answer.profile}'")
        if not answer.overrides:
            return profile.action
        return _overridden(answer.profile, profile, answer.overrides)


def _overridden(name: str, profile: ProfileBody, overrides: Mapping[str, Any]) -> AcceptAction:
    """`profile` with an answer's overrides, validated against the accept schema."""
    overrides = dict(overrides)
    refused = [key for key in NOT_OVERRIDABLE if key in overrides]
    if refused:
        raise InvalidAnswer(f"overrides: {refused[0]} is not allowed in overrides")
    findings: list[Finding] = []
    limit = profile.max_duration_s
    if "max_duration_s" in overrides:
        limit = max_duration(overrides.pop("max_duration_s"), findings)
    body = deep_merge(profile.body, overrides)
    api = profile.action.api
    control = profile.action.control
    accept_body: dict[str, Any] = {}
    try:
        accept_body = accept_body_of(api, body, control)
    except ValidationError as exc:
        model = LiveSessionConfig if api == "live" else SessionConfig
        findings.extend(validation_findings(exc, body, model))
    except ValueError as exc:
        raise InvalidAnswer(f"overrides: {exc}") from None
    if findings:
        first = findings[0]
        place = ".".join(str(p) for p in first.where)
        raise InvalidAnswer(f"overrides{'.' + place if place else ''}: {first.message}")
    templates = profile.action.templates
    # Live templates' paths are inside the body's `session`, where the overrides go.
    written = {"session": overrides} if api == "live" else overrides
    return AcceptAction(
        profile=name,
        body=accept_body,
        templates=templates.without_overridden(written) if templates else None,
        max_duration_s=limit,
        control=control,
        api=api,
    )


API_NAMES: Mapping[CallApi, str] = {"realtime": "Realtime", "live": "GPT-Live"}


def api_mismatch(profile: str, profile_api: CallApi, call_api: CallApi) -> str:
    """Why an accept with `profile` cannot answer a call of `call_api` (section 11)."""
    return (
        f"profile '{profile}' is for {API_NAMES[profile_api]} (api: {profile_api}), but the call"
        f" was announced on {API_NAMES[call_api]}"
    )


def _for_api(
    action: AcceptAction | ReferAction | RejectAction, api: CallApi
) -> AcceptAction | ReferAction | RejectAction:
    """`action` as carried out on a call of `api`; ActionRenderError when it cannot be.

    An accept whose profile is for the other API cannot answer the call. A refer on a Live
    call accepts first with its profile when that is a Live one, else with the built-in
    Live announcer; on a Realtime call, a Live profile cannot answer it.
    """
    if isinstance(action, AcceptAction) and action.api != api:
        raise ActionRenderError(api_mismatch(action.profile, action.api, api))
    if not isinstance(action, ReferAction) or action.accept is None or action.accept.api == api:
        return action
    if api == "live":
        return replace(action, accept=announcer("live"))
    raise ActionRenderError(api_mismatch(action.accept.profile, action.accept.api, api))


def announcer(api: CallApi = "realtime") -> AcceptAction:
    """The accept of a refer without a profile: a session that only speaks announcements."""
    return _ANNOUNCERS[api]


_ANNOUNCERS: Mapping[CallApi, AcceptAction] = {
    "realtime": AcceptAction(
        ANNOUNCER_PROFILE, {"type": "realtime", **ANNOUNCER_SESSION}, None, None
    ),
    "live": AcceptAction(
        ANNOUNCER_PROFILE, {"session": dict(LIVE_ANNOUNCER_SESSION)}, None, None, api="live"
    ),
}


def accept_body_of(
    api: CallApi, fields: Mapping[str, Any], control: ProfileControl | None
) -> dict[str, Any]:
    """The accept body of a profile's fields on `api`, with its call-control tools.

    Raises pydantic.ValidationError when the fields do not validate, ValueError when the
    tools cannot be added.
    """
    tools = control.tool_control() if control is not None else None
    if api == "live":
        live = validate_live_session(fields)
        if tools is not None:
            live = with_live_call_control_tools(live, tools)
        return build_live_accept_body(live)
    config = validate_session_config(fields)
    if tools is not None:
        config = with_call_control_tools(config, tools)
    return build_accept_body(config)


def accept_templates_of(api: CallApi, body: Mapping[str, Any]) -> AcceptTemplates | None:
    """The templates of an accept body of `api` (a Live body's are inside its `session`)."""
    if api == "live":
        session = body["session"]
        fields = [(("session", *path), text) for path, text in live_templated_fields(session)]
        return compile_accept_templates(body, fields)
    return compile_accept_templates(body)


def _with(decision: Decision, **changes: Any) -> Decision:
    return replace(decision, **changes)
