"""One webhook delivery from raw bytes to an answer: verify, claim, decide, act, record.

raw body -> verify -> parse -> stale? -> claim (webhook-id, call_id, and the phone call's
SIP Call-ID when given) -> identity ->
decide at `created_at` -> record the decision -> act (deadline, retries, on_error) ->
record the outcome -> answer. The webhook is answered after the action, so a crash leads
to a redelivery; a claim that finds a recorded decision without an outcome sends that
same request again instead of deciding (app.recorded_decisions).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from app.call_api import CallApi
from app.errors import DeliveryError, ServiceUnavailable, StoreDown
from app.metrics import Metrics
from app.openai_calls import ActionResult, OpenAICallsClient, Verb
from app.phone_numbers import mask_number
from app.recorded_calls import compact_trace, decision_fields, kept_inputs
from app.recorded_decisions import decision_from_record, decision_record, resent_outcome
from app.rules.call_context import CallContext
from app.rules.profile_control import control_summary
from app.rules.ruleset import Decision, Ruleset, party_fields
from app.rules_reloading import RulesHolder
from app.service_consultation import ServiceConsultant
from app.sip_call_key import sip_call_key
from app.sip_identity import Party, SipHeaders, parse_parties
from app.store import Claim, ClaimResult, Store, StoreUnavailable
from app.webhook_event import IncomingCall, OtherEvent, parse_event
from app.webhook_verification import WebhookVerifier
from app.webhooks_first import WebhooksFirst

log = logging.getLogger("sip_router.webhook")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    status_code: int
    body: dict[str, Any]


@dataclass
class _Record:
    """What one delivery did, for the log line, the call log and the metrics."""

    outcome: str
    webhook_id: str | None = None
    call_id: str | None = None
    # Which API announced the call, and its `sip_media_security` (GPT-Live) when known.
    api: CallApi | None = None
    media_security: str | None = None
    caller: str | None = None
    called: str | None = None
    rule: str | None = None
    action: str | None = None
    upstream_status: int | None = None
    ruleset: str | None = None
    detail: str | None = None
    # The action the rules chose (counted as the decision) and the on_error one that ran.
    chosen: str | None = None
    chosen_profile: str | None = None
    fallback: str | None = None
    # What each service a `consult` rule asked answered (no numbers).
    consulted: list[dict[str, Any]] | None = None
    # What the recorded action asked for: `profile`, `status_code` or `target_uri`.
    request: dict[str, Any] = field(default_factory=dict)
    failed_action: str | None = None
    failure: str | None = None
    store_down: bool = False
    # For the call's side record (app.recorded_calls): inputs, decision, upstream requests.
    inputs: dict[str, Any] | None = None
    decided: dict[str, Any] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Who called whom, as function requests and the call's ticket tell it (unmasked).
    parties: tuple[dict[str, Any], dict[str, Any]] | None = None
    # What sip-router does on the call after its accept (tools added, greeting, targets).
    after_accept: dict[str, Any] | None = None


class CallKeeper(Protocol):
    """Stays with calls after the accept (app.calls.call_attendant.CallAttendant)."""

    async def stay_with(
        self,
        call_id: str,
        decision: Decision,
        caller: Mapping[str, Any],
        called: Mapping[str, Any],
    ) -> None: ...


class _LeaseLost(Exception):
    """Another delivery owns the call now: this one must send nothing."""


@dataclass(frozen=True)
class ProcessingOptions:
    dry_run: bool
    max_event_age_s: float
    action_deadline_s: float
    mask_numbers: bool
    keep_call_inputs: bool = True


class CallProcessor:
    """Turns deliveries into exactly one action per call; owns in-flight tracking."""

    def __init__(
        self,
        *,
        verifier: WebhookVerifier,
        rules: RulesHolder,
        store: Store,
        calls: OpenAICallsClient,
        metrics: Metrics,
        options: ProcessingOptions,
        consultant: ServiceConsultant,
        wall_clock: Callable[[], float] = time.time,
        keeper: CallKeeper | None = None,
        webhooks: WebhooksFirst | None = None,
    ) -> None:
        self._verifier = verifier
        self._consultant = consultant
        self._rules = rules
        self._store = store
        self._calls = calls
        self._metrics = metrics
        self._options = options
        self._wall_clock = wall_clock
        self._keeper = keeper
        # The webhooks in flight, which the calls' work steps aside for.
        self._webhooks = webhooks if webhooks is not None else WebhooksFirst()
        self.draining = False
        # Pending max_duration_s hang-ups: a timer handle each (a task only once due), so
        # thousands of long calls cost little memory.
        self._hangup_timers: dict[str, asyncio.TimerHandle] = {}
        self._hangups: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return self._webhooks.in_flight

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> WebhookAnswer:
        """Process one delivery; every outcome is an answer, nothing here raises for input."""
        started = time.perf_counter()
        self._webhooks.started()
        record = _Record(outcome="error")
        try:
            answer = await self._process(body, headers, record)
        except DeliveryError as exc:
            record.outcome, record.detail = exc.outcome, str(exc)
            answer = WebhookAnswer(exc.status_code, {"status": "rejected", "error": str(exc)})
        except ServiceUnavailable as exc:
            record.outcome, record.detail = exc.outcome, str(exc)
            record.store_down = isinstance(exc, StoreDown)
            answer = WebhookAnswer(503, {"status": "unavailable", "error": str(exc)})
        finally:
            self._webhooks.finished()
        elapsed = time.perf_counter() - started
        await self._record(record, answer, elapsed)
        return answer

    async def refuse(self, error: DeliveryError) -> WebhookAnswer:
        """Answer, count and log a delivery refused before its body was read (too large)."""
        record = _Record(outcome=error.outcome, detail=str(error))
        answer = WebhookAnswer(error.status_code, {"status": "rejected", "error": str(error)})
        await self._record(record, answer, 0.0)
        return answer

    async def _process(
        self, body: bytes, headers: Mapping[str, str], record: _Record
    ) -> WebhookAnswer:
        if self.draining:
            raise ServiceUnavailable("shutting down; deliver again")
        delivery = self._verifier.verify(body, headers, now=self._wall_clock())
        record.webhook_id = delivery.webhook_id
        event = parse_event(delivery.body)
        if isinstance(event, OtherEvent):
            record.outcome = "ignored"
            record.detail = event.type if event.detail is None else f"{event.type}: {event.detail}"
            ignored: dict[str, Any] = {"status": "ignored", "call_id": None, "action": None}
            if event.detail is not None:
                ignored["detail"] = event.detail
            return WebhookAnswer(200, ignored)
        record.call_id = event.call_id
        record.api, record.media_security = event.api, event.media_security
        ruleset = self._rules.current
        if ruleset is None:
            raise ServiceUnavailable("routing rules are not loaded")
        age = self._wall_clock() - event.created_at
        if age > self._options.max_event_age_s:
            record.outcome, record.detail = "stale", f"event is {age:.0f} s old"
            return WebhookAnswer(200, {"status": "stale", "call_id": event.call_id, "action": None})
        claim = await self._claim(
            delivery.webhook_id,
            event.call_id,
            sip_call_key(event.sip_headers),
            ruleset.consult_budget_s,
        )
        if claim.result in (
            ClaimResult.DUPLICATE_DONE,
            ClaimResult.CALL_DONE,
            ClaimResult.SIP_CALL_DONE,
        ):
            done = claim.outcome or {}
            record.outcome = "duplicate"
            record.action = done.get("action")
            if claim.result is ClaimResult.SIP_CALL_DONE:
                record.detail = "the phone call was decided through its other announcement"
            return WebhookAnswer(
                200, {"status": "duplicate", "call_id": event.call_id, "action": done.get("action")}
            )
        if claim.result is ClaimResult.IN_FLIGHT:
            record.outcome = "in_flight"
            return WebhookAnswer(
                409, {"status": "in_flight", "call_id": event.call_id, "action": None}
            )
        return await self._act_once(claim, event, ruleset, record)

    async def _claim(
        self, webhook_id: str, call_id: str, sip_call: str | None, consult_s: float
    ) -> Claim:
        # The lease outlives the services consulted, the action and its on_error.
        lease_s = consult_s + 2 * self._options.action_deadline_s + 10
        try:
            return await self._store.claim(webhook_id, call_id, lease_s, sip_call)
        except StoreUnavailable:
            raise StoreDown("the shared store does not answer") from None

    async def _act_once(
        self, claim: Claim, event: IncomingCall, ruleset: Ruleset, record: _Record
    ) -> WebhookAnswer:
        try:
            if claim.decision is not None:
                status, decision, result = await self._send_recorded(
                    claim.decision, event, ruleset, record
                )
            else:
                status, decision, result = await self._decide_and_act(claim, event, ruleset, record)
        except _LeaseLost:
            record.outcome = "in_flight"
            return WebhookAnswer(
                409, {"status": "in_flight", "call_id": event.call_id, "action": None}
            )
        except BaseException:
            # A request may be on its way: the next owner sends the recorded one again.
            await self._release_quietly(claim, keep_decision=True)
            raise
        action = decision.action if decision is not None else None
        if status in ("failed", "retry"):
            # No effect upstream: a redelivery decides again, or (`retry`) sends the
            # recorded request again.
            await self._release_quietly(claim, keep_decision=status == "retry")
            return WebhookAnswer(
                503, {"status": "failed", "call_id": event.call_id, "action": action}
            )
        outcome = {"action": action, "status": status}
        try:
            await self._store.finish(claim, outcome)
        except StoreUnavailable:
            # The action happened; a redelivery after the lease expired finds the recorded
            # decision and sends that same request again, which OpenAI answers as decided.
            log.error("could not record a finished call in the shared store")
        if status == "ok" and decision and decision.max_duration_s and result is not None:
            self._schedule_hangup(event.call_id, decision.max_duration_s, decision.api)
        if status in ("ok", "on_error") and decision is not None and result is not None:
            await self._stay_with(event.call_id, decision, record)
        return WebhookAnswer(
            200,
            {
                "status": "dry_run" if self._options.dry_run else status_text(status),
                "call_id": event.call_id,
                "action": action,
            },
        )

    def _context(self, event: IncomingCall, ruleset: Ruleset, record: _Record) -> CallContext:
        headers = SipHeaders.from_pairs(event.sip_headers)
        parties = parse_parties(headers, ruleset.region or "ZZ")
        record.caller = self._shown(parties.caller)
        record.called = self._shown(parties.called)
        if self._options.keep_call_inputs:
            record.inputs = kept_inputs(
                event.created_at,
                event.sip_headers,
                api=event.api,
                media_security=event.media_security,
            )
        record.parties = (party_fields(parties.caller), party_fields(parties.called))
        return CallContext(
            call_id=event.call_id,
            parties=parties,
            headers=headers,
            at=datetime.fromtimestamp(event.created_at, tz=UTC),
            api=event.api,
            media_security=event.media_security,
        )

    async def _send(
        self, claim: Claim, call_id: str, decision: Decision, record: _Record
    ) -> ActionResult:
        """Record the decision under the call's lease, then send its request."""
        try:
            recorded = await self._store.record_decision(claim, decision_record(decision))
        except StoreUnavailable:
            raise StoreDown("the shared store does not answer") from None
        if not recorded:
            raise _LeaseLost
        return await self._perform(decision, call_id, record)

    async def _perform(self, decision: Decision, call_id: str, record: _Record) -> ActionResult:
        """Send a decision's request upstream, on the API of the delivery it decided; its
        verb, status and latency go to the call's record."""
        started = time.perf_counter()
        verb: Verb = decision.verb
        result = await self._calls.perform(verb, call_id, decision.request_body, api=decision.api)
        record.requests.append(
            {
                "verb": verb,
                "status": result.status,
                "outcome": result.outcome,
                "attempts": result.attempts,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        )
        return result

    async def _stay_with(self, call_id: str, decision: Decision, record: _Record) -> None:
        """Hand an accepted call whose profile asks for it to the keeper (the webhook does not
        wait for the call, only for its start)."""
        if self._keeper is None or not decision.stays_with_call or decision.verb != "accept":
            return
        caller, called = record.parties or ({}, {})
        try:
            await self._keeper.stay_with(call_id, decision, caller, called)
        except Exception:  # the accept is done; the webhook is answered regardless
            fields = {"call_id": call_id}
            log.exception("could not stay with an accepted call", extra={"fields": fields})

    async def _send_recorded(
        self, recorded: dict[str, Any], event: IncomingCall, ruleset: Ruleset, record: _Record
    ) -> tuple[str, Decision | None, ActionResult | None]:
        """Send again exactly the request an earlier delivery recorded; decide nothing."""
        ctx = self._context(event, ruleset, record)
        record.detail = "sent again the request recorded by an earlier delivery"
        try:
            decision = decision_from_record(recorded)
        except ValueError:
            # What was sent cannot be known: nothing may contradict it.
            record.outcome, record.failure = "unknown", "unreadable recorded decision"
            return "unknown", None, None
        record.ruleset = decision.ruleset
        self._note(record, decision)
        if self._options.dry_run:
            record.outcome = "dry_run"
            return "ok", decision, None
        if decision.control is None:
            decision = _with_call_control(decision, ruleset, ctx)
        result = await self._perform(decision, event.call_id, record)
        record.upstream_status = result.status
        status = resent_outcome(result)
        if status is None:
            record.outcome, record.failure = "failed", result.detail
            return "retry", decision, result
        if status == "ok" and decision.error is not None:
            status = "on_error"
        if status != "ok":
            record.failure = result.detail
        record.outcome = status_text(status)
        return status, decision, result

    async def _decide_and_act(
        self, claim: Claim, event: IncomingCall, ruleset: Ruleset, record: _Record
    ) -> tuple[str, Decision, ActionResult | None]:
        ctx = self._context(event, ruleset, record)
        record.ruleset = ruleset.version
        decision = await self._consultant.decide(ruleset, ctx)
        if decision.consulted:
            record.consulted = [note.as_record() for note in decision.consulted]
        if decision.error is not None:
            # The chosen action could not be rendered; the decision is already on_error's.
            record.chosen = decision.failed or chosen_action(ruleset, decision.rule)
            record.chosen_profile = decision.failed_profile
            record.fallback = decision.action
            record.failed_action, record.failure = record.chosen, decision.error
        else:
            record.chosen = decision.action
            record.chosen_profile = decision.profile
        record.decided = {
            **decision_fields(decision, record.chosen),
            "trace": compact_trace(ruleset, ctx, decision.rule, mask=self._options.mask_numbers),
        }
        self._note(record, decision)
        if self._options.dry_run:
            record.outcome = "dry_run"
            return "ok", decision, None
        result = await self._send(claim, event.call_id, decision, record)
        record.upstream_status = result.status
        if result.outcome != "failed":
            # A decision that already is `on_error` (its action could not be rendered) says so.
            status = "on_error" if result.outcome == "ok" and decision.error else result.outcome
            record.outcome = status_text(status)
            if result.outcome in ("unknown", "gone", "duplicate"):
                record.failure = result.detail
            return status, decision, result
        # The action had no effect upstream: run on_error.
        record.failed_action, record.failure = decision.action, result.detail
        fallback = ruleset.fallback(
            ctx,
            decision.rule,
            f"{decision.action} failed: {result.detail}",
            variables=decision.variables,
        )
        record.fallback = fallback.action
        self._note(record, fallback)
        second = await self._send(claim, event.call_id, fallback, record)
        record.upstream_status = second.status
        if second.outcome == "failed":
            record.outcome = "failed"
            record.failure = f"{result.detail}; on_error {fallback.action}: {second.detail}"
            return "failed", fallback, second
        if second.outcome != "ok":
            record.failure = f"{result.detail}; on_error {fallback.action}: {second.detail}"
        record.outcome = "on_error" if second.outcome == "ok" else status_text(second.outcome)
        return ("on_error" if second.outcome == "ok" else second.outcome), fallback, second

    def _note(self, record: _Record, decision: Decision) -> None:
        """The action about to be sent becomes the one the record shows."""
        record.rule = decision.rule or "default"
        record.action = decision.action
        record.request = requested(decision)
        # Shown only in a dry run's log line (what would happen after the accept).
        record.after_accept = (
            control_summary(decision.control, decision.tools_added)
            if decision.control is not None and self._options.dry_run
            else None
        )

    def _masked(self, shown: dict[str, Any] | None) -> Any:
        """`shown` with the phone numbers in its texts masked, as the log masks numbers."""
        if shown is None or not self._options.mask_numbers:
            return shown
        text = json.dumps(shown, ensure_ascii=False)
        return json.loads(_E164.sub(lambda m: mask_number(m.group()), text))

    def _shown(self, party: Party) -> str:
        if party.e164 is None:
            return "anonymous"
        return mask_number(party.e164) if self._options.mask_numbers else party.e164

    async def _release_quietly(self, claim: Claim, *, keep_decision: bool = False) -> None:
        try:
            await self._store.release(claim, keep_decision=keep_decision)
        except StoreUnavailable:
            log.error("could not release a lease; it expires by itself")

    def _schedule_hangup(self, call_id: str, after_s: float, api: CallApi) -> None:
        loop = asyncio.get_running_loop()
        self._hangup_timers[call_id] = loop.call_later(after_s, self._hangup_due, call_id, api)

    def _hangup_due(self, call_id: str, api: CallApi) -> None:
        self._hangup_timers.pop(call_id, None)
        task = asyncio.create_task(self._hangup_now(call_id, api))
        self._hangups.add(task)
        task.add_done_callback(self._hangups.discard)

    async def _hangup_now(self, call_id: str, api: CallApi) -> None:
        result = await self._calls.perform("hangup", call_id, None, api=api)
        log.info(
            "max_duration_s reached",
            extra={
                "fields": {
                    "call_id": call_id,
                    "api": api,
                    "outcome": result.outcome,
                    "status": result.status,
                }
            },
        )

    async def hangup(self, call_id: str, api: CallApi | None = None) -> ActionResult:
        """Hang up an active call now (admin endpoint), on `api` or the one that announced it."""
        api = api or await self.call_api(call_id)
        return await self._calls.perform("hangup", call_id, None, api=api)

    async def call_api(self, call_id: str) -> CallApi:
        """The API a call was announced on, as its call log record says; without a record
        (or a store that does not answer), a `live_` id is taken for a GPT-Live session."""
        try:
            kept = await self._store.call_record(call_id)
        except StoreUnavailable:
            kept = None
        api = kept.get("api") if kept is not None else None
        if api in ("realtime", "live"):
            return cast(CallApi, api)
        return "live" if call_id.startswith("live_") else "realtime"

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new deliveries and wait for in-flight ones; True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._webhooks.idle(), timeout_s)
        except TimeoutError:
            return False
        return True

    def cancel_scheduled_hangups(self) -> int:
        """Drop pending hang-ups (shutdown); returns how many were dropped."""
        dropped = len(self._hangup_timers) + len(self._hangups)
        for timer in self._hangup_timers.values():
            timer.cancel()
        self._hangup_timers.clear()
        for task in self._hangups:
            task.cancel()
        return dropped

    async def _record(self, record: _Record, answer: WebhookAnswer, elapsed_s: float) -> None:
        latency_ms = round(elapsed_s * 1000, 2)
        decided = {
            "call_id": record.call_id,
            "api": record.api,
            "media_security": record.media_security,
            "caller": record.caller,
            "called": record.called,
            "rule": record.rule,
            "action": record.action,
            "outcome": record.outcome,
            "latency_ms": latency_ms,
            "ruleset": record.ruleset,
        }
        why = {
            "failed_action": record.failed_action,
            "failure": record.failure,
            "consulted": record.consulted,
        }
        self._metrics.webhook_handled(record.outcome)
        if record.action is not None and record.outcome not in ("duplicate", "in_flight"):
            self._count_decision(record)
            self._metrics.decision_seconds.observe(elapsed_s)
            now = datetime.fromtimestamp(self._wall_clock(), tz=UTC).isoformat()
            entry = {"time": now, **decided, **record.request, **why}
            entry = {k: v for k, v in entry.items() if v is not None}
            try:
                await self._store.append(entry, call_record(entry, record))
            except StoreUnavailable:
                log.warning("could not append to the call log")
        # A store that is down refuses every call until it is back: an operator must act.
        failed = record.store_down or record.outcome in ("unknown", "failed")
        level = logging.ERROR if failed else logging.INFO
        if not log.isEnabledFor(level):
            return
        fields = {
            "webhook_id": record.webhook_id,
            **decided,
            "http_status": answer.status_code,
            "upstream_status": record.upstream_status,
            "dry_run": self._options.dry_run or None,
            # In a dry run, what would happen on the call after the accept; sent nothing.
            "after_accept": self._masked(record.after_accept),
            "detail": record.detail,
            **why,
        }
        log.log(
            level, "webhook", extra={"fields": {k: v for k, v in fields.items() if v is not None}}
        )

    def _count_decision(self, record: _Record) -> None:
        """One decision per call: a delivery released for redelivery (`failed`) decides again."""
        if record.outcome == "failed" or record.chosen is None or record.rule is None:
            return
        self._metrics.decided(record.rule, record.chosen, record.chosen_profile)
        if record.fallback is not None:
            self._metrics.fell_back(record.rule, record.fallback)


