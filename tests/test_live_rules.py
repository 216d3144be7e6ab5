"""GPT-Live in the rule language: `when: {api, media_security}`, `api: live`
profiles checked against the Live accept session, Live accept/reject/refer bodies, the
api-mismatch fallback and its `check` warnings, simulate, `tests:` cases and replay."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.call_replay import replay_calls
from app.calls.call_control import ReferFailure
from app.rules.consultation import consult_request_body
from app.rules.loader import load_ruleset
from app.rules.problems import RuleFileError
from app.rules.ruleset import Decision, Ruleset
from app.rules.simulation import decision_json, run_rule_tests, simulated_context, sip_headers_for

AT = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
CALLER = "+14155550123"
LINE = "+14155550100"

LIVE = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  voice:
    api: live
    model: gpt-live-1
    instructions: "You answer for Lakeside Clinic. The caller is {{ caller.e164 }}."
    audio: {output: {voice: {id: voice_123}}}
    delegation:
      type: responses
      responses:
        model: gpt-5-mini
        tools: [{type: web_search}]
    input:
      - {role: developer, content: [{type: input_text, text: "Called number {{ called.e164 }}"}]}
    greeting: "Lakeside Clinic, hello."
    end_call: true
    transcript: true
    max_duration_s: 600
  realtime_desk: {model: gpt-realtime}
rules:
  - name: live-calls
    when: {api: live}
    accept: {profile: voice}
default: {accept: {profile: realtime_desk}}
"""


def load(tmp_path: Path, text: str) -> Ruleset:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_ruleset(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        load(tmp_path, text)
    return [str(p) for p in caught.value.problems]


def decide(
    ruleset: Ruleset,
    api: Any = "realtime",
    media_security: str | None = None,
    caller: str = CALLER,
    explain: bool = False,
) -> Decision:
    ctx = simulated_context(ruleset, caller, LINE, AT, api=api, media_security=media_security)
    return ruleset.decide(ctx, explain=explain)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def with_lines(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


# --- conditions ------------------------------------------------------------------------------

CONDITIONS = """\
version: 1
defaults: {timezone: UTC, region: US}
rules:
  - name: plain-media
    when: {media_security: rtp}
    reject: {status_code: 488}
  - name: live-srtp
    when: {api: live, media_security: srtp}
    reject: {status_code: 486}
  - name: not-live
    when: {not: {api: live}}
    reject: {status_code: 480}
default: {reject: {status_code: 404}}
"""


@pytest.mark.parametrize(
    ("api", "media_security", "rule"),
    [
        ("realtime", "rtp", "plain-media"),
        ("live", "rtp", "plain-media"),
        ("live", "srtp", "live-srtp"),
        ("realtime", "srtp", "not-live"),
        ("live", None, None),
        ("live", "zrtp", None),
        ("live", "SRTP", None),
        ("realtime", None, "not-live"),
    ],
)
def test_api_and_media_security_conditions(
    tmp_path: Path, api: str, media_security: str | None, rule: str | None
) -> None:
    decision = decide(load(tmp_path, CONDITIONS), api, media_security)
    assert decision.rule == rule
    assert decision.api == api


def test_their_trace_reasons_say_what_the_call_had(tmp_path: Path) -> None:
    ruleset = load(tmp_path, CONDITIONS)
    reasons = [s.reason for s in decide(ruleset, "live", "srtp", explain=True).trace]
    assert reasons == [
        "media_security is srtp, not rtp",
        "api is live; media_security is srtp",
    ]
    unknown = [s.reason for s in decide(ruleset, "live", "zrtp\n", explain=True).trace]
    assert unknown[:2] == [
        "media_security is 'zrtp ' (unknown), not rtp",
        "media_security is 'zrtp ' (unknown), not srtp",
    ]
    assert decide(ruleset, "live", None, explain=True).trace[1].reason == (
        "media_security is unknown, not srtp"
    )
    assert decide(ruleset, "realtime", None, explain=True).trace[2].reason == (
        "not (api is realtime, not live)"
    )


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("{api: sip}", "Input should be 'realtime' or 'live'"),
        ("{media_security: zrtp}", "Input should be 'srtp' or 'rtp'"),
        ("{apis: live}", "unknown key 'apis' (did you mean 'api'?)"),
    ],
)
def test_bad_conditions_are_refused_with_their_line(
    tmp_path: Path, when: str, message: str
) -> None:
    text = with_lines(CONDITIONS, "{media_security: rtp}", when)
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'rules.yaml'}:{line_of(text, when)}: ")
    assert message in found[0]


