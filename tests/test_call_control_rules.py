"""The call-control keys of the rule language: what loads, what is refused
with its `file:line`, and what a decision carries for the call's life after the accept."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.calls.call_control import (
    CallControl,
    ReferFailure,
    control_from_json,
    control_to_json,
)
from app.outbound_urls import check_outbound_url
from app.rules.loader import load_ruleset
from app.rules.problems import RuleFileError
from app.rules.ruleset import Decision, Ruleset
from app.rules.simulation import decision_json, simulated_context

AT = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
FRONT_DESK = "sip:frontdesk@pbx.clinic.example"

CLINIC = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk:
    model: gpt-realtime
    instructions: "You answer the phone for Lakeside Clinic."
    audio: {input: {transcription: {model: gpt-4o-mini-transcribe}}}
    greeting: "Lakeside Clinic, hello {{ caller.e164 }}."
    transfer: [front_desk]
    end_call: true
    functions: [book_appointment]
    transcript: true
  night:
    extends: desk
    greeting: "We are closed."
  plain: {model: gpt-realtime}
transfer_targets:
  front_desk: {target_uri: "sip:frontdesk@pbx.clinic.example", description: the front desk}
functions:
  book_appointment:
    description: Book an appointment.
    parameters:
      type: object
      properties: {date: {type: string}}
      required: [date]
    url: https://clinic.example.com/hooks/book
    timeout_s: 8
rules:
  - name: night
    when: {called: "+14155550199"}
    accept: {profile: night}
  - name: plain
    when: {called: "+14155550198"}
    accept: {profile: plain}
  - name: sales
    when: {called: "+14155550111"}
    refer: {target_uri: "tel:+14155550150", announce: "Connecting you to sales, {{ caller.e164 }}."}
  - name: sales-desk
    when: {called: "+14155550112"}
    refer: {target_uri: "tel:+14155550150", profile: desk}
  - name: old-trunk
    when: {called: "+14155550113"}
    refer: {target_uri: "tel:+14155550150", before_accept: true}
default: {accept: {profile: desk}}
"""


def load(tmp_path: Path, text: str) -> Ruleset:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_ruleset(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        load(tmp_path, text)
    return [str(p) for p in caught.value.problems]


def decide(ruleset: Ruleset, called: str = "+14155550100") -> Decision:
    return ruleset.decide(simulated_context(ruleset, "+14155550123", called, AT))


def tool_names(body: Any) -> list[str]:
    return [tool["name"] for tool in body.get("tools", [])]


def test_a_profile_with_call_control_keys_adds_its_tools_and_keeps_its_keys_home(
    tmp_path: Path,
) -> None:
    decision = decide(load(tmp_path, CLINIC))
    assert decision.action == "accept"
    assert tool_names(decision.body) == ["transfer_call", "end_call", "book_appointment"]
    for key in ("greeting", "transfer", "end_call", "functions", "transcript"):
        assert key not in decision.body
    control = decision.control
    assert control is not None
    assert control.greeting == "Lakeside Clinic, hello +14155550123."
    assert control.transfer_targets["front_desk"].target_uri == FRONT_DESK
    assert control.end_call
    assert control.transcript
    function = control.functions["book_appointment"]
    assert (function.url, function.timeout_s) == ("https://clinic.example.com/hooks/book", 8)
    [book] = [t for t in decision.body["tools"] if t["name"] == "book_appointment"]
    assert book["parameters"]["required"] == ["date"]


def test_call_control_keys_are_inherited_through_extends(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, CLINIC), "+14155550199")
    assert decision.control is not None
    assert decision.control.greeting == "We are closed."
    assert decision.control.end_call
    assert tool_names(decision.body) == ["transfer_call", "end_call", "book_appointment"]


def test_a_profile_without_them_leaves_after_the_accept(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, CLINIC), "+14155550198")
    assert decision.control is None
    assert not decision.stays_with_call
    assert "tools" not in decision.body


