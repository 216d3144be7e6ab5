"""One GPT-Live call's life after the accept, as a pure state machine: events in, commands out.

The GPT-Live sideband (`/live/sessions/{session_id}/attach`) speaks another protocol than
Realtime's, so it has its own state machine beside `call_session.CallSession`; both take
the same events and give the same commands to the same driver (`sideband_connection.py`).

- greeting (and a refer's announcement): `session.instructions.append` with the words to
  say, then a short `session.commentary.append`, so the agent speaks first;
- `end_call` arrives as a delegated Responses function call (`response.event` wrapping
  `response.output_item.done`); it is answered with `response.item.create` and
  `response.create`, and once the agent's speech is quiet sip-router hangs up;
- transcripts come as deltas, joined into turns; `session.closed` ends the call with its
  `reason` as `end_reason`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from app.calls.call_control import END_CALL, HANG_UP, CallControl
from app.calls.call_session import (
    AUDIO_TIMER,
    AUDIO_WAIT_S,
    LOST_ANSWER,
    MAX_ANSWERED_IDS,
    MAX_TRANSCRIPT_TURNS,
    MAX_TURN_CHARS,
    ActionFinished,
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

# The agent's speech is over once no output transcript or audio arrived for this long.
QUIET_S = 1.5
QUIET_TIMER = "quiet"
# After sip-router's hangup or refer succeeded, how long it waits for `session.closed`.
CLOSE_WAIT_S = 5.0
CLOSE_TIMER = "close"
GREETING_NUDGE = "Begin the conversation now, following the instructions provided."
END_CALL_OUTPUT = {"status": "ending the call; say goodbye"}
REFER_FAILED = (
    "The transfer of this call failed. Tell the caller now that you could not transfer"
    " them, then keep helping them."
)
# Event ids already handled: a reattached sideband may replay its last few seconds.
MAX_SEEN_EVENT_IDS = 1000
MAX_REASON_CHARS = 100
# The kinds of output that mean the agent is speaking.
_SPEECH = frozenset({"session.output_transcript.delta", "session.output_audio.delta"})


def say_now_instruction(text: str) -> str:
    """What `session.instructions.append` says so the agent speaks `text` first (a greeting
    or a refer's announcement), then listens."""
    return (
        "Speak to the caller now, without waiting for them to speak, and say exactly this:"
        f' "{text}" Then pause and listen to the caller.'
    )


@dataclass(slots=True)
class _QuietWait:
    """A refer or hangup that waits until the agent's speech has been quiet for a while."""

    verb: Literal["refer", "hangup"]
    target_uri: str | None
    deadline: float
    last_speech: float
    function_call_id: str | None = None
    # The refer `on_error` asked for after a refer rule failed: no further fallback.
    fallback: bool = False


class LiveCallSession:
    """The state of one GPT-Live call after the accept; `handle` is its only way in.

    `answered`, `greeted` and `lost` are what a call taken over remembers, as for
    `CallSession`; `quiet_s` is how long the agent's speech must be quiet before a
    hangup or refer.
    """

    def __init__(
        self,
        call_id: str,
        control: CallControl,
        *,
        answered: Collection[str] = (),
        greeted: bool = False,
        lost: Collection[str] = (),
        quiet_s: float = QUIET_S,
    ) -> None:
        self.call_id = call_id
        self.control = control
        self.answered: set[str] = set(answered)
        self.greeted = greeted
        self.transfer: TransferRecord | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.connections = 0
        self._quiet_s = quiet_s
        self._turns: list[Turn] = []
        self._wait: _QuietWait | None = None
        self._action_in_flight: _QuietWait | None = None
        self._done: Literal["hangup", "transferred"] | None = None
        self._closed_reason: str | None = None
        self._socket_closed: SidebandClosed | None = None
        self._seen_ids: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._lost = [call_id for call_id in lost if call_id not in self.answered]

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    @property
    def asking(self) -> frozenset[str]:
        """GPT-Live calls ask no company functions."""
        return frozenset()

    @property
    def transcript(self) -> Sequence[Turn]:
        return [replace(turn, text=turn.text.strip()) for turn in self._turns]

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; never raises for anything the outside world sends."""
        if self.ended:
            return []
        if isinstance(event, SidebandOpened):
            return self._opened(event.at)
        if isinstance(event, SidebandMessage):
            return self._message(event.data, event.at)
        if isinstance(event, FunctionAnswered):
            return [Note("function_answer_unexpected", "debug", {"call_id": event.call_id})]
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
                wait = self._start_wait("refer", refer.target_uri, at)
                return [*lost, *_speak(refer.announce), *self._timers_for(wait)]
            return [*lost, *self._act(_QuietWait("refer", refer.target_uri, at, at))]
        if self.control.greeting:
            return [*lost, *_speak(self.control.greeting), Note("greeting", "debug")]
        return lost

    def _answer_lost(self) -> list[Command]:
        """One error output for each function call the previous owner never answered."""
        commands: list[Command] = []
        for call_id in self._lost:
            if call_id in self.answered:
                continue
            self.answered.add(call_id)
            commands.append(_output(call_id, {"error": LOST_ANSWER}))
            commands.append(Note("function_call", "warning", {"function": "?", "outcome": "lost"}))
        self._lost = []
        if commands:
            commands.append(SendEvent({"type": "response.create"}))
        return commands

    # --- messages from the sideband ------------------------------------------------------

    def _message(self, data: str | bytes, at: float) -> list[Command]:
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return [_bad("not JSON", size=len(data))]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [_bad("not an event object")]
        if self._seen_before(event.get("event_id")):
            return []
        kind: str = event["type"]
        if kind in _SPEECH and self._wait is not None:
            self._wait.last_speech = at
        if kind == "session.output_transcript.delta":
            return self._turn("agent", event.get("delta"), at)
        if kind == "session.input_transcript.delta":
            return self._turn("caller", event.get("delta"), at)
        if kind == "response.event":
            return self._response_event(event.get("event"), at)
        if kind == "session.closed":
            return self._session_closed(event.get("reason"), at)
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
                        "event_id": str(error.get("client_event_id", error.get("event_id")))[:100],
                    },
                )
            ]
        return []

    def _seen_before(self, event_id: object) -> bool:
        if not isinstance(event_id, str):
            return False
        if event_id in self._seen_ids:
            return True
        self._seen_ids.add(event_id)
        self._seen_order.append(event_id)
        if len(self._seen_order) > MAX_SEEN_EVENT_IDS:
            self._seen_ids.discard(self._seen_order.popleft())
        return False

    def _turn(self, role: Literal["caller", "agent"], delta: object, at: float) -> list[Command]:
        """Consecutive deltas of one side are one turn; it ends when the other side speaks."""
        if not self.control.transcript or not isinstance(delta, str) or not delta:
            return []
        last = self._turns[-1] if self._turns else None
        if last is not None and last.role == role:
            self._turns[-1] = replace(last, text=(last.text + delta)[:MAX_TURN_CHARS])
        elif len(self._turns) < MAX_TRANSCRIPT_TURNS:
            self._turns.append(Turn(role, delta[:MAX_TURN_CHARS], at))
        return []

    def _response_event(self, nested: object, at: float) -> list[Command]:
        """A delegated Responses stream event: function calls are in its output items."""
        if not isinstance(nested, dict):
            return [_bad("response.event without an event")]
        kind = nested.get("type")
        items: list[object] = []
        if kind == "response.output_item.done":
            items = [nested.get("item")]
        elif kind in ("response.completed", "response.done"):
            # In case the item's own event was missed.
            response = nested.get("response")
            output = response.get("output") if isinstance(response, dict) else None
            items = list(output) if isinstance(output, list) else []
        commands: list[Command] = []
        for item in items:
            if not isinstance(item, dict) or item.get("type") != "function_call":
                continue
            call_id = item.get("call_id")
            if kind != "response.output_item.done" and call_id in self.answered:
                continue
            commands += self._function_call(call_id, item.get("name"), item.get("arguments"), at)
        return commands

    # --- end_call, the only function on a GPT-Live call ----------------------------------

    def _function_call(
        self, call_id: object, name: object, arguments: object, at: float
    ) -> list[Command]:
        if not isinstance(call_id, str) or not call_id:
            return [_bad("function call without a call_id")]
        if call_id in self.answered:
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
        if function != END_CALL or not self.control.end_call:
            return self._refuse(call_id, function, f"there is no function named {function[:64]!r}")
        if self._busy():
            return self._refuse(call_id, END_CALL, "a transfer or hang-up is already under way")
        wait = self._start_wait("hangup", None, at, function_call_id=call_id)
        return [
            *self._answer(call_id, END_CALL_OUTPUT),
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

    def _answer(self, call_id: str, output: dict[str, Any]) -> list[Command]:
        """The function call's output, then `response.create` so the delegation goes on."""
        self.answered.add(call_id)
        return [_output(call_id, output), SendEvent({"type": "response.create"})]

    # --- refer and hangup once the agent is quiet ----------------------------------------

    def _busy(self) -> bool:
        return self._wait is not None or self._action_in_flight is not None or bool(self._done)

    def _start_wait(
        self,
        verb: Literal["refer", "hangup"],
        target_uri: str | None,
        at: float,
        *,
        function_call_id: str | None = None,
    ) -> _QuietWait:
        self._wait = _QuietWait(verb, target_uri, at + AUDIO_WAIT_S, at, function_call_id)
        return self._wait

    def _timers_for(self, wait: _QuietWait) -> list[Command]:
        return [
            SetTimer(QUIET_TIMER, wait.last_speech + self._quiet_s),
            SetTimer(AUDIO_TIMER, wait.deadline),
        ]

    def _timer(self, event: TimerFired) -> list[Command]:
        if event.key == CLOSE_TIMER:
            # No `session.closed` after sip-router's own hangup or refer: it ended anyway.
            if self._done is not None and self._action_in_flight is None:
                return self._finish(self._end_reason(self._done), event.at)
            return []
        wait = self._wait
        if wait is None:
            return []
        if event.key == AUDIO_TIMER and event.at >= wait.deadline:
            return [Note("audio_wait_timed_out", fields={"verb": wait.verb}), *self._act(wait)]
        if event.key == QUIET_TIMER:
            quiet_at = wait.last_speech + self._quiet_s
            if event.at >= quiet_at:
                return self._act(wait)
            # The agent spoke meanwhile: look again once it may have been quiet long enough.
            return [SetTimer(QUIET_TIMER, quiet_at)]
        return []

    def _act(self, wait: _QuietWait) -> list[Command]:
        self._wait = None
        self._action_in_flight = wait
        cancel: list[Command] = [CancelTimer(QUIET_TIMER), CancelTimer(AUDIO_TIMER)]
        if wait.verb == "refer":
            return [*cancel, PerformAction("refer", {"target_uri": wait.target_uri})]
        return [*cancel, PerformAction("hangup", None)]

    def _action_finished(self, event: ActionFinished) -> list[Command]:
        commands = self._action_result(event)
        if self.ended or self._action_in_flight is not None:
            return commands
        if self._closed_reason is not None or self._socket_closed is not None:
            fallback = self._socket_closed.reason if self._socket_closed else "unknown"
            return [*commands, *self._finish(self._end_reason(fallback), event.at)]
        return commands

    def _action_result(self, event: ActionFinished) -> list[Command]:
        wait = self._action_in_flight
        if wait is None or wait.verb != event.verb:
            return [Note("action_answer_unexpected", "debug", {"verb": event.verb})]
        self._action_in_flight = None
        if event.outcome == "gone":
            if wait.verb == "refer" and wait.target_uri is not None:
                self.transfer = TransferRecord(wait.target_uri, "gone", event.at)
            return self._finish(self._closed_reason or "caller_hung_up", event.at)
        if wait.verb == "hangup":
            if event.outcome == "ok":
                return self._await_close("hangup", event.at)
            return [
                Note("hangup_failed", "warning", {"outcome": event.outcome, "detail": event.detail})
            ]
        assert wait.target_uri is not None
        self.transfer = TransferRecord(wait.target_uri, event.outcome, event.at)
        note = Note(
            "transfer",
            "info" if event.outcome == "ok" else "warning",
            {"outcome": event.outcome, "detail": event.detail, "rule_refer": True},
        )
        if event.outcome == "ok":
            return [note, *self._await_close("transferred", event.at)]
        if wait.fallback:
            # on_error's own refer failed too: the call stays with the agent.
            return [note]
        failed = Note("refer_rule_failed", "warning", {"outcome": event.outcome})
        return [note, failed, *self._refer_rule_failed(event.at)]

    def _await_close(self, done: Literal["hangup", "transferred"], at: float) -> list[Command]:
        """The call is ending: `session.closed` says how, unless it never comes."""
        self._done = done
        if self._closed_reason is not None or self._socket_closed is not None:
            return []  # _action_finished finishes the call
        return [SetTimer(CLOSE_TIMER, at + CLOSE_WAIT_S)]

    def _refer_rule_failed(self, at: float) -> list[Command]:
        """A refer rule's refer failed: the rule file's `on_error` applies to the live call."""
        failure = self.control.refer.on_error if self.control.refer is not None else HANG_UP
        if failure.kind == "session":
            # A GPT-Live session cannot be given another profile: the agent keeps the call.
            return list(_speak_instruction(REFER_FAILED))
        if failure.kind == "refer" and failure.target_uri:
            return self._act(_QuietWait("refer", failure.target_uri, at, at, fallback=True))
        return self._act(_QuietWait("hangup", None, at, at))

    # --- the end -------------------------------------------------------------------------

    def _session_closed(self, reason: object, at: float) -> list[Command]:
        self._closed_reason = (
            reason[:MAX_REASON_CHARS] if isinstance(reason, str) and reason else "unknown"
        )
        if self._action_in_flight is not None:
            # The answer of the refer or hangup just sent is still to come.
            return [CancelTimer(QUIET_TIMER), CancelTimer(AUDIO_TIMER)]
        return self._finish(self._closed_reason, at)

    def _closed(self, event: SidebandClosed) -> list[Command]:
        if self._action_in_flight is not None:
            self._socket_closed = event
            return [CancelTimer(QUIET_TIMER), CancelTimer(AUDIO_TIMER)]
        return self._finish(self._end_reason(event.reason), event.at)

    def _end_reason(self, fallback: str) -> str:
        """`session.closed`'s reason; without it, what sip-router itself did, or `fallback`."""
        if self._closed_reason is not None:
            return self._closed_reason
        return self._done or fallback

    def _finish(self, reason: str, at: float) -> list[Command]:
        self.end_reason = reason
        self.ended_at = at
        self._wait = None
        return [
            CancelTimer(QUIET_TIMER),
            CancelTimer(AUDIO_TIMER),
            CancelTimer(CLOSE_TIMER),
            Finish(reason, at),
        ]


def _speak(text: str) -> tuple[SendEvent, SendEvent]:
    """The greeting recipe: the words as an instruction, then a nudge to begin now."""
    return _speak_instruction(say_now_instruction(text))


def _speak_instruction(instruction: str) -> tuple[SendEvent, SendEvent]:
    return (
        SendEvent(
            {"type": "session.instructions.append", "delegation_id": None, "content": instruction}
        ),
        SendEvent(
            {"type": "session.commentary.append", "delegation_id": None, "content": GREETING_NUDGE}
        ),
    )


def _output(call_id: str, output: dict[str, Any]) -> SendEvent:
    text = json.dumps(output, separators=(",", ":"))
    item = {"type": "function_call_output", "call_id": call_id, "output": text}
    return SendEvent({"type": "response.item.create", "item": item})


def _bad(problem: str, **fields: Any) -> Note:
    return Note("bad_sideband_event", "warning", {"problem": problem, **fields})