# --- Live profiles: the accept body ----------------------------------------------------------


def test_a_live_profile_accepts_with_a_live_session_and_end_call_in_the_delegation(
    tmp_path: Path,
) -> None:
    decision = decide(load(tmp_path, LIVE), "live")
    assert decision.rule == "live-calls"
    assert decision.api == "live"
    assert decision.path("live_abc") == "/live/sessions/live_abc/accept"
    assert decision.max_duration_s == 600
    assert dict(decision.body) == {
        "session": {
            "type": "live",
            "model": "gpt-live-1",
            "instructions": f"You answer for Lakeside Clinic. The caller is {CALLER}.",
            "audio": {"output": {"voice": {"id": "voice_123"}}},
            "delegation": {
                "type": "responses",
                "responses": {
                    "model": "gpt-5-mini",
                    "tools": [
                        {"type": "web_search"},
                        {
                            "type": "function",
                            "name": "end_call",
                            "description": decision.body["session"]["delegation"]["responses"][
                                "tools"
                            ][1]["description"],
                            "parameters": {"type": "object", "properties": {}},
                        },
                    ],
                },
            },
            "input": [
                {
                    "role": "developer",
                    "content": [{"type": "input_text", "text": f"Called number {LINE}"}],
                }
            ],
        }
    }
    assert decision.tools_added == ("end_call",)
    assert decision.control is not None
    assert decision.control.greeting == "Lakeside Clinic, hello."
    assert decision.control.end_call
    assert decision.control.transcript
    shown = decision_json(decision)
    assert shown["api"] == "live"
    assert shown["request"]["path"] == "/live/sessions/live_simulated/accept"
    assert shown["after_accept"]["tools_added"] == ["end_call"]


def test_a_live_profile_without_call_control_needs_no_delegation(tmp_path: Path) -> None:
    text = with_lines(
        LIVE, "  realtime_desk:", "  minimal: {api: live, model: gpt-live-1}\n  realtime_desk:"
    )
    text = with_lines(text, "accept: {profile: voice}", "accept: {profile: minimal}")
    decision = decide(load(tmp_path, text), "live")
    assert dict(decision.body) == {"session": {"type": "live", "model": "gpt-live-1"}}
    assert decision.control is None


def test_extends_and_overrides_keep_the_live_schema(tmp_path: Path) -> None:
    text = with_lines(
        LIVE,
        "  realtime_desk:",
        "  night:\n    extends: voice\n    store: true\n    delegation: null\n"
        "    end_call: null\n  realtime_desk:",
    )
    text = with_lines(
        text,
        "accept: {profile: voice}",
        "accept:\n      profile: night\n"
        "      overrides: {instructions: Closed., audio: {output: {voice: cedar}}}",
    )
    decision = decide(load(tmp_path, text), "live")
    session = decision.body["session"]
    assert session["store"] is True
    assert "delegation" not in session
    assert session["instructions"] == "Closed."
    assert session["audio"] == {"output": {"voice": "cedar"}}


