"""The thin driver of one call: owns its sideband WebSocket and carries out its commands.

It feeds what the sideband, the call endpoints, the company's functions and its timers say
to the call's `CallSession`, one event at a time, and does what the session asks. The
socket reconnects with backoff (`async for ws in connect(...)`) while the call may still be
active; every task of the call lives in the call's own task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import backoff
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.call_api import CallApi
from app.calls.call_control import CallControl, control_to_json
from app.calls.call_session import CallSession
from app.calls.function_requests import CallFacts, FunctionRequester, FunctionResult
from app.calls.live_session import LiveCallSession
from app.calls.session_events import (
    ActionFinished,
    ActionOutcome,
    CallFunction,
    CancelTimer,
    Command,
    Event,
    Finish,
    FunctionAnswered,
    Note,
    PerformAction,
    SendEvent,
    SetTimer,
    SidebandClosed,
    SidebandMessage,
    SidebandOpened,
    TimerFired,
    TransferRecord,
    Turn,
)
from app.metrics import Metrics
from app.openai_calls import ActionResult, Verb
from app.webhooks_first import WebhooksFirst

log = logging.getLogger("sip_router.sideband")

# A call may be active for `max_duration_s`, else for 2 hours.
DEFAULT_ACTIVE_FOR_S = 2 * 3600.0
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_UNSENT_EVENTS = 100
INBOX_SIZE = 256
# What the call's record keeps of its sideband events (greeting, function calls, transfer).
MAX_RECORDED_EVENTS = 200
_RECORDED_NOTES = ("greeting", "function_call", "transfer", "refer_rule_failed", "hangup_failed")
OPEN_TIMEOUT_S = 10.0


def sideband_url(base_url: str, call_id: str, api: CallApi = "realtime") -> str:
    """`OPENAI_BASE_URL` with https->wss, http->ws, then `/realtime?call_id={call_id}`
    (Realtime) or `/live/sessions/{session_id}/attach` (GPT-Live)."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme)
    if scheme is None:
        raise ValueError("the base URL must be http:// or https://")
    if api == "live":
        path = f"{parts.path}/live/sessions/{quote(call_id, safe='')}/attach"
        return urlunsplit((scheme, parts.netloc, path, "", ""))
    query = "call_id=" + quote(call_id, safe="")
    return urlunsplit((scheme, parts.netloc, parts.path + "/realtime", query, ""))


class CallActions(Protocol):
    """The call endpoints (app/openai_calls.py's OpenAICallsClient)."""

    async def perform(
        self,
        verb: Verb,
        call_id: str,
        body: Mapping[str, Any] | None,
        *,
        api: CallApi = "realtime",
    ) -> ActionResult: ...


class CallStateMachine(Protocol):
    """One call's pure state machine: `CallSession` (Realtime) or `LiveCallSession`."""

    control: CallControl
    answered: set[str]
    greeted: bool
    transfer: TransferRecord | None
    ended_at: float | None
    end_reason: str | None

    @property
    def ended(self) -> bool: ...

    @property
    def asking(self) -> frozenset[str]: ...

    @property
    def transcript(self) -> Sequence[Turn]: ...

    def handle(self, event: Event) -> list[Command]: ...


