"""The life of a call after the accept that does not depend on its API: `SidebandSession`.

Realtime's `CallSession` and GPT-Live's `LiveCallSession` speak different sideband
protocols but live the same life: greet (or announce a refer rule) once the sideband is
open, answer what a previous owner left unanswered, check and answer function calls,
refer or hang up once the agent's words are over, and end with one reason. This class is
that life; each subclass supplies its protocol's events through the hooks it leaves open.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypedDict, TypeVar

from app.calls.call_control import END_CALL, HANG_UP, CallControl, ReferFailure
from app.calls.session_events import (
    ActionFinished,
    ActionVerb,
    CancelTimer,
    Command,
    Event,
    Finish,
    FunctionAnswered,
    Note,
    SendEvent,
    SidebandClosed,
    SidebandMessage,
    SidebandOpened,
    TimerFired,
    TransferRecord,
    Turn,
)

# How long sip-router waits for the agent's words to finish before a refer or a hangup.
AUDIO_WAIT_S = 15.0
AUDIO_TIMER = "audio"
MAX_TRANSCRIPT_TURNS = 1000
MAX_TURN_CHARS = 4000
MAX_ANSWERED_IDS = 10_000
# The output of a function call whose answer was lost with the replica that ran it.
LOST_ANSWER = "the answer was lost when the call moved; ask again if needed"
END_CALL_OUTPUT = {"status": "ending the call; say goodbye"}


@dataclass(slots=True)
class ActionWait:
    """A refer or hangup that waits for the agent's words, until `deadline` at the latest."""

    verb: ActionVerb
    target_uri: str | None
    deadline: float
    function_call_id: str | None = None
    # The transfer target's name, for the agent when the transfer fails.
    target_name: str | None = None
    # The refer `on_error` asked for after a refer rule failed: no further fallback.
    fallback: bool = False


W = TypeVar("W", bound=ActionWait)


class SessionMemory(TypedDict, total=False):
    """What a call taken over remembers from its previous owner (see `SidebandSession`)."""

    answered: Collection[str]
    greeted: bool
    lost: Collection[str]