LIVE_PROFILE_PROBLEMS = [
    pytest.param(
        "    model: gpt-live-1\n",
        "",
        "  voice:",
        "a GPT-Live profile must name its model: there is no default (for example gpt-live-1)",
        id="no model",
    ),
    pytest.param(
        "    max_duration_s: 600\n",
        "    max_duration_s: 600\n    tools: []\n",
        "    tools: []",
        "unknown key 'tools': GPT-Live refuses it (the session takes model, instructions,"
        " audio, delegation, store, input)",
        id="realtime key",
    ),
    pytest.param(
        "    max_duration_s: 600\n",
        "    max_duration_s: 600\n    stor: true\n",
        "    stor: true",
        "unknown key 'stor' (did you mean 'store'?): GPT-Live refuses it",
        id="did you mean",
    ),
    pytest.param(
        "    max_duration_s: 600\n",
        "    max_duration_s: 600\n    type: live\n",
        "    type: live",
        'type is always "live" and is added by sip-router',
        id="type",
    ),
    pytest.param(
        "{output: {voice: {id: voice_123}}}",
        "{output: {voice: marin, speed: 1.2}}",
        "    audio:",
        "unknown key 'speed': GPT-Live refuses it (audio.output takes voice)",
        id="speed",
    ),
    pytest.param(
        "{output: {voice: {id: voice_123}}}",
        "{output: {format: {type: audio/pcm}}}",
        "    audio:",
        "the audio format must not be set: on SIP calls the codec is negotiated by the trunk",
        id="format",
    ),
    pytest.param(
        "        model: gpt-5-mini\n",
        "        model: gpt-5-mini\n        temperature: 1\n",
        "        temperature: 1",
        "unknown key 'temperature': GPT-Live refuses it (delegation.responses takes model,",
        id="responses key",
    ),
    pytest.param(
        "      type: responses\n",
        "      type: server\n",
        "      type: server",
        'delegation type must be one of "client", "responses"',
        id="delegation type",
    ),
    pytest.param(
        "tools: [{type: web_search}]",
        "tools: [{type: function, name: look up}]",
        "        tools:",
        "String should match pattern",
        id="tool name",
    ),
    pytest.param(
        "tools: [{type: web_search}]",
        "tools: [{type: function, name: end_call}]",
        "    end_call: true",
        "adds a tool named 'end_call' to delegation.responses.tools, and they already have one",
        id="end_call clash",
    ),
    pytest.param(
        "{role: developer, content",
        "{role: system, content",
        "      - {role: system",
        'message role must be one of "developer", "user", "assistant"',
        id="input role",
    ),
    pytest.param(
        "    max_duration_s: 600\n",
        "    max_duration_s: 600\n    store: 'true'\n",
        "    store: 'true'",
        "Input should be a valid boolean",
        id="store",
    ),
    pytest.param(
        "    api: live\n",
        "    api: sip\n",
        "    api: sip",
        "api must be realtime or live",
        id="api value",
    ),
    pytest.param(
        "    transcript: true\n",
        "    transcript: true\n    transfer: [desk]\n",
        "    transfer: [desk]",
        "transfer is not available on GPT-Live: function tools on GPT-Live run through its"
        " delegation protocol; sip-router offers end_call only",
        id="transfer",
    ),
    pytest.param(
        "    transcript: true\n",
        "    transcript: true\n    functions: [book]\n",
        "    functions: [book]",
        "functions is not available on GPT-Live: function tools on GPT-Live run through its"
        " delegation protocol",
        id="functions",
    ),
    pytest.param(
        "    delegation:\n      type: responses\n      responses:\n        model: gpt-5-mini\n"
        "        tools: [{type: web_search}]\n",
        "    delegation: {type: client}\n",
        "    end_call: true",
        "end_call on GPT-Live needs delegation: {type: responses, responses: {model: ...}}: the"
        " agent calls end_call through the Responses delegation",
        id="end_call without responses",
    ),
    pytest.param(
        'instructions: "You answer for Lakeside Clinic. The caller is {{ caller.e164 }}."',
        'instructions: "Hello {{ caller.e164 "',
        "    instructions:",
        "template",
        id="template",
    ),
    pytest.param(
        "accept: {profile: voice}",
        "accept: {profile: voice, overrides: {api: realtime}}",
        "    accept: {profile: voice, overrides",
        "api is not allowed in overrides (use a profile)",
        id="api override",
    ),
    pytest.param(
        "accept: {profile: voice}",
        "accept: {profile: voice, overrides: {output_modalities: [text]}}",
        "    accept: {profile: voice, overrides",
        "unknown key 'output_modalities': GPT-Live refuses it",
        id="override key",
    ),
]