def test_a_refer_is_carried_out_after_an_accept_by_default(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, CLINIC), "+14155550111")
    assert decision.action == "refer"
    assert decision.body == {"target_uri": "tel:+14155550150"}
    # The ringing call gets an accept with the built-in announcer session.
    assert decision.verb == "accept"
    assert decision.accept_body is not None
    assert decision.accept_body["type"] == "realtime"
    assert "tools" not in decision.accept_body
    assert decision.control is not None
    refer = decision.control.refer
    assert refer is not None
    assert refer.target_uri == "tel:+14155550150"
    assert refer.announce == "Connecting you to sales, +14155550123."
    # The default on_error (reject 503) hangs the live call up.
    assert refer.on_error == ReferFailure("hangup")
    assert decision.path("rtc_1") == "/realtime/calls/rtc_1/accept"


def test_a_refer_with_a_profile_accepts_with_it(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, CLINIC), "+14155550112")
    assert decision.profile == "desk"
    assert decision.accept_body is not None
    assert tool_names(decision.accept_body) == ["transfer_call", "end_call", "book_appointment"]


def test_before_accept_refers_the_ringing_call(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, CLINIC), "+14155550113")
    assert (decision.verb, decision.request_body) == ("refer", {"target_uri": "tel:+14155550150"})
    assert decision.control is None


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        (
            "{accept: {profile: plain}}",
            ReferFailure(
                "session",
                session={"type": "realtime", "model": "gpt-realtime"},
                control=CallControl(),
            ),
        ),
        ("{reject: {status_code: 503}}", ReferFailure("hangup")),
        (
            '{refer: {target_uri: "sip:desk@pbx.clinic.example"}}',
            ReferFailure("refer", target_uri="sip:desk@pbx.clinic.example"),
        ),
    ],
)
def test_on_error_says_what_a_failed_after_accept_refer_does_to_the_live_call(
    tmp_path: Path, on_error: str, expected: ReferFailure
) -> None:
    ruleset = load(tmp_path, CLINIC + f"on_error: {on_error}\n")
    decision = decide(ruleset, "+14155550111")
    assert decision.control is not None
    assert decision.control.refer is not None
    assert decision.control.refer.on_error == expected


def test_a_call_ticket_keeps_the_call_control_on_error_switches_to(tmp_path: Path) -> None:
    ruleset = load(tmp_path, CLINIC + "on_error: {accept: {profile: desk}}\n")
    control = decide(ruleset, "+14155550111").control
    assert control is not None
    assert control.refer is not None
    assert control.refer.on_error.control is not None
    assert control.refer.on_error.control.end_call
    # What another replica reads back when it takes the call over.
    assert control_from_json(json.loads(json.dumps(control_to_json(control)))) == control


def test_simulate_shows_what_happens_after_the_accept(tmp_path: Path) -> None:
    shown = decision_json(decide(load(tmp_path, CLINIC)))
    assert shown["after_accept"] == {
        "tools_added": ["transfer_call", "end_call", "book_appointment"],
        "greeting": "Lakeside Clinic, hello +14155550123.",
        "transfer_targets": {"front_desk": FRONT_DESK},
        "end_call": True,
        "functions": {"book_appointment": "https://clinic.example.com/hooks/book"},
        "transcript": True,
    }
    refer = decision_json(decide(load(tmp_path, CLINIC), "+14155550111"))
    assert refer["request"]["path"].endswith("/accept")
    assert refer["after_accept"]["refer_after_accept"]["target_uri"] == "tel:+14155550150"