class SidebandSession(ABC, Generic[W]):
    """The state of one call after the accept; `handle` is its only way in.

    `answered` (function call ids already answered) and `greeted` can be passed in when a
    call is taken over, so nothing is answered or said twice; `lost` are the function calls
    the previous owner was still asking about: each gets one error output once the sideband
    is open, so the agent is not left waiting for an answer that will never come.
    """

    # The client event that carries a function call's output.
    OUTPUT_EVENT: ClassVar[str]
    # The timers a waiting refer or hangup sets, and every timer the call may have set.
    WAIT_TIMERS: ClassVar[tuple[str, ...]]
    TIMERS: ClassVar[tuple[str, ...]]

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
        self.transfer: TransferRecord | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.connections = 0
        self._turns: list[Turn] = []
        self._wait: W | None = None
        self._action_in_flight: W | None = None
        # What sip-router's own hangup or refer did, once it succeeded.
        self._done: Literal["hangup", "transferred"] | None = None
        # The socket closed while a refer or hangup was under way: its answer decides.
        self._socket_closed: SidebandClosed | None = None
        self._lost = [call_id for call_id in lost if call_id not in self.answered]

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    @property
    def asking(self) -> frozenset[str]:
        """The function calls whose company function is being asked right now."""
        return frozenset()

    @property
    def transcript(self) -> Sequence[Turn]:
        return self._turns

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

    # --- what each protocol says its own way ---------------------------------------------

    @abstractmethod
    def _event(self, event: dict[str, Any], at: float) -> list[Command]:
        """One event object from the sideband (its `type` is a string)."""

    @abstractmethod
    def _say_now(self, text: str, wait: W | None) -> list[Command]:
        """Make the agent say `text` now (a greeting, or the announcement `wait` waits for)."""

    @abstractmethod
    def _response_for(self, wait: W | None) -> dict[str, Any]:
        """The `response.create` after a function call's output (which `wait` waits for)."""

    @abstractmethod
    def _call_function(
        self, call_id: str, function: str, arguments: dict[str, Any], at: float
    ) -> list[Command]:
        """A well-formed function call, not answered yet."""

    @abstractmethod
    def _new_wait(
        self, verb: ActionVerb, target_uri: str | None, at: float, function_call_id: str | None
    ) -> W:
        """A refer or hangup that waits for the agent's words from `at` on."""

    @abstractmethod
    def _no_wait(
        self, verb: ActionVerb, target_uri: str | None, at: float, *, fallback: bool = False
    ) -> W:
        """A refer or hangup carried out right away."""

    @abstractmethod
    def _timers_for(self, wait: W) -> list[Command]:
        """The timers that end `wait`."""

    @abstractmethod
    def _timer(self, event: TimerFired) -> list[Command]: ...

    @abstractmethod
    def _act(self, wait: W) -> list[Command]:
        """Send the refer or hangup `wait` waited for."""

    @abstractmethod
    def _succeeded(self, done: Literal["hangup", "transferred"], at: float) -> list[Command]:
        """sip-router's own hangup or refer succeeded."""

    @abstractmethod
    def _gone_reason(self) -> str:
        """Why the call ended when the call endpoint says it is gone."""

    @abstractmethod
    def _keep_call(self, failure: ReferFailure) -> list[Command] | None:
        """The agent keeps the call after a refer rule failed; None: hang up instead."""

    @abstractmethod
    def _end_reason(self, fallback: str) -> str:
        """The end reason once the sideband is gone; `fallback` is the driver's reason."""

    def _function_answered(self, event: FunctionAnswered) -> list[Command]:
        return [Note("function_answer_unexpected", "debug", {"call_id": event.call_id})]

    def _error_event_id(self, error: dict[str, Any]) -> object:
        return error.get("event_id")

    def _closed_meanwhile(self) -> bool:
        """Whether the call was closed while a refer or hangup was under way."""
        return self._socket_closed is not None

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
                return [*lost, *self._say_now(refer.announce, wait), *self._timers_for(wait)]
            return [*lost, *self._act(self._no_wait("refer", refer.target_uri, at))]
        if self.control.greeting:
            return [*lost, *self._say_now(self.control.greeting, None), Note("greeting", "debug")]
        return lost

    def _answer_lost(self) -> list[Command]:
        """One error output for each function call the previous owner never answered."""
        commands: list[Command] = []
        for call_id in self._lost:
            if call_id in self.answered:
                continue
            self.answered.add(call_id)
            commands.append(self._output(call_id, {"error": LOST_ANSWER}))
            commands.append(Note("function_call", "warning", {"function": "?", "outcome": "lost"}))
        self._lost = []
        if commands:
            commands.append(SendEvent(self._response_for(None)))
        return commands

    # --- messages from the sideband ------------------------------------------------------

    def _message(self, data: str | bytes, at: float) -> list[Command]:
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return [bad_event("not JSON", size=len(data))]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [bad_event("not an event object")]
        return self._event(event, at)

    def _openai_error(self, event: dict[str, Any]) -> list[Command]:
        raw_error = event.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        return [
            Note(
                "openai_error",
                "warning",
                {
                    "code": str(error.get("code"))[:100],
                    "message": str(error.get("message"))[:300],
                    "event_id": str(self._error_event_id(error))[:100],
                },
            )
        ]

    def _add_turn(self, role: Literal["caller", "agent"], text: str, at: float) -> None:
        if len(self._turns) < MAX_TRANSCRIPT_TURNS:
            self._turns.append(Turn(role, text[:MAX_TURN_CHARS], at))

    # --- function calls ------------------------------------------------------------------

    def _function_call(
        self, call_id: object, name: object, arguments: object, at: float
    ) -> list[Command]:
        if not isinstance(call_id, str) or not call_id:
            return [bad_event("function call without a call_id")]
        if call_id in self.answered or call_id in self.asking:
            return [Note("function_call_repeated", "debug", {"call_id": call_id})]
        if len(self.answered) >= MAX_ANSWERED_IDS:
            return [bad_event("too many function calls on one call", call_id=call_id)]
        function = name if isinstance(name, str) else ""
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return self._refuse(call_id, function, "the arguments are not a JSON object")
        return self._call_function(call_id, function, parsed, at)

    def _end_call(self, call_id: str, at: float) -> list[Command]:
        if self._busy():
            return self._refuse(call_id, END_CALL, "a transfer or hang-up is already under way")
        wait = self._start_wait("hangup", None, at, function_call_id=call_id)
        return [
            *self._answer(call_id, END_CALL_OUTPUT, wait=wait),
            *self._timers_for(wait),
            Note("function_call", fields={"function": END_CALL, "outcome": "ok", "latency_s": 0.0}),
        ]

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
        self, call_id: str, output: str | dict[str, Any], *, wait: W | None = None
    ) -> list[Command]:
        """The function call's output, then a response so the agent speaks about it."""
        self.answered.add(call_id)
        return [self._output(call_id, output), SendEvent(self._response_for(wait))]

    def _output(self, call_id: str, output: str | dict[str, Any]) -> SendEvent:
        text = output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))
        item = {"type": "function_call_output", "call_id": call_id, "output": text}
        return SendEvent({"type": self.OUTPUT_EVENT, "item": item})

    # --- refer and hangup after the agent's words ----------------------------------------

    def _busy(self) -> bool:
        return self._wait is not None or self._action_in_flight is not None or bool(self._done)

    def _start_wait(
        self, verb: ActionVerb, target_uri: str | None, at: float, *, function_call_id: str | None
    ) -> W:
        self._wait = self._new_wait(verb, target_uri, at, function_call_id)
        return self._wait

    def _action_finished(self, event: ActionFinished) -> list[Command]:
        commands = self._action_result(event)
        if self.ended or self._action_in_flight is not None or not self._closed_meanwhile():
            return commands
        fallback = self._socket_closed.reason if self._socket_closed else "unknown"
        return [*commands, *self._finish(self._end_reason(fallback), event.at)]

    def _action_result(self, event: ActionFinished) -> list[Command]:
        wait = self._action_in_flight
        if wait is None or wait.verb != event.verb:
            return [Note("action_answer_unexpected", "debug", {"verb": event.verb})]
        self._action_in_flight = None
        if event.outcome == "gone":
            if wait.verb == "refer" and wait.target_uri is not None:
                self.transfer = TransferRecord(wait.target_uri, "gone", event.at)
            return self._finish(self._gone_reason(), event.at)
        if wait.verb == "hangup":
            if event.outcome == "ok":
                return self._succeeded("hangup", event.at)
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
            return [note, *self._succeeded("transferred", event.at)]
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
        if failure.kind == "session":
            kept = self._keep_call(failure)
            if kept is not None:
                return kept
        if failure.kind == "refer" and failure.target_uri:
            return self._act(self._no_wait("refer", failure.target_uri, at, fallback=True))
        return self._act(self._no_wait("hangup", None, at))

    # --- the end -------------------------------------------------------------------------

    def _closed(self, event: SidebandClosed) -> list[Command]:
        if self._action_in_flight is not None:
            # The refer or hangup just sent is likely why the socket closed: its answer
            # decides how the call ended.
            self._socket_closed = event
            return [CancelTimer(key) for key in self.WAIT_TIMERS]
        return self._finish(self._end_reason(event.reason), event.at)

    def _finish(self, reason: str, at: float) -> list[Command]:
        self.end_reason = reason
        self.ended_at = at
        self._wait = None
        return [*(CancelTimer(key) for key in self.TIMERS), Finish(reason, at)]


def bad_event(problem: str, **fields: Any) -> Note:
    """A sideband event sip-router cannot use."""
    return Note("bad_sideband_event", "warning", {"problem": problem, **fields})
