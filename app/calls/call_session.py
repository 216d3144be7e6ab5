"""One Realtime call's life after the accept, as a pure state machine: events in, commands out.

No sockets and no clock: every event carries its time (`at`, seconds on the driver's
clock) and timers are commands with an absolute deadline. The driver
(`sideband_connection.py`) feeds it what the sideband, the call endpoints and the
company's functions say, and carries out what it asks for. What a call does whatever its
API is `sideband_session.SidebandSession`; here is what the Realtime sideband says and
asks: responses tagged in their metadata, their audio stopping, transfers and the
company's functions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Unpack

from app.calls.call_control import END_CALL, TRANSFER_CALL, CallControl, ReferFailure
from app.calls.session_events import (
    ActionVerb,
    CallFunction,
    CancelTimer,
    Command,
    FunctionAnswered,
    Note,
    PerformAction,
    SendEvent,
    SetTimer,
    TimerFired,
)
from app.calls.sideband_session import (
    AUDIO_TIMER,
    AUDIO_WAIT_S,
    ActionWait,
    SessionMemory,
    SidebandSession,
)

# Marks the responses sip-router asks for, so their audio can be told from the agent's own.
RESPONSE_TAG_KEY = "sip_router"


@dataclass(slots=True)
class _AudioWait(ActionWait):
    """A refer or hangup that waits for the agent's words (the response tagged `tag`)."""

    # Empty for a refer or hangup carried out right away (no response, no timer).
    tag: str = ""
    response_id: str | None = None


@dataclass(slots=True)
class _PendingFunction:
    name: str
    started_at: float


class CallSession(SidebandSession[_AudioWait]):
    """The state of one Realtime call after the accept; `handle` is its only way in.

    `answered`, `greeted` and `lost` are what a call taken over remembers (see
    `SidebandSession`). The agent's words are over when the audio of the response
    sip-router tagged has stopped.
    """

    OUTPUT_EVENT: ClassVar[str] = "conversation.item.create"
    WAIT_TIMERS: ClassVar[tuple[str, ...]] = (AUDIO_TIMER,)
    TIMERS: ClassVar[tuple[str, ...]] = (AUDIO_TIMER,)

    def __init__(self, call_id: str, control: CallControl, **memory: Unpack[SessionMemory]) -> None:
        super().__init__(call_id, control, **memory)
        self._pending: dict[str, _PendingFunction] = {}
        self._tags = 0

    @property
    def asking(self) -> frozenset[str]:
        """The function calls whose company function is being asked right now."""
        return frozenset(self._pending)

    # --- the sideband speaks Realtime ----------------------------------------------------

    def _say_now(self, text: str, wait: _AudioWait | None) -> list[Command]:
        metadata = {RESPONSE_TAG_KEY: wait.tag} if wait is not None else None
        return [SendEvent(_response_create(instructions=_say(text), metadata=metadata))]

    def _response_for(self, wait: _AudioWait | None) -> dict[str, Any]:
        tag = wait.tag if wait is not None else None
        return _response_create(metadata={RESPONSE_TAG_KEY: tag} if tag else None)

    def _event(self, event: dict[str, Any], at: float) -> list[Command]:
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
            return self._openai_error(event)
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
        if self.control.transcript and isinstance(text, str):
            self._add_turn(role, text, at)
        return []

    # --- function calls ------------------------------------------------------------------

    def _call_function(
        self, call_id: str, function: str, arguments: dict[str, Any], at: float
    ) -> list[Command]:
        if function == TRANSFER_CALL and self.control.transfer:
            return self._transfer(call_id, arguments, at)
        if function == END_CALL and self.control.end_call:
            return self._end_call(call_id, at)
        if function in self.control.functions:
            self._pending[call_id] = _PendingFunction(function, at)
            return [CallFunction(call_id, function, arguments)]
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
            *self._answer(call_id, output, wait=wait),
            *self._timers_for(wait),
            Note(
                "function_call",
                fields={"function": TRANSFER_CALL, "outcome": "ok", "latency_s": 0.0},
            ),
        ]

    def _function_answered(self, event: FunctionAnswered) -> list[Command]:
        pending = self._pending.pop(event.call_id, None)
        if pending is None:
            return super()._function_answered(event)
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

    # --- refer and hangup after the agent's words ----------------------------------------

    def _new_wait(
        self, verb: ActionVerb, target_uri: str | None, at: float, function_call_id: str | None
    ) -> _AudioWait:
        self._tags += 1
        return _AudioWait(
            verb, target_uri, at + AUDIO_WAIT_S, function_call_id, tag=f"{verb}-{self._tags}"
        )

    def _no_wait(
        self, verb: ActionVerb, target_uri: str | None, at: float, *, fallback: bool = False
    ) -> _AudioWait:
        return _AudioWait(verb, target_uri, at, fallback=fallback)

    def _timers_for(self, wait: _AudioWait) -> list[Command]:
        return [SetTimer(AUDIO_TIMER, wait.deadline)]

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

    def _succeeded(self, done: Literal["hangup", "transferred"], at: float) -> list[Command]:
        self._done = done  # nothing more is carried out on this call
        if done == "transferred":
            # The caller is with the target now; the sideband closing ends the call.
            return []
        return self._finish("hangup", at)

    def _gone_reason(self) -> str:
        return "caller_hung_up"

    def _keep_call(self, failure: ReferFailure) -> list[Command] | None:
        if failure.session is None:
            return None
        # The agent keeps the call with on_error's profile, and speaks to the caller.
        update = {"type": "session.update", "session": dict(failure.session)}
        if failure.control is not None:
            # Its tools (transfer, end_call, functions) are answered from now on.
            self.control = replace(failure.control, refer=None, transcript=self.control.transcript)
        return [SendEvent(update), SendEvent(_response_create())]

    # --- the end -------------------------------------------------------------------------

    def _end_reason(self, fallback: str) -> str:
        if self.transfer is not None and self.transfer.status == "ok":
            return "transferred"
        if self._done is not None:
            return "hangup"
        return fallback

    def _finish(self, reason: str, at: float) -> list[Command]:
        self._pending.clear()
        return super()._finish(reason, at)


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