@pytest.mark.parametrize(("old", "new", "where", "message"), LIVE_PROFILE_PROBLEMS)
def test_live_profile_problems_are_refused_with_their_line(
    tmp_path: Path, old: str, new: str, where: str, message: str
) -> None:
    text = with_lines(LIVE, old, new)
    text = text.replace(
        "rules:\n",
        "transfer_targets: {desk: {target_uri: 'sip:d@pbx.example'}}\n"
        "functions: {book: {url: 'https://clinic.example/book'}}\nrules:\n",
    )
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'rules.yaml'}:{line_of(text, where)}: "), found
    assert message in found[0], found


def test_a_misspelt_live_voice_loads_with_a_warning(tmp_path: Path) -> None:
    text = with_lines(LIVE, "{output: {voice: {id: voice_123}}}", "{output: {voice: meridan}}")
    warnings = load(tmp_path, text).warnings
    assert any(
        "'meridan' is not a built-in GPT-Live voice (did you mean 'meridian'?)" in w
        for w in warnings
    ), warnings
    assert not any(
        "voice" in w
        for w in load(
            tmp_path,
            with_lines(LIVE, "{output: {voice: {id: voice_123}}}", "{output: {voice: vesper}}"),
        ).warnings
    )


def test_a_function_tool_of_the_backend_warns_that_nothing_answers_it(tmp_path: Path) -> None:
    text = with_lines(LIVE, "tools: [{type: web_search}]", "tools: [{type: function, name: crm}]")
    warnings = load(tmp_path, text).warnings
    assert [w for w in warnings if "'crm' is a function tool" in w], warnings
    assert not [w for w in load(tmp_path, LIVE).warnings if "function tool" in w]


# --- api mismatch ----------------------------------------------------------------------------

MIXED = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  live_agent: {api: live, model: gpt-live-1}
  desk: {model: gpt-realtime}