class CallMemoryWriter(Protocol):
    """Where a call's memory is kept for a replica that takes it over (call_ownership.py)."""

    async def record_answered(self, call_id: str, function_call_id: str) -> None: ...

    async def record_asking(self, call_id: str, function_call_id: str) -> None: ...

    async def mark_greeted(self, call_id: str) -> None: ...

    async def record_control(self, call_id: str, control: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How sip-router's time with a call ended, for the call log."""

    call_id: str
    end_reason: str
    ended_at: float
    duration_s: float
    transfer: TransferRecord | None
    transcript: tuple[Turn, ...]
    answered: frozenset[str]
    refer_rule_failed: bool
    # Add to a time of the call's clock (transfer.at, a turn's at) to get the wall clock.
    clock_offset: float = 0.0
    # The call's sideband events as the call's record shows them (`at` on the call's clock).
    events: tuple[dict[str, Any], ...] = ()

    def wall_time(self, at: float) -> float:
        return at + self.clock_offset


@dataclass(frozen=True, slots=True)
class _Connected:
    ws: ClientConnection
    at: float


@dataclass(frozen=True, slots=True)
class _Disconnected:
    at: float


_Inbound = Event | _Connected | _Disconnected


class SidebandDriver:
    """Drives one accepted call until the server closes its sideband or sip-router ends it."""

    def __init__(
        self,
        *,
        facts: CallFacts,
        control: CallControl,
        url: str,
        api_key: str,
        actions: CallActions,
        functions: FunctionRequester,
        metrics: Metrics | None = None,
        memory: CallMemoryWriter | None = None,
        api: CallApi = "realtime",
        active_for_s: float = DEFAULT_ACTIVE_FOR_S,
        answered: Collection[str] = (),
        greeted: bool = False,
        lost: Collection[str] = (),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        reconnect_delays: Callable[[], Generator[float]] = backoff,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        webhooks: WebhooksFirst | None = None,
    ) -> None:
        self.facts = facts
        self.api: CallApi = api
        # GPT-Live speaks another sideband protocol: its own state machine, same driver.
        self.session: CallStateMachine = (
            LiveCallSession(facts.call_id, control, answered=answered, greeted=greeted, lost=lost)
            if api == "live"
            else CallSession(facts.call_id, control, answered=answered, greeted=greeted, lost=lost)
        )
        self._url = url
        self._api_key = api_key
        self._actions = actions
        self._functions = functions
        self._metrics = metrics
        self._memory = memory
        self._remembered: set[str] = set(answered)
        self._remembered_asking: set[str] = set(lost)
        self._remembered_greeting = greeted
        self._remembered_control = self.session.control
        self._active_for_s = active_for_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._reconnect_delays = reconnect_delays
        self._max_message_bytes = max_message_bytes
        self._open_timeout_s = open_timeout_s
        # Each step waits for the webhooks in flight (a few ms at most): callers first.
        self._webhooks = webhooks if webhooks is not None else WebhooksFirst()
        self._inbox: asyncio.Queue[_Inbound] = asyncio.Queue(INBOX_SIZE)
        self._ws: ClientConnection | None = None
        self._unsent: deque[str] = deque()
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._work: set[asyncio.Task[None]] = set()
        self._refer_rule_failed = False
        self._started = 0.0
        self._events: list[dict[str, Any]] = []

    async def run(self) -> CallOutcome:
        """Attach, drive the call to its end, and say how it ended."""
        self._started = self._clock()
        started_wall = self._wall_clock()
        async with asyncio.TaskGroup() as group:
            self._group = group
            reader = group.create_task(self._connection_loop())
            try:
                while not self.session.ended:
                    item = await self._inbox.get()
                    await self._webhooks.after_webhooks()
                    await self._step(item)
                    # What queued up meanwhile goes on without waiting again, so webhooks
                    # back to back slow a busy call's events by one wait, not one each.
                    while not self.session.ended and not self._inbox.empty():
                        await self._step(self._inbox.get_nowait())
            finally:
                for task in (reader, *self._timers.values(), *self._work):
                    task.cancel()
                if self._ws is not None:
                    await self._ws.close()
        ended_at = self.session.ended_at if self.session.ended_at is not None else self._clock()
        return CallOutcome(
            call_id=self.facts.call_id,
            end_reason=self.session.end_reason or "unknown",
            ended_at=started_wall + (ended_at - self._started),
            duration_s=round(ended_at - self._started, 3),
            transfer=self.session.transfer,
            transcript=tuple(self.session.transcript),
            answered=frozenset(self.session.answered),
            refer_rule_failed=self._refer_rule_failed,
            clock_offset=started_wall - self._started,
            events=tuple(self._events),
        )

    # --- the main loop: one event at a time ----------------------------------------------

    async def _step(self, item: _Inbound) -> None:
        if isinstance(item, _Connected):
            self._ws = item.ws
            await self._flush_unsent()
            item_event: Event = SidebandOpened(item.at)
        elif isinstance(item, _Disconnected):
            self._ws = None
            return
        else:
            item_event = item
        commands = self.session.handle(item_event)
        # Remembered before anything is sent: a replica taking over never answers twice.
        await self._remember()
        for command in commands:
            await self._execute(command)

    async def _remember(self) -> None:
        if self._memory is None:
            return
        try:
            for function_call_id in self.session.answered - self._remembered:
                await self._memory.record_answered(self.facts.call_id, function_call_id)
                self._remembered.add(function_call_id)
            # A function being asked: a replica taking over answers it with an error.
            for function_call_id in self.session.asking - self._remembered_asking:
                await self._memory.record_asking(self.facts.call_id, function_call_id)
                self._remembered_asking.add(function_call_id)
            if self.session.greeted and not self._remembered_greeting:
                await self._memory.mark_greeted(self.facts.call_id)
                self._remembered_greeting = True
            # The call switched control (on_error's profile): a replica taking over keeps it.
            if self.session.control is not self._remembered_control:
                control = self.session.control
                await self._memory.record_control(self.facts.call_id, control_to_json(control))
                self._remembered_control = control
        except Exception:
            # The call goes on; only a takeover could then repeat an answer.
            log.exception("could not remember the call's answers", extra={"fields": self._fields()})

    async def _execute(self, command: Command) -> None:
        if isinstance(command, SendEvent):
            await self._send(json.dumps(command.event, separators=(",", ":")))
        elif isinstance(command, PerformAction):
            self._spawn(self._perform(command))
        elif isinstance(command, CallFunction):
            self._spawn(self._call_function(command))
        elif isinstance(command, SetTimer):
            self._cancel_timer(command.key)
            self._timers[command.key] = self._group.create_task(self._timer(command))
        elif isinstance(command, CancelTimer):
            self._cancel_timer(command.key)
        elif isinstance(command, Note):
            self._note(command)
        elif isinstance(command, Finish):
            self._log(logging.INFO, "call_ended", {"end_reason": command.end_reason})

    async def _send(self, text: str) -> None:
        if self._ws is not None:
            try:
                await self._ws.send(text)
            except ConnectionClosed:
                pass
            else:
                return
        # Sent again once the sideband is back; the oldest are dropped past the cap.
        if len(self._unsent) >= MAX_UNSENT_EVENTS:
            self._unsent.popleft()
        self._unsent.append(text)

    async def _flush_unsent(self) -> None:
        while self._unsent and self._ws is not None:
            text = self._unsent.popleft()
            try:
                await self._ws.send(text)
            except ConnectionClosed:
                self._unsent.appendleft(text)
                return

    # --- work on the side: actions, functions, timers ------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = self._group.create_task(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _perform(self, command: PerformAction) -> None:
        outcome: ActionOutcome
        try:
            result = await self._actions.perform(
                command.verb, self.facts.call_id, command.body, api=self.api
            )
            # `duplicate` (an earlier copy was applied) says no more than that it may be done.
            outcome = "unknown" if result.outcome == "duplicate" else result.outcome
            detail = result.detail
        except Exception:  # the client never raises for upstream trouble; this is a bug
            log.exception("a call action crashed", extra={"fields": self._fields()})
            outcome, detail = "failed", "internal error"
        await self._inbox.put(ActionFinished(command.verb, outcome, self._clock(), detail))

    async def _call_function(self, command: CallFunction) -> None:
        function = self.session.control.functions[command.name]
        try:
            # The requester keeps to timeout_s itself; this is the backstop.
            async with asyncio.timeout(function.timeout_s + 1.0):
                await self._webhooks.after_webhooks()
                result = await self._functions.call(function, self.facts, command.arguments)
        except TimeoutError:
            result = FunctionResult(
                error=f"the function did not answer within {function.timeout_s:g} s"
            )
        except Exception:
            log.exception("a function call crashed", extra={"fields": self._fields()})
            result = FunctionResult(error="the function call failed inside sip-router")
        await self._inbox.put(
            FunctionAnswered(command.call_id, self._clock(), result.output, result.error)
        )

    async def _timer(self, command: SetTimer) -> None:
        await asyncio.sleep(max(0.0, command.at - self._clock()))
        self._timers.pop(command.key, None)
        await self._inbox.put(TimerFired(command.key, self._clock()))

    def _cancel_timer(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    # --- the socket ----------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        """Connect, read, and reconnect after a drop while the call may still be active."""
        reason = "sideband_lost"
        try:
            async for ws in connect(
                self._url,
                additional_headers={"Authorization": f"Bearer {self._api_key}"},
                user_agent_header="sip-router",
                max_size=self._max_message_bytes,
                open_timeout=self._open_timeout_s,
                reconnect_delays=self._reconnect_delays,
                process_exception=self._retry_or_give_up,
            ):
                self._count_connection("connected")
                # The opening request's headers are not read again: not kept for the whole
                # call, where the collector's full walks would visit them.
                ws.request = None
                await self._inbox.put(_Connected(ws, self._clock()))
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        await self._inbox.put(SidebandMessage(message, self._clock()))
                await self._inbox.put(_Disconnected(self._clock()))
                received = ws.protocol.close_rcvd
                if received is not None and received.code == 1000:
                    # OpenAI closes the sideband when the call ends.
                    self._count_connection("closed")
                    reason = "caller_hung_up"
                    break
                self._count_connection("dropped")
                if self._call_may_be_over():
                    break
                self._log(logging.WARNING, "sideband_dropped", {"close_code": ws.close_code})
        except InvalidStatus as exc:
            status = exc.response.status_code
            self._count_connection("refused")
            reason = "caller_hung_up" if status == 404 else f"sideband_refused_{status}"
        except Exception as exc:
            self._count_connection("failed")
            self._log(logging.WARNING, "sideband_failed", {"error": type(exc).__name__})
        await self._inbox.put(SidebandClosed(reason, self._clock()))

    def _retry_or_give_up(self, exc: Exception) -> Exception | None:
        if self._call_may_be_over():
            return exc
        self._count_connection("retry")
        if isinstance(exc, (OSError, TimeoutError)):
            return None
        if isinstance(exc, InvalidStatus) and exc.response.status_code in (429, 500, 502, 503, 504):
            return None
        return exc

    def _call_may_be_over(self) -> bool:
        return self._clock() - self._started >= self._active_for_s

    # --- logs and metrics ----------------------------------------------------------------

    def _note(self, note: Note) -> None:
        level = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
        self._log(level[note.level], note.what, dict(note.fields))
        if note.what == "refer_rule_failed":
            self._refer_rule_failed = True
        if note.what in _RECORDED_NOTES and len(self._events) < MAX_RECORDED_EVENTS:
            shown = {k: v for k, v in note.fields.items() if k != "call_id"}
            self._events.append({"event": note.what, "at": self._clock(), **shown})
        if self._metrics is None:
            return
        if note.what == "function_call":
            self._metrics.function_calls.labels(
                function=str(note.fields.get("function")), outcome=str(note.fields.get("outcome"))
            ).inc()
        elif note.what == "transfer":
            self._metrics.transfers.labels(outcome=str(note.fields.get("outcome"))).inc()

    def _count_connection(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.sideband_connections.labels(api=self.api, outcome=outcome).inc()

    def _log(self, level: int, what: str, fields: dict[str, Any]) -> None:
        log.log(level, what, extra={"fields": {**self._fields(), **fields}})

    def _fields(self) -> dict[str, Any]:
        return {
            "call_id": self.facts.call_id,
            "rule": self.facts.rule,
            "profile": self.facts.profile,
        }
