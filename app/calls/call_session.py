"""One call's life after the accept, as a pure state machine: events in, commands out.

No sockets and no clock: every event carries its time (`at`, seconds on the driver's
clock) and timers are commands with an absolute deadline. The driver
(`sideband_connection.py`) feeds it what the sideband, the call endpoints and the
company's functions say, and carries out what it asks for.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from app.calls.call_control import END_CALL, HANG_UP, TRANSFER_CALL, CallControl

# How long sip-router waits for the agent's words to finish before a refer or a hangup.
AUDIO_WAIT_S = 15.0
AUDIO_TIMER = "audio"
MAX_TRANSCRIPT_TURNS = 1000
MAX_TURN_CHARS = 4000
MAX_ANSWERED_IDS = 10_000
# The output of a function call whose answer was lost with the replica that ran it.
LOST_ANSWER = "the answer was lost when the call moved; ask again if needed"
# Marks the responses sip-router asks for, so their audio can be told from the agent's own.
RESPONSE_TAG_KEY = "sip_router"

# --- events in -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SidebandOpened:
    """The sideband WebSocket is open (the first time, or again after a reconnect)."""

    at: float


@dataclass(frozen=True, slots=True)
class SidebandMessage:
    """One message from the sideband, as received (it may not be JSON at all)."""

    data: str | bytes
    at: float


@dataclass(frozen=True, slots=True)
class SidebandClosed:
    """The sideband is gone for good; `reason` says why (the driver's view)."""

    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class FunctionAnswered:
    """A company function's answer: `output` on success, else `error` (text for the agent)."""

    call_id: str
    at: float
    output: str | None = None
    error: str | None = None


ActionOutcome = Literal["ok", "gone", "failed", "unknown"]


@dataclass(frozen=True, slots=True)
class ActionFinished:
    """A refer or hangup sent on the call's endpoint ended with `outcome`."""

    verb: Literal["refer", "hangup"]
    outcome: ActionOutcome
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TimerFired:
    key: str
    at: float


Event = (
    SidebandOpened
    | SidebandMessage
    | SidebandClosed
    | FunctionAnswered
    | ActionFinished
    | TimerFired
)

# --- commands out ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendEvent:
    """Send this client event on the sideband (JSON)."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PerformAction:
    """POST `verb` on the call's endpoint with `body`."""

    verb: Literal["refer", "hangup"]
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CallFunction:
    """Ask the company's function `name` with `arguments`; answer with FunctionAnswered."""

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Fire TimerFired(key) at `at` (replacing a timer with the same key)."""

    key: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a log line and a metric; `what` names it, `fields` say the rest."""

    what: str
    level: Literal["debug", "info", "warning"] = "info"
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finish:
    """The call is over for sip-router: close the sideband and record `end_reason`."""

    end_reason: str
    at: float


Command = SendEvent | PerformAction | CallFunction | SetTimer | CancelTimer | Note | Finish

# --- state -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """One transcribed turn: `caller` or `agent`, its text, and when it arrived."""

    role: Literal["caller", "agent"]
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """The transfer's result for the call log: `status` is the refer's outcome."""

    target_uri: str
    status: str
    at: float


@dataclass(slots=True)
class _AudioWait:
    """A refer or hangup that waits for the agent's words (the response tagged `tag`)."""

    verb: Literal["refer", "hangup"]
    target_uri: str | None
    tag: str
    deadline: float
    function_call_id: str | None
    target_name: str | None = None
    response_id: str | None = None
    # The refer `on_error` asked for after a refer rule failed: no further fallback.
    fallback: bool = False


@dataclass(slots=True)
class _PendingFunction:
    name: str
    started_at: float


class CallSession:
    """The state of one call after the accept; `handle` is its only way in.

    `answered` (function call ids already answered) and `greeted` can be passed in when a
    call is taken over, so nothing is answered or said twice; `lost` are the function calls
    the previous owner was still asking about: each gets one error output once the sideband
    is open, so the agent is not left waiting for an answer that will never come.
    """

    def __init__(
        self,
        call_id: str,
        control: CallControl,
        *,
        answered: Collection[str] = (),
        greeted: bool = False,
        lost: Collection[str] = (),
    ) -> None:
        self.call_id = call_id
        self.control = control
        self.answered: set[str] = set(answered)
        self.greeted = greeted
        self.transcript: list[Turn] = []
        self.transfer: TransferRecord | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.connections = 0
        self._pending: dict[str, _PendingFunction] = {}
        self._wait: _AudioWait | None = None
        self._action_in_flight: _AudioWait | None = None
        self._hung_up = False
        self._closed_by_server: SidebandClosed | None = None
        self._tags = 0
        self._lost = [call_id for call_id in lost if call_id not in self.answered]

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    @property
    def asking(self) -> frozenset[str]:
        """The function calls whose company function is being asked right now."""
        return frozenset(self._pending)

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; never raises for anything the outside world sends."""
        if self.ended:
            return []
        if isinstance(event, SidebandOpened):
            return self._opened(event.at)
        if isinstance(event, SidebandMessage):
            return self._message(event.data, event.at)
        if isinstance(event, FunctionAnswered):
            return self._function_answered(event)
        if isinstance(event, ActionFinished):
            return self._action_finished(event)
        if isinstance(event, TimerFired):
            return self._timer(event)
        return self._closed(event)

    # --- the sideband opens --------------------------------------------------------------

    def _opened(self, at: float) -> list[Command]:
        self.connections += 1
        lost = self._answer_lost()
        if self.greeted:
            return [*lost, Note("sideband_reopened", fields={"connections": self.connections})]
        self.greeted = True
        refer = self.control.refer
        if refer is not None:
            if refer.announce:
                wait = self._start_wait("refer", refer.target_uri, at, function_call_id=None)
                return [
                    *lost,
                    self._tagged_response(wait.tag, _say(refer.announce)),
                    *self._timer_for(wait),
                ]
            return [*lost, *self._act(_AudioWait("refer", refer.target_uri, "", at, None))]
        if self.control.greeting:
            return [
                *lost,
                SendEvent(_response_create(instructions=_say(self.control.greeting))),
                Note("greeting", "debug"),
            ]
        return lost

    def _answer_lost(self) -> list[Command]:
        """One error output for each function call the previous owner never answered."""
        commands: list[Command] = []
        for call_id in self._lost:
            if call_id in self.answered:
                continue
            self.answered.add(call_id)
            output = json.dumps({"error": LOST_ANSWER}, separators=(",", ":"))
            item = {"type": "function_call_output", "call_id": call_id, "output": output}
            commands.append(SendEvent({"type": "conversation.item.create", "item": item}))
            commands.append(Note("function_call", "warning", {"function": "?", "outcome": "lost"}))
        self._lost = []
        if commands:
            commands.append(SendEvent(_response_create()))
        return commands

    # --- messages from the sideband ------------------------------------------------------

    def _message(self, data: str | bytes, at: float) -> list[Command]:
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return [_bad("not JSON", size=len(data))]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [_bad("not an event object")]
        kind: str = event["type"]
        if kind == "response.function_call_arguments.done":
            return self._function_call(
                event.get("call_id"), event.get("name"), event.get("arguments"), at
            )
        if kind == "response.done":
            return self._response_done(event, at)
        if kind == "response.created":
            self._response_created(event)
            return []
        if kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared"):
            return self._audio_finished(event.get("response_id"))
        if kind == "conversation.item.input_audio_transcription.completed":
            return self._turn("caller", event.get("transcript"), at)
        if kind == "response.output_audio_transcript.done":
            return self._turn("agent", event.get("transcript"), at)
        if kind == "error":
            raw_error = event.get("error")
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            return [
                Note(
                    "openai_error",
                    "warning",
                    {
                        "code": str(error.get("code"))[:100],
                        "message": str(error.get("message"))[:300],
                        "event_id": str(error.get("event_id"))[:100],
                    },
                )
            ]
        return []

    def _response_created(self, event: dict[str, Any]) -> None:
        wait = self._wait
        response = event.get("response")
        if wait is None or not isinstance(response, dict):
            return
        metadata = response.get("metadata")
        if isinstance(metadata, dict) and metadata.get(RESPONSE_TAG_KEY) == wait.tag:
            response_id = response.get("id")
            if isinstance(response_id, str):
                wait.response_id = response_id

    def _response_done(self, event: dict[str, Any], at: float) -> list[Command]:
        """Function calls in a finished response, in case their own event was missed."""
        response = event.get("response")
        if not isinstance(response, dict) or response.get("status") == "cancelled":
            return []
        output = response.get("output")
        commands: list[Command] = []
        for item in output if isinstance(output, list) else ():
            if isinstance(item, dict) and item.get("type") == "function_call":
                call_id = item.get("call_id")
                if isinstance(call_id, str) and (
                    call_id in self.answered or call_id in self._pending
                ):
                    continue
                commands += self._function_call(
                    call_id, item.get("name"), item.get("arguments"), at
                )
        return commands

    def _audio_finished(self, response_id: object) -> list[Command]:
        wait = self._wait
        if wait is None or wait.response_id is None or response_id != wait.response_id:
            return []
        return self._act(wait)

    def _turn(self, role: Literal["caller", "agent"], text: object, at: float) -> list[Command]:
        if not self.control.transcript or not isinstance(text, str):
            return []
        if len(self.transcript) >= MAX_TRANSCRIPT_TURNS:
            return []
        self.transcript.append(Turn(role, text[:MAX_TURN_CHARS], at))
        return []

    # --- function calls ------------------------------------------------------------------

    def _function_call(
        self, call_id: object, name: object, arguments: object, at: float
    ) -> list[Command]:
        if not isinstance(call_id, str) or not call_id:
            return [_bad("function call without a call_id")]
        if call_id in self.answered or call_id in self._pending:
            return [Note("function_call_repeated", "debug", {"call_id": call_id})]
        if len(self.answered) >= MAX_ANSWERED_IDS:
            return [_bad("too many function calls on one call", call_id=call_id)]
        function = name if isinstance(name, str) else ""
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return self._refuse(call_id, function, "the arguments are not a JSON object")
        if function == TRANSFER_CALL and self.control.transfer:
            return self._transfer(call_id, parsed, at)
        if function == END_CALL and self.control.end_call:
            return self._end_call(call_id, at)
        if function in self.control.functions:
            self._pending[call_id] = _PendingFunction(function, at)
            return [CallFunction(call_id, function, parsed)]
        return self._refuse(call_id, function, f"there is no function named {function[:64]!r}")

    def _transfer(self, call_id: str, arguments: dict[str, Any], at: float) -> list[Command]:
        name = arguments.get("target")
        target = self.control.transfer_targets.get(name) if isinstance(name, str) else None
        if target is None or not isinstance(name, str):
            known = ", ".join(self.control.transfer_targets)
            return self._refuse(
                call_id, TRANSFER_CALL, f"unknown transfer target; use one of: {known}"
            )
        if self._busy():
            return self._refuse(
                call_id, TRANSFER_CALL, "a transfer or hang-up is already under way"
            )
        wait = self._start_wait("refer", target.target_uri, at, function_call_id=call_id)
        wait.target_name = name
        output = {"status": "transferring", "target": name}
        return [
            *self._answer(call_id, output, tag=wait.tag),
            *self._timer_for(wait),
            Note(
                "function_call",
                fields={"function": TRANSFER_CALL, "outcome": "ok", "latency_s": 0.0},
            ),
        ]

    def _end_call(self, call_id: str, at: float) -> list[Command]:
        if self._busy():
            return self._refuse(call_id, END_CALL, "a transfer or hang-up is already under way")
        wait = self._start_wait("hangup", None, at, function_call_id=call_id)
        return [
            *self._answer(call_id, {"status": "ending the call; say goodbye"}, tag=wait.tag),
            *self._timer_for(wait),
            Note("function_call", fields={"function": END_CALL, "outcome": "ok", "latency_s": 0.0}),
        ]

    def _function_answered(self, event: FunctionAnswered) -> list[Command]:
        pending = self._pending.pop(event.call_id, None)
        if pending is None:
            return [Note("function_answer_unexpected", "debug", {"call_id": event.call_id})]
        latency = max(0.0, event.at - pending.started_at)
        if event.error is None and event.output is not None:
            note = Note(
                "function_call",
                fields={"function": pending.name, "outcome": "ok", "latency_s": latency},
            )
            return [*self._answer(event.call_id, event.output), note]
        error = event.error or "the function gave no answer"
        note = Note(
            "function_call",
            "warning",
            {"function": pending.name, "outcome": "error", "latency_s": latency, "error": error},
        )
        return [*self._answer(event.call_id, {"error": error}), note]

    def _refuse(self, call_id: str, function: str, error: str) -> list[Command]:
        note = Note(
            "function_call",
            "warning",
            {
                "function": function[:64] or "?",
                "outcome": "refused",
                "latency_s": 0.0,
                "error": error,
            },
        )
        return [*self._answer(call_id, {"error": error}), note]

    def _answer(
        self, call_id: str, output: str | dict[str, Any], *, tag: str | None = None
    ) -> list[Command]:
        """The function call's output, then a response so the agent speaks about it."""
        self.answered.add(call_id)
        text = output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))
        item = {"type": "function_call_output", "call_id": call_id, "output": text}
        metadata = {RESPONSE_TAG_KEY: tag} if tag else None
        return [
            SendEvent({"type": "conversation.item.create", "item": item}),
            SendEvent(_response_create(metadata=metadata)),
        ]

    # --- refer and hangup after the agent's words ----------------------------------------

    def _busy(self) -> bool:
        return self._wait is not None or self._action_in_flight is not None or self._hung_up

    def _start_wait(
        self,
        verb: Literal["refer", "hangup"],
        target_uri: str | None,
        at: float,
        *,
        function_call_id: str | None,
    ) -> _AudioWait:
        self._tags += 1
        wait = _AudioWait(
            verb, target_uri, f"{verb}-{self._tags}", at + AUDIO_WAIT_S, function_call_id
        )
        self._wait = wait
        return wait

    def _timer_for(self, wait: _AudioWait) -> list[Command]:
        return [SetTimer(AUDIO_TIMER, wait.deadline)]

    def _tagged_response(self, tag: str, instructions: str) -> SendEvent:
        return SendEvent(
            _response_create(instructions=instructions, metadata={RESPONSE_TAG_KEY: tag})
        )

    def _timer(self, event: TimerFired) -> list[Command]:
        wait = self._wait
        if event.key != AUDIO_TIMER or wait is None or event.at < wait.deadline:
            return []
        return [Note("audio_wait_timed_out", fields={"verb": wait.verb}), *self._act(wait)]

    def _act(self, wait: _AudioWait) -> list[Command]:
        self._wait = None
        self._action_in_flight = wait
        cancel: list[Command] = [CancelTimer(AUDIO_TIMER)] if wait.tag else []
        if wait.verb == "refer":
            return [*cancel, PerformAction("refer", {"target_uri": wait.target_uri})]
        return [*cancel, PerformAction("hangup", None)]

    def _action_finished(self, event: ActionFinished) -> list[Command]:
        commands = self._action_result(event)
        closed = self._closed_by_server
        if closed is None or self.ended or self._action_in_flight is not None:
            return commands
        return [*commands, *self._finish(self._end_reason(closed.reason), event.at)]

    def _action_result(self, event: ActionFinished) -> list[Command]:
        wait = self._action_in_flight
        if wait is None or wait.verb != event.verb:
            return [Note("action_answer_unexpected", "debug", {"verb": event.verb})]
        self._action_in_flight = None
        if event.outcome == "gone":
            if wait.verb == "refer" and wait.target_uri is not None:
                self.transfer = TransferRecord(wait.target_uri, "gone", event.at)
            return self._finish("caller_hung_up", event.at)
        if wait.verb == "hangup":
            if event.outcome == "ok":
                self._hung_up = True
                return self._finish("hangup", event.at)
            return [
                Note("hangup_failed", "warning", {"outcome": event.outcome, "detail": event.detail})
            ]
        assert wait.target_uri is not None
        self.transfer = TransferRecord(wait.target_uri, event.outcome, event.at)
        note = Note(
            "transfer",
            "info" if event.outcome == "ok" else "warning",
            {
                "outcome": event.outcome,
                "detail": event.detail,
                "rule_refer": wait.function_call_id is None,
            },
        )
        if event.outcome == "ok":
            return [note]
        if wait.fallback:
            # on_error's own refer failed too: the call stays with the agent.
            return [note]
        if wait.function_call_id is None:
            # A refer rule that failed: the rule file's on_error applies to the live call.
            failed = Note("refer_rule_failed", "warning", {"outcome": event.outcome})
            return [note, failed, *self._refer_rule_failed(event.at)]
        error = f"the transfer to {wait.target_name} failed; tell the caller and offer other help"
        return [note, *self._answer(wait.function_call_id, {"error": error})]

    def _refer_rule_failed(self, at: float) -> list[Command]:
        failure = self.control.refer.on_error if self.control.refer is not None else HANG_UP
        if failure.kind == "session" and failure.session is not None:
            # The agent keeps the call with on_error's profile, and speaks to the caller.
            update = {"type": "session.update", "session": dict(failure.session)}
            if failure.control is not None:
                # Its tools (transfer, end_call, functions) are answered from now on.
                self.control = replace(
                    failure.control, refer=None, transcript=self.control.transcript
                )
            return [SendEvent(update), SendEvent(_response_create())]
        if failure.kind == "refer" and failure.target_uri:
            return self._act(_AudioWait("refer", failure.target_uri, "", at, None, fallback=True))
        return self._act(_AudioWait("hangup", None, "", at, None))

    # --- the end -------------------------------------------------------------------------

    def _closed(self, event: SidebandClosed) -> list[Command]:
        if self._action_in_flight is not None:
            # The refer or hangup just sent is likely why the socket closed: its answer
            # decides how the call ended.
            self._closed_by_server = event
            return [CancelTimer(AUDIO_TIMER)]
        return self._finish(self._end_reason(event.reason), event.at)

    def _end_reason(self, closed_reason: str) -> str:
        if self.transfer is not None and self.transfer.status == "ok":
            return "transferred"
        if self._hung_up:
            return "hangup"
        return closed_reason

    def _finish(self, reason: str, at: float) -> list[Command]:
        self.end_reason = reason
        self.ended_at = at
        self._wait = None
        self._pending.clear()
        return [CancelTimer(AUDIO_TIMER), Finish(reason, at)]


def _say(text: str) -> str:
    return f'Say exactly this to the caller now, then continue the conversation: "{text}"'


def _response_create(
    *, instructions: str | None = None, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {}
    if instructions is not None:
        response["instructions"] = instructions
    if metadata is not None:
        response["metadata"] = metadata
    return (
        {"type": "response.create", "response": response}
        if response
        else {"type": "response.create"}
    )


def _bad(problem: str, **fields: Any) -> Note:
    return Note("bad_sideband_event", "warning", {"problem": problem, **fields})