rules:
  - name: anyone
    when: {caller: "+1415*"}
    accept: {profile: live_agent}
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 500}}
"""


def test_a_live_profile_on_a_realtime_call_applies_on_error(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, MIXED), "realtime")
    assert (decision.rule, decision.action, dict(decision.body)) == (
        "anyone",
        "reject",
        {"status_code": 500},
    )
    assert decision.error == (
        "profile 'live_agent' is for GPT-Live (api: live), but the call was announced on Realtime"
    )
    assert (decision.failed, decision.failed_profile) == ("accept", "live_agent")
    assert decision.path("rtc_x") == "/realtime/calls/rtc_x/reject"


def test_a_realtime_profile_on_a_live_call_applies_on_error(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, MIXED), "live", caller="+12125550123")
    assert decision.rule is None
    assert dict(decision.body) == {"status_code": 500}
    assert decision.path("live_x") == "/live/sessions/live_x/reject"
    assert decision.error is not None
    assert "announced on GPT-Live" in decision.error


def test_an_on_error_accept_of_the_other_api_falls_back_to_503(tmp_path: Path) -> None:
    text = with_lines(
        MIXED, "on_error: {reject: {status_code: 500}}", "on_error: {accept: {profile: desk}}"
    )
    decision = decide(load(tmp_path, text), "live", caller="+12125550123")
    assert dict(decision.body) == {"status_code": 503}
    assert decision.error == (
        "profile 'desk' is for Realtime (api: realtime), but the call was announced on"
        " GPT-Live; on_error: profile 'desk' is for Realtime (api: realtime), but the call"
        " was announced on GPT-Live"
    )
    # On a Realtime call the same on_error answers it.
    assert decide(load(tmp_path, text), "realtime").profile == "desk"


def test_live_rejects_carry_a_status_code_and_the_default_one(tmp_path: Path) -> None:
    text = """\
    version: 1
    rules:
      - {name: busy, when: {api: live, caller: "+1415*"}, reject: {status_code: 486}}
    default: {reject: {}}
    """
    ruleset = load(tmp_path, text)
    assert dict(decide(ruleset, "live").body) == {"status_code": 486}
    default = decide(ruleset, "live", caller="+12125550123")
    assert (default.path("live_x"), dict(default.body)) == (
        "/live/sessions/live_x/reject",
        {"status_code": 603},
    )


# --- check warnings --------------------------------------------------------------------------


def warnings_of(tmp_path: Path, text: str) -> list[str]:
    return list(load(tmp_path, text).warnings)


def test_check_warns_where_a_profile_can_meet_calls_of_the_other_api(tmp_path: Path) -> None:
    file = tmp_path / "rules.yaml"
    found = warnings_of(tmp_path, MIXED)
    assert found == [
        f"{file}:{line_of(MIXED, '- name: anyone')}: warning: rule 'anyone': profile"
        " 'live_agent' is for GPT-Live (api: live), and this rule can also match Realtime"
        " calls: they get on_error (narrow it with when: {api: live})",
        f"{file}:{line_of(MIXED, 'default:')}: warning: default: profile 'desk' is for"
        " Realtime (api: realtime), and the default can be reached by GPT-Live calls: they"
        " get on_error (give those calls a rule of their own before the default)",
    ]


def test_check_follows_api_conditions_and_the_rules_that_catch_an_api(tmp_path: Path) -> None:
    text = with_lines(MIXED, 'when: {caller: "+1415*"}', "when: {api: live}")
    assert warnings_of(tmp_path, text) == []
    # A rule narrowed with `not`, `any` or `all` is followed too.
    text = with_lines(MIXED, 'when: {caller: "+1415*"}', "when: {not: {api: realtime}}")
    assert warnings_of(tmp_path, text) == []
    text = with_lines(
        MIXED, 'when: {caller: "+1415*"}', 'when: {all: [{api: live}, {caller: "+1415*"}]}'
    )
    found = warnings_of(tmp_path, text)
    assert len(found) == 1
    assert "default: profile 'desk'" in found[0]


def test_on_error_accepts_warn_in_files_that_use_live(tmp_path: Path) -> None:
    text = with_lines(
        MIXED, "on_error: {reject: {status_code: 500}}", "on_error: {accept: {profile: desk}}"
    )
    text = with_lines(text, 'when: {caller: "+1415*"}', "when: {api: live}")
    assert warnings_of(tmp_path, text) == [
        f"{tmp_path / 'rules.yaml'}:{line_of(text, 'on_error:')}: warning: on_error: profile"
        " 'desk' is for Realtime (api: realtime), and on_error can apply to GPT-Live calls:"
        " the caller gets SIP 503 instead (on_error answers calls of both APIs: a reject fits"
        " both)"
    ]


def test_realtime_only_files_get_no_api_warnings(tmp_path: Path) -> None:
    text = """\
    version: 1
    profiles: {desk: {model: gpt-realtime}, other: {model: gpt-realtime}}
    rules:
      - name: r
        when: {caller: "+1415*"}
        refer: {target_uri: "sip:a@pbx.example", profile: other}
    default: {accept: {profile: desk}}
    on_error: {accept: {profile: desk}}
    """
    assert warnings_of(tmp_path, text) == []
    # An `api` condition alone makes a file one that uses GPT-Live.
    found = warnings_of(tmp_path, text.replace('caller: "+1415*"', "api: realtime"))
    assert any("default: profile 'desk'" in w for w in found), found
    assert any("on_error: profile 'desk'" in w for w in found), found


def test_a_refer_with_a_realtime_profile_warns_of_the_live_announcer(tmp_path: Path) -> None:
    text = with_lines(
        MIXED,
        "accept: {profile: live_agent}",
        'refer: {target_uri: "sip:a@pbx.example", profile: desk}',
    )
    found = warnings_of(tmp_path, text)
    assert (
        "rule 'anyone': profile 'desk' is for Realtime, and this rule can also match GPT-Live"
        " calls: on those the refer accepts with the built-in GPT-Live announcer instead"
    ) in found[0]


def test_split_choices_are_checked_each(tmp_path: Path) -> None:
    text = with_lines(
        MIXED,
        "accept: {profile: live_agent}",
        "accept: {split: [{profile: live_agent, weight: 1}, {profile: desk, weight: 1}]}",
    )
    found = warnings_of(tmp_path, text)
    assert sum("rule 'anyone'" in w for w in found) == 2


# --- refer on Live calls ---------------------------------------------------------------------

REFERS = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  live_agent: {api: live, model: gpt-live-1, instructions: "Hello {{ caller.e164 }}"}
  desk: {model: gpt-realtime}
rules:
  - name: plain
    when: {caller: "+14155550123"}
    refer: {target_uri: "sip:desk@pbx.example", announce: "Connecting you."}
  - name: with-desk
    when: {caller: "+14155550124"}
    refer: {target_uri: "sip:desk@pbx.example", profile: desk}
  - name: with-live
    when: {caller: "+14155550125"}
    refer: {target_uri: "sip:desk@pbx.example", profile: live_agent}
  - name: ringing
    when: {caller: "+14155550126"}
    refer: {target_uri: "tel:+18005550100", before_accept: true}
default: {reject: {}}
on_error: {accept: {profile: live_agent}}
"""


