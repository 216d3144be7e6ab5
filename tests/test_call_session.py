"""The call's state machine after the accept: events in, commands out."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest

from app.calls.call_control import (
    CallControl,
    CompanyFunction,
    ReferAfterAccept,
    ReferFailure,
    TransferTarget,
)
from app.calls.call_session import RESPONSE_TAG_KEY, CallSession
from app.calls.session_events import (
    ActionFinished,
    CallFunction,
    CancelTimer,
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

FRONT_DESK = "sip:frontdesk@pbx.example.com"
CONTROL = CallControl(
    greeting="Thanks for calling Lakeside Clinic.",
    transfer_targets=MappingProxyType(
        {"front_desk": TransferTarget(FRONT_DESK, "the clinic's front desk")}
    ),
    end_call=True,
    functions=MappingProxyType(
        {"lookup_appointment": CompanyFunction("lookup_appointment", "https://clinic.example/fn")}
    ),
    transcript=True,
)


def message(event: dict[str, Any] | str, at: float = 1.0) -> SidebandMessage:
    return SidebandMessage(event if isinstance(event, str) else json.dumps(event), at)


def function_call(
    name: str, arguments: Any, call_id: str = "call_1", at: float = 1.0
) -> SidebandMessage:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return message(
        {
            "type": "response.function_call_arguments.done",
            "event_id": "ev",
            "response_id": "resp_agent",
            "item_id": "item_1",
            "output_index": 0,
            "call_id": call_id,
            "name": name,
            "arguments": text,
        },
        at,
    )


def sent(commands: list[Command]) -> list[dict[str, Any]]:
    return [c.event for c in commands if isinstance(c, SendEvent)]


def outputs(commands: list[Command]) -> list[tuple[str, Any]]:
    return [
        (e["item"]["call_id"], json.loads(e["item"]["output"]))
        for e in sent(commands)
        if e["type"] == "conversation.item.create"
    ]


def response_created(tag: str, response_id: str = "resp_ours") -> SidebandMessage:
    return message(
        {
            "type": "response.created",
            "event_id": "ev",
            "response": {
                "id": response_id,
                "status": "in_progress",
                "metadata": {RESPONSE_TAG_KEY: tag},
            },
        }
    )


def audio_stopped(response_id: str = "resp_ours", at: float = 3.0) -> SidebandMessage:
    return message(
        {"type": "output_audio_buffer.stopped", "event_id": "ev", "response_id": response_id}, at
    )


def tag_of(commands: list[Command]) -> str:
    for event in sent(commands):
        if event["type"] == "response.create" and "metadata" in event.get("response", {}):
            return str(event["response"]["metadata"][RESPONSE_TAG_KEY])
    raise AssertionError("no tagged response.create")


def opened(control: CallControl = CONTROL) -> CallSession:
    session = CallSession("rtc_1", control)
    session.handle(SidebandOpened(0.0))
    return session


def test_the_greeting_is_one_response_create_with_instructions_on_open() -> None:
    session = CallSession("rtc_1", CONTROL)
    commands = session.handle(SidebandOpened(0.0))
    assert sent(commands) == [
        {
            "type": "response.create",
            "response": {
                "instructions": "Say exactly this to the caller now, then continue the"
                ' conversation: "Thanks for calling Lakeside Clinic."'
            },
        }
    ]


def test_a_reconnect_does_not_greet_again() -> None:
    session = opened()
    assert sent(session.handle(SidebandOpened(5.0))) == []


def test_a_taken_over_call_is_not_greeted_again() -> None:
    session = CallSession("rtc_1", CONTROL, greeted=True)
    assert sent(session.handle(SidebandOpened(0.0))) == []


def test_no_greeting_no_event() -> None:
    session = CallSession("rtc_1", CallControl(end_call=True))
    assert session.handle(SidebandOpened(0.0)) == []


def test_transfer_call_answers_then_refers_once_the_audio_stopped() -> None:
    session = opened()
    commands = session.handle(function_call("transfer_call", {"target": "front_desk"}))
    assert outputs(commands) == [("call_1", {"status": "transferring", "target": "front_desk"})]
    kinds = [e["type"] for e in sent(commands)]
    assert kinds == ["conversation.item.create", "response.create"]
    assert SetTimer(AUDIO_TIMER, 1.0 + AUDIO_WAIT_S) in commands
    assert not any(isinstance(c, PerformAction) for c in commands)
    tag = tag_of(commands)
    assert session.handle(response_created(tag)) == []
    # The audio of another response (the agent's words before the call) is not ours.
    assert session.handle(audio_stopped("resp_agent")) == []
    commands = session.handle(audio_stopped("resp_ours"))
    assert PerformAction("refer", {"target_uri": FRONT_DESK}) in commands
    assert CancelTimer(AUDIO_TIMER) in commands
    # The timer that may still fire later does nothing more.
    assert session.handle(TimerFired(AUDIO_TIMER, 20.0)) == []
    assert session.handle(ActionFinished("refer", "ok", 4.0)) == [
        Note("transfer", "info", {"outcome": "ok", "detail": "", "rule_refer": False})
    ]
    assert session.transfer is not None
    assert (session.transfer.target_uri, session.transfer.status) == (FRONT_DESK, "ok")
    finish = session.handle(SidebandClosed("caller_hung_up", 5.0))
    assert Finish("transferred", 5.0) in finish
    assert session.end_reason == "transferred"


def test_an_interrupted_goodbye_also_lets_the_refer_go() -> None:
    session = opened()
    tag = tag_of(session.handle(function_call("transfer_call", {"target": "front_desk"})))
    session.handle(response_created(tag))
    cleared = message(
        {"type": "output_audio_buffer.cleared", "event_id": "e", "response_id": "resp_ours"}
    )
    assert PerformAction("refer", {"target_uri": FRONT_DESK}) in session.handle(cleared)


def test_the_refer_goes_after_15_s_without_audio_stopped() -> None:
    session = opened()
    session.handle(function_call("transfer_call", {"target": "front_desk"}, at=1.0))
    assert session.handle(TimerFired(AUDIO_TIMER, 15.9)) == []  # early: not yet
    commands = session.handle(TimerFired(AUDIO_TIMER, 16.0))
    assert PerformAction("refer", {"target_uri": FRONT_DESK}) in commands
    assert any(isinstance(c, Note) and c.what == "audio_wait_timed_out" for c in commands)


def test_a_failed_refer_tells_the_agent() -> None:
    session = opened()
    tag = tag_of(session.handle(function_call("transfer_call", {"target": "front_desk"})))
    session.handle(response_created(tag))
    session.handle(audio_stopped())
    commands = session.handle(ActionFinished("refer", "failed", 4.0, "HTTP 500"))
    [(call_id, output)] = outputs(commands)
    assert call_id == "call_1"
    assert "transfer to front_desk failed" in output["error"]
    assert [e["type"] for e in sent(commands)] == ["conversation.item.create", "response.create"]
    assert session.transfer is not None
    assert session.transfer.status == "failed"
    assert not session.ended
    # The agent may try again.
    again = session.handle(function_call("transfer_call", {"target": "front_desk"}, "call_2"))
    assert outputs(again) == [("call_2", {"status": "transferring", "target": "front_desk"})]


def test_an_unknown_transfer_target_is_an_error_output() -> None:
    session = opened()
    commands = session.handle(function_call("transfer_call", {"target": "billing"}))
    [(_, output)] = outputs(commands)
    assert output == {"error": "unknown transfer target; use one of: front_desk"}
    assert not any(isinstance(c, (SetTimer, PerformAction)) for c in commands)


def test_end_call_hangs_up_after_the_goodbye() -> None:
    session = opened()
    commands = session.handle(function_call("end_call", {}))
    assert outputs(commands) == [("call_1", {"status": "ending the call; say goodbye"})]
    tag = tag_of(commands)
    session.handle(response_created(tag))
    commands = session.handle(audio_stopped())
    assert PerformAction("hangup", None) in commands
    commands = session.handle(ActionFinished("hangup", "ok", 4.0))
    assert Finish("hangup", 4.0) in commands
    assert session.end_reason == "hangup"
    assert session.handle(message({"type": "response.done"})) == []


def test_end_call_hangs_up_after_15_s_without_audio_stopped() -> None:
    session = opened()
    session.handle(function_call("end_call", {}, at=2.0))
    assert PerformAction("hangup", None) in session.handle(TimerFired(AUDIO_TIMER, 17.0))


def test_a_failed_hangup_leaves_the_call_with_the_agent() -> None:
    session = opened()
    session.handle(function_call("end_call", {}))
    session.handle(TimerFired(AUDIO_TIMER, 16.0))
    commands = session.handle(ActionFinished("hangup", "failed", 17.0))
    assert [c.what for c in commands if isinstance(c, Note)] == ["hangup_failed"]
    assert not session.ended


def test_a_second_end_call_while_one_is_under_way_is_refused() -> None:
    session = opened()
    session.handle(function_call("end_call", {}, "call_1"))
    [(_, output)] = outputs(
        session.handle(function_call("transfer_call", {"target": "front_desk"}, "call_2"))
    )
    assert output == {"error": "a transfer or hang-up is already under way"}


def test_a_company_function_is_asked_and_its_answer_becomes_the_output() -> None:
    session = opened()
    commands = session.handle(function_call("lookup_appointment", {"patient": "Ann"}, at=2.0))
    assert commands == [CallFunction("call_1", "lookup_appointment", {"patient": "Ann"})]
    commands = session.handle(FunctionAnswered("call_1", 2.5, output='{"next": "Tuesday 9:00"}'))
    assert outputs(commands) == [("call_1", {"next": "Tuesday 9:00"})]
    assert sent(commands)[1] == {"type": "response.create"}
    [note] = [c for c in commands if isinstance(c, Note)]
    assert note.fields == {"function": "lookup_appointment", "outcome": "ok", "latency_s": 0.5}


def test_a_text_answer_is_passed_on_as_it_is() -> None:
    session = opened()
    session.handle(function_call("lookup_appointment", {}))
    commands = session.handle(FunctionAnswered("call_1", 2.0, output="Tuesday at nine"))
    assert sent(commands)[0]["item"]["output"] == "Tuesday at nine"


@pytest.mark.parametrize(
    "error", ["the function did not answer within 5 s", "the function answered HTTP 500"]
)
def test_a_function_error_or_timeout_becomes_an_error_output(error: str) -> None:
    session = opened()
    session.handle(function_call("lookup_appointment", {}))
    commands = session.handle(FunctionAnswered("call_1", 6.0, error=error))
    assert outputs(commands) == [("call_1", {"error": error})]
    [note] = [c for c in commands if isinstance(c, Note)]
    assert note.fields["outcome"] == "error"


def test_a_function_call_is_answered_exactly_once() -> None:
    session = opened()
    first = session.handle(function_call("lookup_appointment", {}))
    assert len([c for c in first if isinstance(c, CallFunction)]) == 1
    # The same call again (its own event, then inside response.done) asks nothing more.
    assert not [
        c
        for c in session.handle(function_call("lookup_appointment", {}))
        if not isinstance(c, Note)
    ]
    done = {
        "type": "response.done",
        "event_id": "ev",
        "response": {
            "id": "resp_agent",
            "status": "completed",
            "output": [
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "lookup_appointment",
                    "arguments": "{}",
                }
            ],
        },
    }
    assert session.handle(message(done)) == []
    answer = session.handle(FunctionAnswered("call_1", 2.0, output="{}"))
    assert len(outputs(answer)) == 1
    # A late duplicate answer and a replay after the answer are ignored.
    assert outputs(session.handle(FunctionAnswered("call_1", 3.0, output="again"))) == []
    assert outputs(session.handle(function_call("lookup_appointment", {}))) == []
    assert session.answered == {"call_1"}


def test_answered_ids_passed_in_are_not_answered_again() -> None:
    session = CallSession("rtc_1", CONTROL, answered={"call_1"}, greeted=True)
    session.handle(SidebandOpened(0.0))
    assert session.handle(function_call("end_call", {}))[0] == Note(
        "function_call_repeated", "debug", {"call_id": "call_1"}
    )


def test_a_function_call_only_seen_in_response_done_is_answered() -> None:
    session = opened()
    done = {
        "type": "response.done",
        "response": {
            "status": "completed",
            "output": [
                {"type": "message", "role": "assistant", "content": []},
                {
                    "type": "function_call",
                    "call_id": "call_9",
                    "name": "end_call",
                    "arguments": "{}",
                },
            ],
        },
    }
    assert outputs(session.handle(message(done))) == [
        ("call_9", {"status": "ending the call; say goodbye"})
    ]


def test_function_calls_of_a_cancelled_response_are_not_acted_on() -> None:
    session = opened()
    done = {
        "type": "response.done",
        "response": {
            "status": "cancelled",
            "output": [
                {
                    "type": "function_call",
                    "call_id": "call_9",
                    "name": "end_call",
                    "arguments": "{}",
                }
            ],
        },
    }
    assert session.handle(message(done)) == []


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("delete_everything", {}, "there is no function named 'delete_everything'"),
        ("lookup_appointment", "{not json", "the arguments are not a JSON object"),
        ("lookup_appointment", "[1, 2]", "the arguments are not a JSON object"),
        ("end_call", "", "the arguments are not a JSON object"),
    ],
)
def test_bad_function_calls_are_answered_with_an_error(
    name: str, arguments: Any, error: str
) -> None:
    session = opened()
    commands = session.handle(function_call(name, arguments))
    assert outputs(commands) == [("call_1", {"error": error})]
    assert [e["type"] for e in sent(commands)] == ["conversation.item.create", "response.create"]
    assert not any(isinstance(c, (CallFunction, PerformAction, SetTimer)) for c in commands)


def test_functions_the_profile_does_not_offer_are_unknown() -> None:
    session = opened(CallControl(greeting="Hi"))
    for name in ("transfer_call", "end_call"):
        [(_, output)] = outputs(session.handle(function_call(name, {"target": "x"}, call_id=name)))
        assert output == {"error": f"there is no function named {name!r}"}


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        b"\xff\xfe",
        "[]",
        '"text"',
        "{}",
        '{"type": 5}',
        json.dumps({"type": "response.function_call_arguments.done", "name": "end_call"}),
        json.dumps({"type": "response.done", "response": "nope"}),
        json.dumps({"type": "response.done", "response": {"output": {"a": 1}}}),
        json.dumps({"type": "response.created", "response": []}),
        json.dumps({"type": "error", "error": "boom"}),
        json.dumps(
            {"type": "conversation.item.input_audio_transcription.completed", "transcript": 7}
        ),
    ],
)
def test_malformed_events_never_raise_and_send_nothing(data: str | bytes) -> None:
    session = opened()
    commands = session.handle(SidebandMessage(data, 1.0))
    assert sent(commands) == []
    assert not session.ended


def test_unknown_event_types_are_passed_over_silently() -> None:
    session = opened()
    assert session.handle(message({"type": "rate_limits.updated", "rate_limits": []})) == []
    assert session.handle(message({"type": "something.new.in.2027", "x": 1})) == []


def test_server_errors_are_noted() -> None:
    session = opened()
    error = {
        "type": "error",
        "event_id": "e",
        "error": {"type": "invalid_request_error", "code": "x", "message": "m"},
    }
    [note] = session.handle(message(error))
    assert (note.what, note.fields["code"]) == ("openai_error", "x")


def test_the_transcript_keeps_both_sides_in_order_with_times() -> None:
    session = opened()
    session.handle(
        message(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "e",
                "item_id": "i",
                "content_index": 0,
                "transcript": "I need an appointment",
            },
            at=2.0,
        )
    )
    session.handle(
        message(
            {"type": "response.output_audio_transcript.done", "transcript": "Of course."}, at=3.5
        )
    )
    assert session.transcript == [
        Turn("caller", "I need an appointment", 2.0),
        Turn("agent", "Of course.", 3.5),
    ]


def test_no_transcript_unless_the_profile_asks() -> None:
    session = opened(CallControl(greeting="Hi"))
    session.handle(
        message({"type": "response.output_audio_transcript.done", "transcript": "Hello"})
    )
    assert session.transcript == []


def test_the_server_closing_the_sideband_ends_the_call() -> None:
    session = opened()
    session.handle(function_call("lookup_appointment", {}))
    commands = session.handle(SidebandClosed("caller_hung_up", 30.0))
    assert Finish("caller_hung_up", 30.0) in commands
    assert (session.end_reason, session.ended_at) == ("caller_hung_up", 30.0)
    # A function answer arriving after the end is dropped.
    assert session.handle(FunctionAnswered("call_1", 31.0, output="late")) == []


def test_a_refer_rule_announces_then_refers_after_the_audio() -> None:
    control = CallControl(
        refer=ReferAfterAccept("tel:+15550100", announce="Connecting you to sales.")
    )
    session = CallSession("rtc_1", control)
    commands = session.handle(SidebandOpened(0.0))
    [create] = sent(commands)
    assert create["response"]["instructions"].endswith('"Connecting you to sales."')
    assert SetTimer(AUDIO_TIMER, AUDIO_WAIT_S) in commands
    session.handle(response_created(tag_of(commands)))
    assert PerformAction("refer", {"target_uri": "tel:+15550100"}) in session.handle(
        audio_stopped()
    )


def test_a_refer_rule_without_announcement_refers_at_once() -> None:
    session = CallSession("rtc_1", CallControl(refer=ReferAfterAccept("tel:+15550100")))
    assert session.handle(SidebandOpened(0.0)) == [
        PerformAction("refer", {"target_uri": "tel:+15550100"})
    ]


def test_a_failed_refer_rule_hangs_up_by_default() -> None:
    session = CallSession("rtc_1", CallControl(refer=ReferAfterAccept("tel:+15550100")))
    session.handle(SidebandOpened(0.0))
    commands = session.handle(ActionFinished("refer", "failed", 1.0))
    assert [c.what for c in commands if isinstance(c, Note)] == ["transfer", "refer_rule_failed"]
    assert sent(commands) == []
    assert PerformAction("hangup", None) in commands
    assert Finish("hangup", 2.0) in session.handle(ActionFinished("hangup", "ok", 2.0))


def test_a_failed_refer_rule_with_an_accept_on_error_updates_the_live_session() -> None:
    session_body = {"type": "realtime", "instructions": "Take a message."}
    refer = ReferAfterAccept(
        "tel:+15550100", on_error=ReferFailure("session", session=session_body)
    )
    session = CallSession("rtc_1", CallControl(refer=refer))
    session.handle(SidebandOpened(0.0))
    commands = session.handle(ActionFinished("refer", "failed", 1.0))
    assert sent(commands) == [
        {"type": "session.update", "session": session_body},
        {"type": "response.create"},
    ]
    assert not [c for c in commands if isinstance(c, PerformAction)]
    assert not session.ended


def test_after_an_accept_on_error_the_call_is_under_that_profiles_call_control() -> None:
    session_body = {"type": "realtime", "instructions": "Take a message."}
    failure = ReferFailure("session", session=session_body, control=CONTROL)
    refer = ReferAfterAccept("tel:+15550100", on_error=failure)
    session = CallSession("rtc_1", CallControl(refer=refer))
    session.handle(SidebandOpened(0.0))
    session.handle(ActionFinished("refer", "failed", 1.0))
    assert session.control.refer is None
    # on_error's profile offers end_call: the agent calling it is answered and hangs up.
    commands = session.handle(function_call("end_call", {}, at=2.0))
    assert outputs(commands) == [("call_1", {"status": "ending the call; say goodbye"})]
    assert PerformAction("hangup", None) in session.handle(TimerFired(AUDIO_TIMER, 17.0))


def test_a_failed_refer_rule_with_a_refer_on_error_refers_there_once() -> None:
    refer = ReferAfterAccept(
        "tel:+15550100", on_error=ReferFailure("refer", target_uri="sip:desk@pbx.example")
    )
    session = CallSession("rtc_1", CallControl(refer=refer))
    session.handle(SidebandOpened(0.0))
    commands = session.handle(ActionFinished("refer", "failed", 1.0))
    assert PerformAction("refer", {"target_uri": "sip:desk@pbx.example"}) in commands
    # When that refer fails too, the call stays with the agent: no third action.
    again = session.handle(ActionFinished("refer", "failed", 2.0))
    assert not [c for c in again if isinstance(c, PerformAction)]
    assert session.transfer is not None
    assert session.transfer.target_uri == "sip:desk@pbx.example"


def test_function_calls_lost_with_the_previous_owner_get_one_error_output() -> None:
    session = CallSession(
        "rtc_1", CONTROL, answered={"call_done"}, greeted=True, lost={"call_lost", "call_done"}
    )
    commands = session.handle(SidebandOpened(0.0))
    assert [call_id for call_id, _ in outputs(commands)] == ["call_lost"]
    assert sent(commands)[-1] == {"type": "response.create"}
    # The agent repeating that call later is not answered again.
    assert session.handle(function_call("lookup", "{}", "call_lost")) == [
        Note("function_call_repeated", "debug", {"call_id": "call_lost"})
    ]
    assert outputs(session.handle(SidebandOpened(1.0))) == []


def test_a_refer_on_a_call_that_is_gone_ends_it() -> None:
    session = CallSession("rtc_1", CallControl(refer=ReferAfterAccept("tel:+15550100")))
    session.handle(SidebandOpened(0.0))
    assert Finish("caller_hung_up", 1.0) in session.handle(ActionFinished("refer", "gone", 1.0))


def test_an_unexpected_action_answer_is_ignored() -> None:
    session = opened()
    assert sent(session.handle(ActionFinished("hangup", "ok", 1.0))) == []
    assert not session.ended


@pytest.mark.parametrize(
    ("function", "verb", "outcome", "end_reason"),
    [
        ("end_call", "hangup", "ok", "hangup"),
        ("transfer_call", "refer", "ok", "transferred"),
        ("transfer_call", "refer", "failed", "caller_hung_up"),
    ],
)
def test_a_close_before_the_action_answer_waits_for_it(
    function: str, verb: Any, outcome: Any, end_reason: str
) -> None:
    session = opened()
    session.handle(function_call(function, {"target": "front_desk"}))
    session.handle(TimerFired(AUDIO_TIMER, 20.0))
    # The server closes the socket because of the action before its HTTP answer is in.
    assert not any(
        isinstance(c, Finish) for c in session.handle(SidebandClosed("caller_hung_up", 21.0))
    )
    assert not session.ended
    commands = session.handle(ActionFinished(verb, outcome, 21.5))
    assert Finish(end_reason, 21.5) in commands
    assert session.end_reason == end_reason
