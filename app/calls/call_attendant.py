"""The calls this replica stays with after the accept: start, take over, record.

After a successful accept whose decision asks for it, the call is registered with its
ownership lease and its driver starts in `ActiveCalls`; the webhook does not wait for it.
Calls whose owner died are taken over by the scan, with what they remember. When a call
ends, its later life (end, transfer, transcript) joins its entry in the call log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol, get_args

from redis.exceptions import RedisError
from websockets.client import backoff

from app.call_api import CallApi
from app.calls.active_calls import ActiveCalls
from app.calls.call_control import CallControl, control_from_json, control_to_json
from app.calls.call_ownership import (
    LEASE_TTL_S,
    CallMemory,
    CallOwnership,
    CallTicket,
    LeaseKeeper,
    take_over_orphans,
)
from app.calls.function_requests import CallFacts, FunctionRequester
from app.calls.sideband_connection import (
    DEFAULT_ACTIVE_FOR_S,
    CallActions,
    CallOutcome,
    SidebandDriver,
    sideband_url,
)
from app.metrics import Metrics
from app.store import StoreUnavailable
from app.webhooks_first import WebhooksFirst

log = logging.getLogger("sip_router.sideband")
RECORD_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)


class AcceptedDecision(Protocol):
    """What a call's ticket takes from the decision that accepted it (the rules engine's
    `Decision` has all of it, and the calls need nothing else of the rules)."""

    @property
    def rule(self) -> str | None: ...
    @property
    def profile(self) -> str | None: ...
    @property
    def max_duration_s(self) -> float | None: ...
    @property
    def control(self) -> CallControl | None: ...
    @property
    def api(self) -> CallApi: ...


class CallEndLog(Protocol):
    """Where a call's later life joins its entry: the store's call log (app.store.CallLog),
    or the service's process seen from the calls process (app.calls.calls_process)."""

    async def add_to_call(self, call_id: str, fields: Mapping[str, Any]) -> bool: ...


