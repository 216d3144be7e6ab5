"""A GPT-Live call's state machine after the accept: events in, commands out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.calls.call_control import CallControl, ReferAfterAccept, ReferFailure
from app.calls.live_session import (
    CLOSE_TIMER,
    CLOSE_WAIT_S,
    GREETING_NUDGE,
    QUIET_S,
    QUIET_TIMER,
    SILENT_START_S,
    SPEAK_NOW_NUDGE,
    LiveCallSession,
)
from app.calls.session_events import (
    ActionFinished,
    Command,
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
    Turn,
)
from app.calls.sideband_session import AUDIO_TIMER, AUDIO_WAIT_S

GREETING = "Thanks for calling Lakeside Clinic."
CONTROL = CallControl(greeting=GREETING, end_call=True, transcript=True)
TARGET = "tel:+14155550150"


def message(event: dict[str, Any] | str, at: float = 1.0) -> SidebandMessage:
    return SidebandMessage(event if isinstance(event, str) else json.dumps(event), at)


def delegated_call(
    name: str = "end_call", arguments: Any = "{}", call_id: str = "call_1", at: float = 1.0
) -> SidebandMessage:
    """The Responses delegation calls a function (the product's assumed shape)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    item = {"type": "function_call", "name": name, "call_id": call_id, "arguments": text}
    return message(
        {
            "type": "response.event",
            "event_id": f"ev_{call_id}_{at}",
            "delegation_id": "del_1",
            "event": {"type": "response.output_item.done", "output_index": 0, "item": item},
        },
        at,
    )


def speech(at: float, delta: str = "Goodbye ", event_id: str | None = None) -> SidebandMessage:
    return message(
        {
            "type": "session.output_transcript.delta",
            "event_id": event_id or f"ev_out_{at}",
            "delta": delta,
        },
        at,
    )


def heard(at: float, delta: str, event_id: str | None = None) -> SidebandMessage:
    return message(
        {
            "type": "session.input_transcript.delta",
            "event_id": event_id or f"ev_in_{at}",
            "delta": delta,
        },
        at,
    )


def closed(reason: str, at: float = 9.0) -> SidebandMessage:
    return message({"type": "session.closed", "event_id": f"ev_closed_{at}", "reason": reason}, at)


def sent(commands: list[Command]) -> list[dict[str, Any]]:
    return [c.event for c in commands if isinstance(c, SendEvent)]


def actions(commands: list[Command]) -> list[PerformAction]:
    return [c for c in commands if isinstance(c, PerformAction)]


def session(control: CallControl = CONTROL, **options: Any) -> LiveCallSession:
    live = LiveCallSession("live_1", control, **options)
    live.handle(SidebandOpened(0.0))
    return live


def test_the_greeting_is_an_instruction_then_a_nudge_and_only_once() -> None:
    live = LiveCallSession("live_1", CONTROL)
    instruction, nudge = sent(live.handle(SidebandOpened(0.0)))
    assert instruction["type"] == "session.instructions.append"
    assert instruction["delegation_id"] is None
    assert GREETING in instruction["content"]
    assert nudge == {
        "type": "session.commentary.append",
        "delegation_id": None,
        "content": GREETING_NUDGE,
    }
    assert live.greeted
    assert sent(live.handle(SidebandOpened(5.0))) == []


def test_a_call_taken_over_after_its_greeting_is_not_greeted_again() -> None:
    live = LiveCallSession("live_1", CONTROL, greeted=True)
    assert sent(live.handle(SidebandOpened(0.0))) == []


def test_end_call_is_answered_then_hung_up_once_the_speech_is_quiet() -> None:
    live = session()
    commands = live.handle(delegated_call(at=1.0))
    output, more = sent(commands)
    assert output == {
        "type": "response.item.create",
        "item": {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": json.dumps({"status": "ending the call; say goodbye"}, separators=(",", ":")),
        },
    }
    assert more == {"type": "response.create"}
    assert SetTimer(QUIET_TIMER, 1.0 + QUIET_S) in commands
    assert SetTimer(AUDIO_TIMER, 1.0 + AUDIO_WAIT_S) in commands
    # The agent says goodbye: the quiet time counts from its last words.
    assert live.handle(speech(2.0)) == [SetTimer(QUIET_TIMER, 2.0 + QUIET_S)]
    live.handle(message({"type": "session.output_audio.delta", "delta": "AAAA"}, 2.2))
    assert live.handle(TimerFired(QUIET_TIMER, 2.0 + QUIET_S)) == [
        SetTimer(QUIET_TIMER, 2.2 + QUIET_S)
    ]
    assert actions(live.handle(TimerFired(QUIET_TIMER, 2.2 + QUIET_S))) == [
        PerformAction("hangup", None)
    ]
    # The same function call again (a replay or a reconnect) is not answered twice.
    assert sent(live.handle(delegated_call(at=4.0))) == []
    assert actions(live.handle(TimerFired(QUIET_TIMER, 9.0))) == []


def test_the_quiet_before_the_agents_first_words_does_not_end_the_call() -> None:
    live = session()
    live.handle(delegated_call(at=1.0))
    # The model takes a while to begin its goodbye: no hangup meanwhile.
    assert live.handle(TimerFired(QUIET_TIMER, 1.0 + QUIET_S)) == [
        SetTimer(QUIET_TIMER, 1.0 + SILENT_START_S)
    ]
    assert live.handle(speech(3.0)) == [SetTimer(QUIET_TIMER, 3.0 + QUIET_S)]
    assert actions(live.handle(TimerFired(QUIET_TIMER, 3.0 + QUIET_S))) == [
        PerformAction("hangup", None)
    ]


def test_an_agent_that_says_nothing_more_is_hung_up_after_the_silent_start() -> None:
    live = session()
    live.handle(delegated_call(at=1.0))
    live.handle(TimerFired(QUIET_TIMER, 1.0 + QUIET_S))
    assert actions(live.handle(TimerFired(QUIET_TIMER, 1.0 + SILENT_START_S))) == [
        PerformAction("hangup", None)
    ]


def test_end_call_hangs_up_at_the_latest_after_the_audio_wait() -> None:
    live = session()
    live.handle(delegated_call(at=1.0))
    for tick in range(1, 30):
        live.handle(speech(1.0 + tick * 0.5))
    commands = live.handle(TimerFired(AUDIO_TIMER, 1.0 + AUDIO_WAIT_S))
    assert actions(commands) == [PerformAction("hangup", None)]
    assert any(isinstance(c, Note) and c.what == "audio_wait_timed_out" for c in commands)


def test_after_the_hangup_session_closed_gives_the_end_reason() -> None:
    live = session()
    live.handle(delegated_call(at=1.0))
    live.handle(speech(1.0))
    live.handle(TimerFired(QUIET_TIMER, 1.0 + QUIET_S))
    # session.closed arrives before the hangup's own answer.
    assert [c for c in live.handle(closed("close_requested", 3.0)) if isinstance(c, Finish)] == []
    commands = live.handle(ActionFinished("hangup", "ok", 3.1))
    assert Finish("close_requested", 3.1) in commands
    assert (live.end_reason, live.ended_at) == ("close_requested", 3.1)


def test_without_session_closed_after_the_hangup_the_call_ends_as_hung_up() -> None:
    live = session()
    live.handle(delegated_call(at=1.0))
    live.handle(speech(1.0))
    live.handle(TimerFired(QUIET_TIMER, 1.0 + QUIET_S))
    assert SetTimer(CLOSE_TIMER, 3.0 + CLOSE_WAIT_S) in live.handle(
        ActionFinished("hangup", "ok", 3.0)
    )
    assert Finish("hangup", 8.0) in live.handle(TimerFired(CLOSE_TIMER, 8.0))


def test_session_closed_ends_the_call_with_its_reason() -> None:
    live = session()
    assert live.handle(closed("expired", 42.0))[-1] == Finish("expired", 42.0)
    assert live.end_reason == "expired"
    assert live.handle(speech(43.0)) == []


def test_a_socket_closed_without_session_closed_ends_as_realtime_calls_do() -> None:
    live = session()
    assert live.handle(SidebandClosed("caller_hung_up", 7.0))[-1] == Finish("caller_hung_up", 7.0)


def test_transcript_deltas_are_joined_into_turns() -> None:
    live = session()
    live.handle(heard(1.0, "Hello, "))
    live.handle(heard(1.1, "I need help."))
    live.handle(speech(2.0, "Of course, "))
    live.handle(speech(2.1, "what is it? "))
    live.handle(heard(3.0, "Bye."))
    # A replayed delta (same event_id) is not taken twice.
    live.handle(heard(3.0, "Bye."))
    assert live.transcript == [
        Turn("caller", "Hello, I need help.", 1.0),
        Turn("agent", "Of course, what is it?", 2.0),
        Turn("caller", "Bye.", 3.0),
    ]


def test_no_transcript_is_kept_unless_asked_for() -> None:
    live = session(CallControl(greeting=GREETING))
    live.handle(heard(1.0, "Hello"))
    assert live.transcript == []


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("transfer_call", "{}", "there is no function named 'transfer_call'"),
        ("end_call", "not json", "the arguments are not a JSON object"),
    ],
)
def test_other_function_calls_are_refused_with_an_error_output(
    name: str, arguments: str, error: str
) -> None:
    live = session()
    output, more = sent(live.handle(delegated_call(name, arguments)))
    assert json.loads(output["item"]["output"]) == {"error": error}
    assert more == {"type": "response.create"}
    assert actions(live.handle(TimerFired(QUIET_TIMER, 9.0))) == []