def test_a_refer_on_a_live_call_accepts_with_the_live_announcer(tmp_path: Path) -> None:
    ruleset = load(tmp_path, REFERS)
    for caller in ("+14155550123", "+14155550124"):
        decision = decide(ruleset, "live", caller=caller)
        assert decision.action == "refer"
        assert decision.path("live_x") == "/live/sessions/live_x/accept"
        assert decision.accept_body is not None
        session = decision.accept_body["session"]
        assert (session["type"], session["model"]) == ("live", "gpt-live-1")
        assert "announcements" in session["instructions"]
        assert dict(decision.body) == {"target_uri": "sip:desk@pbx.example"}
        assert decision.control is not None
        assert decision.control.refer is not None
    plain = decide(ruleset, "live", caller="+14155550123")
    assert plain.control is not None
    assert plain.control.refer is not None
    assert plain.control.refer.announce == "Connecting you."


def test_a_refer_with_a_live_profile_uses_it_on_live_and_fails_on_realtime(
    tmp_path: Path,
) -> None:
    ruleset = load(tmp_path, REFERS)
    live = decide(ruleset, "live", caller="+14155550125")
    assert live.accept_body == {
        "session": {"type": "live", "model": "gpt-live-1", "instructions": "Hello +14155550125"}
    }
    assert live.profile == "live_agent"
    realtime = decide(ruleset, "realtime", caller="+14155550125")
    assert realtime.error is not None
    assert "profile 'live_agent' is for GPT-Live" in realtime.error
    # on_error is a Live accept, which cannot answer a Realtime call either: SIP 503.
    assert dict(realtime.body) == {"status_code": 503}
    # A refer without a profile keeps the Realtime announcer on Realtime calls.
    plain = decide(ruleset, "realtime", caller="+14155550123")
    assert plain.accept_body is not None
    assert plain.accept_body["type"] == "realtime"


def test_before_accept_refers_the_ringing_live_call(tmp_path: Path) -> None:
    decision = decide(load(tmp_path, REFERS), "live", caller="+14155550126")
    assert decision.path("live_x") == "/live/sessions/live_x/refer"
    assert dict(decision.body) == {"target_uri": "tel:+18005550100"}