def call_record(entry: Mapping[str, Any], record: _Record) -> dict[str, Any] | None:
    """The side record of a call log entry (app.recorded_calls), None without a call id."""
    if record.call_id is None:
        return None
    kept: dict[str, Any] = {"call_id": record.call_id, "entry": dict(entry)}
    if record.api is not None:
        kept["api"] = record.api
    if record.media_security is not None:
        kept["media_security"] = record.media_security
    if record.decided is not None:
        kept["decision"] = record.decided
    kept["requests"] = record.requests
    if record.inputs is not None:
        kept["inputs"] = record.inputs
    return kept


def _with_call_control(recorded: Decision, ruleset: Ruleset, ctx: CallContext) -> Decision:
    """A recorded decision with what to do after its accept, when the same rules decide the
    same request again: for a decision recorded without its call control (by a version
    before records kept it, during a rolling update)."""
    if recorded.verb != "accept" or ruleset.version != recorded.ruleset:
        return recorded
    again = ruleset.decide(ctx)
    if (again.rule, dict(again.request_body)) != (recorded.rule, dict(recorded.request_body)):
        return recorded
    return replace(recorded, control=again.control, tools_added=again.tools_added)


def chosen_action(ruleset: Ruleset, rule: str | None) -> str:
    """The kind of action `rule` (None: the default) asks for."""
    for compiled in ruleset.rules:
        if compiled.name == rule:
            return compiled.action.kind
    return ruleset.default.kind


def requested(decision: Decision) -> dict[str, Any]:
    """What the call log shows of a decision's request: the profile, status code or target."""
    if decision.action == "accept":
        return {"profile": decision.profile}
    if decision.action == "reject":
        return {"status_code": decision.body.get("status_code")}
    return {"target_uri": decision.body.get("target_uri")}


def status_text(outcome: str) -> str:
    """The webhook answer's `status` for an action outcome."""
    return {"ok": "processed"}.get(outcome, outcome)