def test_end_call_is_refused_when_the_profile_does_not_offer_it() -> None:
    live = session(CallControl(greeting=GREETING))
    [output, _] = sent(live.handle(delegated_call()))
    assert "error" in json.loads(output["item"]["output"])


@pytest.mark.parametrize(
    "bad",
    [
        "{nope",
        "[]",
        json.dumps({"type": 5}),
        json.dumps({"type": "response.event"}),
        json.dumps({"type": "response.event", "event": {"type": "response.output_item.done"}}),
        json.dumps(
            {
                "type": "response.event",
                "event": {"type": "response.output_item.done", "item": {"type": "function_call"}},
            }
        ),
        json.dumps({"type": "session.closed", "reason": {"x": 1}}),
        json.dumps({"type": "error", "error": "text"}),
        json.dumps({"type": "session.input_transcript.delta", "delta": 7}),
        json.dumps({"type": "something.new", "event_id": ["x"]}),
    ],
)
def test_malformed_and_unknown_events_never_raise(bad: str) -> None:
    live = session()
    live.handle(message(bad))
    live.handle(TimerFired(QUIET_TIMER, 99.0))


def test_errors_are_noted_with_their_code_and_message() -> None:
    live = session()
    [note] = live.handle(
        message(
            {
                "type": "error",
                "event_id": "ev_e",
                "error": {
                    "type": "invalid_request_error",
                    "code": "unknown_parameter",
                    "message": "bad",
                    "client_event_id": "c1",
                },
            }
        )
    )
    assert isinstance(note, Note)
    assert (note.what, note.level) == ("openai_error", "warning")
    assert note.fields == {"code": "unknown_parameter", "message": "bad", "event_id": "c1"}