def replica_id() -> str:
    """Who owns a call's lease: this process, told apart from its restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class CallAttendant:
    """Starts, takes over and records the calls this replica stays with."""

    def __init__(
        self,
        *,
        active: ActiveCalls,
        ownership: CallOwnership,
        actions: CallActions,
        functions: FunctionRequester,
        call_log: CallEndLog,
        base_url: str,
        api_key: str,
        metrics: Metrics | None = None,
        keep_transcripts: bool = False,
        owner: str | None = None,
        wall_clock: Callable[[], float] = time.time,
        reconnect_delays: Callable[[], Generator[float]] = backoff,
        webhooks: WebhooksFirst | None = None,
    ) -> None:
        self.active = active
        self.ownership = ownership
        self.owner = owner or replica_id()
        # One renewal loop for the leases of every call this replica drives.
        self.leases = LeaseKeeper(ownership, self.owner)
        self._actions = actions
        self._functions = functions
        self._call_log = call_log
        self._base_url = base_url
        self._api_key = api_key
        self._metrics = metrics
        self._keep_transcripts = keep_transcripts
        self._wall_clock = wall_clock
        self._reconnect_delays = reconnect_delays
        self._webhooks = webhooks
        self._scan: asyncio.Task[None] | None = None
        self._stop_scan = asyncio.Event()

    async def start(self) -> None:
        """Start holding calls: their task group and the scan for calls without an owner."""
        await self.active.__aenter__()
        self._scan = asyncio.create_task(self.scan_for_orphans(self._stop_scan))

    async def stop(self) -> int:
        """Hand every call over (their leases released, another replica takes them);
        returns how many there were."""
        # Stopped between scans: a Redis command cut short by a cancel may never answer.
        if self._scan is not None:
            self._stop_scan.set()
            await asyncio.wait({self._scan}, timeout=5.0)
            self._scan.cancel()
        handed_over = len(self.active)
        await self.active.__aexit__(None, None, None)
        return handed_over

    async def stay_with(
        self,
        call_id: str,
        decision: AcceptedDecision,
        caller: Mapping[str, Any],
        called: Mapping[str, Any],
    ) -> None:
        """Start driving a call just accepted for `decision`; returns once it is started."""
        made = call_ticket(
            call_id,
            decision,
            caller,
            called,
            now=self._wall_clock(),
            keep_transcripts=self._keep_transcripts,
        )
        if made is not None:
            await self.attend(*made)

    async def attend(self, ticket: CallTicket, control: CallControl | None = None) -> None:
        """Register and start driving a call just accepted (its control read from the ticket
        when not given)."""
        if control is None:
            control = _read_control(ticket, ticket.control)
            if control is None:
                return
        call_id = ticket.call_id
        try:
            registered = await self.ownership.register(ticket, self.owner, LEASE_TTL_S)
        except (RedisError, OSError):
            # Driven without a lease rather than not at all: the caller keeps the greeting,
            # transfers and functions, but no other replica can take this call over.
            log.error("could not register a call's lease", extra={"fields": {"call_id": call_id}})
            self._start(ticket, control, CallMemory(), leased=False)
            return
        if not registered:
            # Another replica holds this call's lease (a repeated webhook): it drives the call.
            log.warning(
                "the call is owned by another replica",
                extra={"fields": {"call_id": call_id}},
            )
            return
        self._start(ticket, control, CallMemory())

    def take_over(self, ticket: CallTicket, memory: CallMemory) -> bool:
        """Drive a call whose owner died, with what it remembers (and its control as it was
        last: the one it switched to, if it did). False for a ticket no replica can drive."""
        control = _read_control(
            ticket, memory.control if memory.control is not None else ticket.control
        )
        if control is None:
            return False
        if ticket.api not in get_args(CallApi):
            log.error("a call ticket of an unknown API", extra={"fields": _ids(ticket)})
            return False
        self._start(ticket, control, memory)
        return True

    async def scan_for_orphans(self, stop: asyncio.Event) -> None:
        """Take over calls without an owner until `stop` is set."""
        await take_over_orphans(self.ownership, self.owner, self.take_over, stop=stop)

    def _start(
        self, ticket: CallTicket, control: CallControl, memory: CallMemory, *, leased: bool = True
    ) -> None:
        # The ticket's control (JSON) is read only by a replica taking the call over.
        drive = functools.partial(
            self._drive, replace(ticket, control={}), control, memory, leased=leased
        )
        if self.active.start(ticket.call_id, drive, api=ticket.api):
            log.info("call_attached", extra={"fields": _ids(ticket)})

    async def _drive(
        self, ticket: CallTicket, control: CallControl, memory: CallMemory, *, leased: bool
    ) -> CallOutcome | None:
        """The call's whole life on this replica, in the call's one task (ActiveCalls)."""
        call_id = ticket.call_id
        driver = SidebandDriver(
            facts=CallFacts(call_id, ticket.caller, ticket.called, ticket.rule, ticket.profile),
            control=control,
            url=sideband_url(self._base_url, call_id, ticket.api),
            api_key=self._api_key,
            actions=self._actions,
            functions=self._functions,
            metrics=self._metrics,
            memory=self.ownership,
            api=ticket.api,
            active_for_s=max(1.0, ticket.active_until - self._wall_clock()),
            answered=memory.answered,
            greeted=memory.greeted,
            lost=memory.lost,
            reconnect_delays=self._reconnect_delays,
            webhooks=self._webhooks,
        )
        outcome: CallOutcome | None
        if leased:
            outcome = await self.leases.drive(call_id, driver.run)
        else:
            outcome = await driver.run()
        if outcome is not None:  # None: the lease was lost, another replica records it
            await self._record_end(ticket, control, outcome)
        return outcome

    async def _record_end(
        self, ticket: CallTicket, control: CallControl, outcome: CallOutcome
    ) -> None:
        duration = (
            outcome.ended_at - ticket.accepted_at if ticket.accepted_at else outcome.duration_s
        )
        fields: dict[str, Any] = {
            "ended_at": _iso(outcome.ended_at),
            "duration_s": round(max(0.0, duration), 3),
            "end_reason": outcome.end_reason,
        }
        if outcome.transfer is not None:
            fields["transfer"] = {
                "target_uri": outcome.transfer.target_uri,
                "status": outcome.transfer.status,
                "at": _iso(outcome.wall_time(outcome.transfer.at)),
            }
        if outcome.events:
            fields["events"] = [
                {**event, "at": _iso(outcome.wall_time(event["at"]))} for event in outcome.events
            ]
        if control.transcript:
            fields["transcript"] = [
                {"role": turn.role, "text": turn.text, "at": _iso(outcome.wall_time(turn.at))}
                for turn in outcome.transcript
            ]
        try:
            # The call's record is written just after the webhook's answer: a call that
            # ends at once may be ahead of it.
            for delay_s in RECORD_RETRY_DELAYS_S:
                if await self._call_log.add_to_call(ticket.call_id, fields):
                    break
                await asyncio.sleep(delay_s)
            else:
                log.warning("the call's record is gone", extra={"fields": _ids(ticket)})
        except StoreUnavailable:
            log.warning("could not record a call's end", extra={"fields": _ids(ticket)})
        summary = {"duration_s": fields["duration_s"], "end_reason": outcome.end_reason}
        log.info("call_recorded", extra={"fields": {**_ids(ticket), **summary}})


def call_ticket(
    call_id: str,
    decision: AcceptedDecision,
    caller: Mapping[str, Any],
    called: Mapping[str, Any],
    *,
    now: float,
    keep_transcripts: bool,
) -> tuple[CallTicket, CallControl] | None:
    """The ticket of a call just accepted for `decision` and what sip-router does on it, or
    None when the decision does not stay with the call."""
    control = decision.control
    if control is None or not control.needs_sideband:
        return None
    if not keep_transcripts:
        control = replace(control, transcript=False)
    ticket = CallTicket(
        call_id,
        decision.rule or "default",
        decision.profile or "",
        dict(caller),
        dict(called),
        active_until=now + (decision.max_duration_s or DEFAULT_ACTIVE_FOR_S),
        control=control_to_json(control),
        accepted_at=now,
        api=decision.api,
    )
    return ticket, control


def _read_control(ticket: CallTicket, written: Mapping[str, Any]) -> CallControl | None:
    """The call control `written` for `ticket` (control_to_json), or None (logged) when it
    cannot be read."""
    try:
        return control_from_json(written)
    except (ValueError, TypeError, KeyError, AttributeError):
        log.error("a call ticket without call control", extra={"fields": _ids(ticket)})
        return None


def _ids(ticket: CallTicket) -> dict[str, Any]:
    return {
        "call_id": ticket.call_id,
        "rule": ticket.rule,
        "profile": ticket.profile,
        "api": ticket.api,
    }


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat()