def test_a_failed_live_refer_falls_back_to_the_live_on_error_session(tmp_path: Path) -> None:
    ruleset = load(tmp_path, REFERS)
    live = decide(ruleset, "live", caller="+14155550123")
    assert live.control is not None
    assert live.control.refer is not None
    assert live.control.refer.on_error == ReferFailure(
        "session",
        session={"type": "live", "model": "gpt-live-1", "instructions": "Hello +14155550123"},
        control=live.control.refer.on_error.control,
    )
    realtime = decide(ruleset, "realtime", caller="+14155550123")
    assert realtime.control is not None
    assert realtime.control.refer is not None
    assert realtime.control.refer.on_error.kind == "hangup"


# --- tests: cases, replay --------------------------------------------------------------------


def test_rule_file_tests_take_api_and_media_security(tmp_path: Path) -> None:
    text = LIVE + textwrap.dedent(
        """\
        tests:
          - {from: "+14155550123", to: "+14155550100", api: live, expect: live-calls}
          - {from: "+14155550123", to: "+14155550100", expect: default}
          - {from: "+14155550123", to: "+14155550100", api: live, media_security: srtp,
             expect: default}
        """
    )
    results = run_rule_tests(load(tmp_path, text), AT)
    assert [r.passed for r in results] == [True, True, False]
    assert results[2].description == "+14155550123 -> +14155550100 on live"
    assert results[2].failure == "expected rule default, got accept by live-calls"


def test_replay_decides_recorded_calls_with_their_api(tmp_path: Path) -> None:
    ruleset = load(tmp_path, LIVE)
    headers = [list(pair) for pair in sip_headers_for(CALLER, LINE)]
    created = int(AT.timestamp())

    def record(call_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return {
            "call_id": call_id,
            "decision": {"rule": "default", "action": "accept"},
            "inputs": {"created_at": created, "sip_headers": headers, **inputs},
        }

    report = replay_calls(
        ruleset,
        [
            record("live_1", {"api": "live", "media_security": "srtp"}),
            record("rtc_1", {}),
            record("rtc_2", {"api": "realtime"}),
            record("bad_1", {"api": "sip"}),
        ],
    )
    assert (report.calls, report.skipped) == (3, 1)
    assert [(c.call_id, c.after["rule"]) for c in report.changed] == [("live_1", "live-calls")]


def test_a_consulted_service_is_told_the_call_s_api(tmp_path: Path) -> None:
    ruleset = load(tmp_path, LIVE)
    ctx = simulated_context(ruleset, CALLER, LINE, AT, api="live")
    assert consult_request_body(ctx, "ask")["api"] == "live"
    realtime = simulated_context(ruleset, CALLER, LINE, AT)
    assert consult_request_body(realtime, "ask")["api"] == "realtime"


def test_a_consulted_service_s_live_accept_is_checked_against_the_live_session(
    tmp_path: Path,
) -> None:
    text = with_lines(
        LIVE,
        "rules:\n",
        "services: {crm: {url: 'https://crm.example/decide'}}\n"
        "rules:\n  - {name: ask, consult: crm}\n",
    )
    ruleset = load(tmp_path, text)
    ctx = simulated_context(ruleset, CALLER, LINE, AT, api="live")
    answer = {"accept": {"profile": "voice", "overrides": {"instructions": "From the CRM."}}}
    decision = ruleset.decide(ctx, answers={"crm": answer})
    assert decision.rule == "ask"
    assert decision.body["session"]["instructions"] == "From the CRM."
    assert decision.body["session"]["delegation"]["responses"]["tools"][-1]["name"] == "end_call"
    # The Live input texts stay templates; the overridden instructions are taken as written.
    assert decision.body["session"]["input"][0]["content"][0]["text"] == f"Called number {LINE}"
    bad = {"accept": {"profile": "voice", "overrides": {"tools": []}}}
    refused = ruleset.decide(ctx, answers={"crm": bad})
    assert refused.rule == "live-calls"
    assert refused.consulted[0].outcome == "invalid"
    assert "unknown key 'tools'" in str(refused.consulted[0].reason)
    # A service answering with the api is refused like a rule's overrides.
    api = {"accept": {"profile": "voice", "overrides": {"api": "realtime"}}}
    assert ruleset.decide(ctx, answers={"crm": api}).consulted[0].outcome == "invalid"
