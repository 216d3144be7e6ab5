"""One GPT-Live call's life after the accept, as a pure state machine: events in, commands out.

The GPT-Live sideband (`/live/sessions/{session_id}/attach`) speaks another protocol than
Realtime's, so it has its own subclass of `sideband_session.SidebandSession` beside
`call_session.CallSession`; both take the same events and give the same commands
(`session_events.py`) to the same driver (`sideband_connection.py`).

- greeting (and a refer's announcement): `session.instructions.append` with the words to
  say, then a short `session.commentary.append`, so the agent speaks first;
- `end_call` arrives as a delegated Responses function call (`response.event` wrapping
  `response.output_item.done`); it is answered with `response.item.create` and
  `response.create`, and once the agent's speech is quiet sip-router hangs up;
- transcripts come as deltas, joined into turns; `session.closed` ends the call with its
  `reason` as `end_reason`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Unpack

from app.calls.call_control import END_CALL, CallControl, ReferFailure
from app.calls.session_events import (
    ActionVerb,
    CancelTimer,
    Command,
    Note,
    PerformAction,
    SendEvent,
    SetTimer,
    TimerFired,
    Turn,
)
from app.calls.sideband_session import (
    AUDIO_TIMER,
    AUDIO_WAIT_S,
    MAX_TURN_CHARS,
    ActionWait,
    SessionMemory,
    SidebandSession,
    bad_event,
)

# The agent's speech is over once no output transcript or audio arrived for this long.
QUIET_S = 1.5
# If the agent has not begun speaking this long after a wait began (a goodbye, an
# announcement), the quiet counts from the wait's start: it may have had nothing to say.
SILENT_START_S = 5.0
QUIET_TIMER = "quiet"
# After sip-router's hangup or refer succeeded, how long it waits for `session.closed`.
CLOSE_WAIT_S = 5.0
CLOSE_TIMER = "close"
GREETING_NUDGE = "Begin the conversation now, following the instructions provided."
SPEAK_NOW_NUDGE = "Speak to the caller now, following the latest instructions."
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
class _QuietWait(ActionWait):
    """A refer or hangup that waits until the agent's speech has been quiet for a while."""

    last_speech: float = 0.0
    spoke: bool = False  # the agent has spoken since the wait began