def with_lines(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    [line] = [i for i, row in enumerate(text.splitlines(), 1) if needle in row]
    return line


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "transfer: [front_desk]",
            "transfer: [front_dsk]",
            "unknown transfer target 'front_dsk' (did you mean 'front_desk'?)",
        ),
        (
            "functions: [book_appointment]",
            "functions: [book_apointment]",
            "unknown function 'book_apointment' (did you mean 'book_appointment'?)",
        ),
        (
            "    end_call: true\n",
            "    end_cal: true\n",
            "unknown key 'end_cal' (did you mean 'end_call'?)",
        ),
        ("    end_call: true\n", "    end_call: sure\n", "end_call"),
        (
            "      type: object\n",
            "      type: array\n",
            'parameters must be a JSON Schema object ("type": "object")',
        ),
        (
            "      required: [date]\n",
            "      required: date\n",
            "parameters is not a valid JSON Schema",
        ),
        (
            "url: https://clinic.example.com/hooks/book",
            "url: http://clinic.example.com/hooks/book",
            "use https://",
        ),
        ("timeout_s: 8", "timeout_s: 31", "timeout_s"),
        (
            'target_uri: "sip:frontdesk@pbx.clinic.example"',
            'target_uri: "mailto:desk"',
            "target_uri must be tel:",
        ),
        ('greeting: "We are closed."', 'greeting: "{{ caller.e164 "', "greeting"),
        ("before_accept: true}", "before_accept: true, announce: hi}", "before_accept"),
        (
            '"tel:+14155550150", profile: desk}',
            '"tel:+14155550150", profile: dsk}',
            "unknown profile 'dsk' (did you mean 'desk'?)",
        ),
    ],
)
def test_call_control_problems_are_refused_with_their_line(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = with_lines(CLINIC, old, new)
    found = problems(tmp_path, text)
    line = line_of(text, new.strip().splitlines()[0])
    assert any(f"rules.yaml:{line}:" in p and message in p for p in found), found


def test_a_tool_name_clash_with_the_profile_is_refused(tmp_path: Path) -> None:
    text = with_lines(
        CLINIC,
        "  plain: {model: gpt-realtime}\n",
        "  plain:\n    model: gpt-realtime\n    end_call: true\n"
        "    tools: [{type: function, name: end_call, description: mine}]\n",
    )
    found = problems(tmp_path, text)
    assert any("adds a tool named 'end_call'" in p for p in found), found


def test_transcript_without_input_transcription_is_a_warning(tmp_path: Path) -> None:
    text = with_lines(
        CLINIC, "    audio: {input: {transcription: {model: gpt-4o-mini-transcribe}}}\n", ""
    )
    warnings = load(tmp_path, text).warnings
    assert any("transcript: true" in w and "audio.input.transcription" in w for w in warnings)
    assert not any("transcript" in w for w in load(tmp_path, CLINIC).warnings)


def test_http_to_a_private_address_loads_with_a_warning(tmp_path: Path) -> None:
    text = with_lines(
        CLINIC, "url: https://clinic.example.com/hooks/book", "url: http://10.0.0.7:8080/book"
    )
    warnings = load(tmp_path, text).warnings
    assert any("functions.book_appointment.url" in w and "unencrypted" in w for w in warnings)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://crm:8080/book", True),
        ("http://crm.default.svc/book", True),
        ("http://localhost/book", True),
        ("http://crm.example.com/book", False),
        ("http://8.8.8.8/book", False),
    ],
)
def test_functions_and_consulted_services_follow_the_same_url_rule(
    tmp_path: Path, url: str, allowed: bool
) -> None:
    assert (check_outbound_url(url)[0] is None) is allowed
    text = with_lines(CLINIC, "url: https://clinic.example.com/hooks/book", f"url: {url}")
    if allowed:
        assert any("functions.book_appointment.url" in w for w in load(tmp_path, text).warnings)
    else:
        assert any("functions.book_appointment.url" in p for p in problems(tmp_path, text))


def test_a_function_tool_listed_by_the_profile_still_warns_but_call_control_tools_do_not(
    tmp_path: Path,
) -> None:
    assert not any("function tool" in w for w in load(tmp_path, CLINIC).warnings)
    text = with_lines(
        CLINIC,
        "  plain: {model: gpt-realtime}\n",
        "  plain:\n    model: gpt-realtime\n"
        "    tools: [{type: function, name: lookup, description: nobody answers}]\n",
    )
    assert any("'lookup' is a function tool" in w for w in load(tmp_path, text).warnings)