def test_function_answers_are_not_expected_on_live_calls() -> None:
    live = session()
    assert sent(live.handle(FunctionAnswered("call_x", 1.0, output="{}"))) == []


def refer_control(
    announce: str | None = "Connecting you to sales.", **on_error: Any
) -> CallControl:
    failure = ReferFailure(**on_error) if on_error else ReferFailure("hangup")
    return CallControl(refer=ReferAfterAccept(TARGET, announce, failure))


def test_a_refer_rule_announces_then_refers_once_quiet() -> None:
    live = LiveCallSession("live_1", refer_control())
    instruction, nudge = sent(live.handle(SidebandOpened(0.0)))
    assert "Connecting you to sales." in instruction["content"]
    assert nudge["type"] == "session.commentary.append"
    live.handle(speech(0.5))
    assert actions(live.handle(TimerFired(QUIET_TIMER, 0.5 + QUIET_S))) == [
        PerformAction("refer", {"target_uri": TARGET})
    ]
    live.handle(ActionFinished("refer", "ok", 2.5))
    assert live.transfer is not None
    assert live.transfer.status == "ok"
    assert live.handle(closed("remote_hangup", 3.0))[-1] == Finish("remote_hangup", 3.0)


def test_a_refer_rule_without_announcement_refers_at_once() -> None:
    live = LiveCallSession("live_1", refer_control(None))
    assert actions(live.handle(SidebandOpened(0.0))) == [
        PerformAction("refer", {"target_uri": TARGET})
    ]


def test_a_failed_refer_tells_the_agent_and_keeps_the_call() -> None:
    live = LiveCallSession(
        "live_1", refer_control(kind="session", session={"type": "realtime"}, control=CONTROL)
    )
    live.handle(SidebandOpened(0.0))
    live.handle(speech(0.0))
    live.handle(TimerFired(QUIET_TIMER, QUIET_S))
    commands = live.handle(ActionFinished("refer", "failed", 2.0, "400"))
    instruction, nudge = sent(commands)
    assert instruction["type"] == "session.instructions.append"
    assert "transfer" in instruction["content"]
    assert nudge["type"] == "session.commentary.append"
    assert nudge["content"] == SPEAK_NOW_NUDGE
    assert actions(commands) == []
    assert not live.ended
    assert live.transfer is not None
    assert live.transfer.status == "failed"


def test_a_failed_refer_hangs_up_when_on_error_rejects() -> None:
    live = LiveCallSession("live_1", refer_control(kind="hangup"))
    live.handle(SidebandOpened(0.0))
    live.handle(speech(0.0))
    live.handle(TimerFired(QUIET_TIMER, QUIET_S))
    commands = live.handle(ActionFinished("refer", "failed", 2.0))
    assert actions(commands) == [PerformAction("hangup", None)]
    assert sent(commands) == []


def test_a_failed_refer_tries_on_errors_refer_once() -> None:
    live = LiveCallSession("live_1", refer_control(kind="refer", target_uri="tel:+1999"))
    live.handle(SidebandOpened(0.0))
    live.handle(speech(0.0))
    live.handle(TimerFired(QUIET_TIMER, QUIET_S))
    assert actions(live.handle(ActionFinished("refer", "failed", 2.0))) == [
        PerformAction("refer", {"target_uri": "tel:+1999"})
    ]
    assert live.handle(ActionFinished("refer", "failed", 3.0)) == [
        Note("transfer", "warning", {"outcome": "failed", "detail": "", "rule_refer": True})
    ]


def test_answered_ids_passed_in_are_not_answered_again() -> None:
    live = session(answered={"call_1"})
    assert sent(live.handle(delegated_call())) == []


def test_session_started_after_attaching_changes_nothing() -> None:
    # Whether GPT-Live sends it on a sideband attached after the accept is not documented:
    # the greeting goes right after attaching, and a later session.started is passed over.
    live = session()
    started = {"type": "session.started", "event_id": "ev_s", "session": {"id": "live_1"}}
    assert live.handle(message(started)) == []
    assert not live.ended