class LiveCallSession(SidebandSession[_QuietWait]):
    """The state of one GPT-Live call after the accept; `handle` is its only way in.

    `answered`, `greeted` and `lost` are what a call taken over remembers (see
    `SidebandSession`); `quiet_s` is how long the agent's speech must be quiet before a
    hangup or refer.
    """

    OUTPUT_EVENT: ClassVar[str] = "response.item.create"
    WAIT_TIMERS: ClassVar[tuple[str, ...]] = (QUIET_TIMER, AUDIO_TIMER)
    TIMERS: ClassVar[tuple[str, ...]] = (QUIET_TIMER, AUDIO_TIMER, CLOSE_TIMER)

    def __init__(
        self,
        call_id: str,
        control: CallControl,
        *,
        quiet_s: float = QUIET_S,
        **memory: Unpack[SessionMemory],
    ) -> None:
        super().__init__(call_id, control, **memory)
        self._quiet_s = quiet_s
        self._closed_reason: str | None = None
        self._seen_ids: set[str] = set()
        self._seen_order: deque[str] = deque()

    @property
    def transcript(self) -> Sequence[Turn]:
        return [replace(turn, text=turn.text.strip()) for turn in self._turns]

    # --- the sideband speaks GPT-Live ----------------------------------------------------

    def _say_now(self, text: str, wait: _QuietWait | None) -> list[Command]:
        return list(_speak(text))

    def _response_for(self, wait: _QuietWait | None) -> dict[str, Any]:
        # `response.create` after an output, so the delegation goes on.
        return {"type": "response.create"}

    def _error_event_id(self, error: dict[str, Any]) -> object:
        return error.get("client_event_id", error.get("event_id"))

    def _event(self, event: dict[str, Any], at: float) -> list[Command]:
        if self._seen_before(event.get("event_id")):
            return []
        kind: str = event["type"]
        heard: list[Command] = []
        if kind in _SPEECH and self._wait is not None:
            if not self._wait.spoke:  # the quiet now counts from the agent's words
                heard = [SetTimer(QUIET_TIMER, at + self._quiet_s)]
            self._wait.last_speech, self._wait.spoke = at, True
        if kind == "session.output_transcript.delta":
            return [*heard, *self._turn("agent", event.get("delta"), at)]
        if kind == "session.output_audio.delta":
            return heard
        if kind == "session.input_transcript.delta":
            return self._turn("caller", event.get("delta"), at)
        if kind == "response.event":
            return self._response_event(event.get("event"), at)
        if kind == "session.closed":
            return self._session_closed(event.get("reason"), at)
        if kind == "error":
            return self._openai_error(event)
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
        else:
            self._add_turn(role, delta, at)
        return []

    def _response_event(self, nested: object, at: float) -> list[Command]:
        """A delegated Responses stream event: function calls are in its output items."""
        if not isinstance(nested, dict):
            return [bad_event("response.event without an event")]
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

    def _call_function(
        self, call_id: str, function: str, arguments: dict[str, Any], at: float
    ) -> list[Command]:
        if function != END_CALL or not self.control.end_call:
            return self._refuse(call_id, function, f"there is no function named {function[:64]!r}")
        return self._end_call(call_id, at)

    # --- refer and hangup once the agent is quiet ----------------------------------------

    def _new_wait(
        self, verb: ActionVerb, target_uri: str | None, at: float, function_call_id: str | None
    ) -> _QuietWait:
        return _QuietWait(verb, target_uri, at + AUDIO_WAIT_S, function_call_id, last_speech=at)

    def _no_wait(
        self, verb: ActionVerb, target_uri: str | None, at: float, *, fallback: bool = False
    ) -> _QuietWait:
        return _QuietWait(verb, target_uri, at, fallback=fallback, last_speech=at)

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
            # Before the agent's first words, quiet is only the model thinking.
            quiet_at = wait.last_speech + (self._quiet_s if wait.spoke else SILENT_START_S)
            if event.at >= quiet_at:
                return self._act(wait)
            # The agent spoke meanwhile: look again once it may have been quiet long enough.
            return [SetTimer(QUIET_TIMER, quiet_at)]
        return []

    def _act(self, wait: _QuietWait) -> list[Command]:
        self._wait = None
        self._action_in_flight = wait
        cancel: list[Command] = [CancelTimer(key) for key in self.WAIT_TIMERS]
        if wait.verb == "refer":
            return [*cancel, PerformAction("refer", {"target_uri": wait.target_uri})]
        return [*cancel, PerformAction("hangup", None)]

    def _succeeded(self, done: Literal["hangup", "transferred"], at: float) -> list[Command]:
        """The call is ending: `session.closed` says how, unless it never comes."""
        self._done = done
        if self._closed_meanwhile():
            return []  # _action_finished finishes the call
        return [SetTimer(CLOSE_TIMER, at + CLOSE_WAIT_S)]

    def _gone_reason(self) -> str:
        return self._closed_reason or "caller_hung_up"

    def _keep_call(self, failure: ReferFailure) -> list[Command] | None:
        # A GPT-Live session cannot be given another profile: the agent keeps the call.
        return list(_speak_instruction(REFER_FAILED, SPEAK_NOW_NUDGE))

    # --- the end -------------------------------------------------------------------------

    def _closed_meanwhile(self) -> bool:
        return self._closed_reason is not None or self._socket_closed is not None

    def _session_closed(self, reason: object, at: float) -> list[Command]:
        self._closed_reason = (
            reason[:MAX_REASON_CHARS] if isinstance(reason, str) and reason else "unknown"
        )
        if self._action_in_flight is not None:
            # The answer of the refer or hangup just sent is still to come.
            return [CancelTimer(key) for key in self.WAIT_TIMERS]
        return self._finish(self._closed_reason, at)

    def _end_reason(self, fallback: str) -> str:
        """`session.closed`'s reason; without it, what sip-router itself did, or `fallback`."""
        if self._closed_reason is not None:
            return self._closed_reason
        return self._done or fallback


def _speak(text: str) -> tuple[SendEvent, SendEvent]:
    """The greeting recipe: the words as an instruction, then a nudge to begin now."""
    return _speak_instruction(say_now_instruction(text), GREETING_NUDGE)


def _speak_instruction(instruction: str, nudge: str) -> tuple[SendEvent, SendEvent]:
    return (
        SendEvent(
            {"type": "session.instructions.append", "delegation_id": None, "content": instruction}
        ),
        SendEvent({"type": "session.commentary.append", "delegation_id": None, "content": nudge}),
    )
