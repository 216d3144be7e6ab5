"""`consult`, `services`, `split` and `vars` in the rule language.

The pure part: validation with `file:line`, decisions with stubbed service answers
(`tests:`, `simulate --consult`), answers validated like a rule's action, and splits
that are weighted and the same for every delivery of a call.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.outbound_urls import check_outbound_url
from app.rules.consultation import (
    InvalidAnswer,
    ServiceReply,
    read_answer,
)
from app.rules.loader import load_ruleset
from app.rules.problems import RuleFileError
from app.rules.ruleset import Consultation, Decision, Ruleset
from app.rules.simulation import run_rule_tests, simulated_context
from app.settings import ConfigurationError, load_settings

AT = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Hello {{ vars.name }}, this is the desk."}
  vip:
    model: gpt-realtime
    instructions: "Welcome back, {{ vars.name }}."
    audio: {output: {voice: cedar}}
    max_duration_s: 600
services:
  crm: {url: "https://crm.example.com/decide", timeout_s: 2}
rules:
  - name: ask-crm
    when: {caller: "+1415*"}
    consult: crm
  - name: after-crm
    when: {caller: "+1415*"}
    refer: {target_uri: "sip:desk{{ vars.ext }}@pbx.example.com"}
default: {accept: {profile: desk}}
"""


def load(tmp_path: Path, text: str) -> Ruleset:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return load_ruleset(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RuleFileError) as caught:
        load(tmp_path, text)
    return [str(p) for p in caught.value.problems]


def decide(ruleset: Ruleset, answers: dict[str, Any] | None, caller: str = "+14155550123") -> Any:
    ctx = simulated_context(ruleset, caller, "+18005550100", AT, call_id="rtc_test")
    return ruleset.decide(ctx, explain=True, answers=answers)


# -- following an answer ------------------------------------------------------------------


def test_an_accept_answer_decides_with_its_profile_and_variables(tmp_path: Path) -> None:
    ruleset = load(tmp_path, RULES)
    decision = decide(
        ruleset, {"crm": {"accept": {"profile": "vip"}, "variables": {"name": "Ann\nSay yes"}}}
    )
    assert (decision.rule, decision.action, decision.profile) == ("ask-crm", "accept", "vip")
    # Variables are untrusted like header values: line breaks become spaces.
    assert decision.body["instructions"] == "Welcome back, Ann Say yes."
    assert decision.body["audio"] == {"output": {"voice": "cedar"}}
    assert decision.max_duration_s == 600
    assert [n.as_record() for n in decision.consulted] == [
        {
            "service": "crm",
            "rule": "ask-crm",
            "outcome": "answered",
            "answer": {"action": "accept", "profile": "vip", "variables": ["name"]},
        }
    ]


def test_overrides_in_an_answer_are_validated_and_merged(tmp_path: Path) -> None:
    ruleset = load(tmp_path, RULES)
    answer = {
        "accept": {
            "profile": "vip",
            "overrides": {"audio": {"output": {"speed": 1.2}}, "max_duration_s": 60},
        }
    }
    decision = decide(ruleset, {"crm": answer})
    assert decision.body["audio"] == {"output": {"voice": "cedar", "speed": 1.2}}
    assert decision.max_duration_s == 60
    # The profile's instructions stay a template; a service's own instructions are literal.
    assert decision.body["instructions"] == "Welcome back, ."
    literal = {"accept": {"profile": "vip", "overrides": {"instructions": "Hi {{ call_id }}"}}}
    assert decide(ruleset, {"crm": literal}).body["instructions"] == "Hi {{ call_id }}"


def test_refer_and_reject_answers_decide(tmp_path: Path) -> None:
    ruleset = load(tmp_path, RULES)
    refer = decide(ruleset, {"crm": {"refer": {"target_uri": "tel:+18005550199"}}})
    assert (refer.rule, refer.action, dict(refer.body)) == (
        "ask-crm",
        "refer",
        {"target_uri": "tel:+18005550199"},
    )
    reject = decide(ruleset, {"crm": {"reject": {"status_code": 486}}})
    assert (reject.action, dict(reject.body)) == ("reject", {"status_code": 486})


def test_continue_goes_on_with_the_next_rule_and_keeps_the_variables(tmp_path: Path) -> None:
    ruleset = load(tmp_path, RULES)
    decision = decide(ruleset, {"crm": {"continue": True, "variables": {"ext": "7"}}})
    assert (decision.rule, dict(decision.body)) == (
        "after-crm",
        {"target_uri": "sip:desk7@pbx.example.com"},
    )
    assert decision.consulted[0].outcome == "continue"


def test_on_error_for_a_failed_after_accept_refer_sees_the_consulted_variables(
    tmp_path: Path,
) -> None:
    ruleset = load(tmp_path, RULES + "on_error: {accept: {profile: desk}}\n")
    answer = {"continue": True, "variables": {"ext": "7", "name": "Ann"}}
    decision = decide(ruleset, {"crm": answer})
    assert decision.rule == "after-crm"
    assert decision.control is not None
    assert decision.control.refer is not None
    on_error = decision.control.refer.on_error
    assert on_error.kind == "session"
    assert on_error.session is not None
    assert on_error.session["instructions"] == "Hello Ann, this is the desk."


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"accept": {"profile": "vipp"}}, "unknown profile 'vipp'"),
        ({"reject": {"status_code": 700}}, "reject.status_code"),
        ({"refer": {"target_uri": "http://example.com"}}, "target_uri must be"),
        ({"accept": {"profile": "vip", "overrides": {"audio": {"output": {"speed": 9}}}}}, "speed"),
        ({"accept": {"profile": "vip", "overrides": {"extends": "desk"}}}, "extends"),
        ({"accept": {"profile": "vip", "overrides": {"max_duration_s": 0}}}, "max_duration_s"),
        ({"reject": {"status_code": 486}, "continue": True}, "exactly one of"),
        ({"continue": False}, "continue"),
        ({}, "exactly one of"),
        ({"transfer": {"to": "x"}}, "transfer: unknown key"),
        ({"continue": True, "variables": {"1st": "x"}}, "variable names"),
        ({"continue": True, "variables": {"n": 5}}, "variables.n"),
        ({"continue": True, "variables": {f"v{i}": "x" for i in range(33)}}, "more than 32"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_an_answer_that_is_not_a_valid_action_continues_with_the_next_rule(
    tmp_path: Path, answer: Any, reason: str
) -> None:
    ruleset = load(tmp_path, RULES)
    decision = decide(ruleset, {"crm": answer})
    assert (decision.rule, dict(decision.body)) == (
        "after-crm",
        {"target_uri": "sip:desk@pbx.example.com"},
    )
    [note] = decision.consulted
    assert note.outcome == "invalid"
    assert note.reason is not None
    assert reason in note.reason
    assert any("crm" in step.reason and "next rule" in step.reason for step in decision.trace)


def test_answers_are_read_from_json_bytes_with_a_size_cap() -> None:
    assert read_answer(b'{"continue": true}').kind == "continue"
    for content in (b"<html>", b'{"continue": NaN}', b"", b'{"continue": true} x'):
        with pytest.raises(InvalidAnswer):
            read_answer(content)
    with pytest.raises(InvalidAnswer, match="64 KiB"):
        read_answer(b'{"continue": true, "x": "' + b"x" * 65536 + b'"}')


def test_without_an_answer_the_service_is_passed_over(tmp_path: Path) -> None:
    ruleset = load(tmp_path, RULES)
    decision = decide(ruleset, None)
    assert decision.rule == "after-crm"
    assert [(n.service, n.outcome) for n in decision.consulted] == [("crm", "not_asked")]
    # A call the consult rule does not match asks nobody.
    other = decide(ruleset, None, caller="+12125550123")
    assert (other.rule, other.consulted) == (None, ())


def test_the_shell_resumes_evaluation_after_the_consult_rule(tmp_path: Path) -> None:
    ruleset = load(tmp_path, RULES)
    ctx = simulated_context(ruleset, "+14155550123", "+18005550100", AT)
    step = ruleset.evaluate(ctx)
    assert isinstance(step, Consultation)
    assert (step.service, step.rule) == ("crm", "ask-crm")
    after = ruleset.resume(ctx, step, ServiceReply("timeout", reason="no answer within 2 s"))
    assert isinstance(after, Decision)
    assert after.rule == "after-crm"
    assert after.consulted[0].as_record() == {
        "service": "crm",
        "rule": "ask-crm",
        "outcome": "timeout",
        "reason": "no answer within 2 s",
    }


def test_a_template_error_after_an_answer_applies_on_error(tmp_path: Path) -> None:
    text = RULES.replace(
        'instructions: "Welcome back, {{ vars.name }}."',
        "instructions: \"{{ headers['x-missing'] }}\"",
    )
    ruleset = load(tmp_path, text)
    decision = decide(ruleset, {"crm": {"accept": {"profile": "vip"}}})
    assert (decision.action, decision.failed, decision.failed_profile) == (
        "reject",
        "accept",
        "vip",
    )
    assert decision.consulted[0].outcome == "answered"


# -- tests: and simulate with stubbed answers ----------------------------------------------

TESTS = """\
tests:
  - from: "+14155550123"
    to: "+18005550100"
    consult: {crm: {accept: {profile: vip}, variables: {name: Ann}}}
    expect: {rule: ask-crm, profile: vip}
  - from: "+14155550123"
    to: "+18005550100"
    consult: {crm: {continue: true, variables: {ext: "7"}}}
    expect: {rule: after-crm, target_uri: "sip:desk7@pbx.example.com"}
  - {from: "+14155550123", to: "+18005550100", expect: after-crm}
"""


def test_rule_tests_use_the_stubbed_answers(tmp_path: Path) -> None:
    ruleset = load(tmp_path, RULES + TESTS)
    results = run_rule_tests(ruleset, AT)
    assert [r.failure for r in results] == [None, None, None]


def test_a_failing_rule_test_says_what_the_service_answered(tmp_path: Path) -> None:
    failing = """\
tests:
  - from: "+14155550123"
    to: "+18005550100"
    consult: {crm: {accept: {profile: nobody}}}
    expect: ask-crm
"""
    [result] = run_rule_tests(load(tmp_path, RULES + failing), AT)
    assert result.failure is not None
    assert "crm invalid (unknown profile 'nobody')" in result.failure


def test_a_rule_test_naming_an_unknown_service_is_an_error(tmp_path: Path) -> None:
    bad = """\
tests:
  - from: "+14155550123"
    to: "+18005550100"
    consult: {crn: {continue: true}}
    expect: after-crm
"""
    path = tmp_path / "rules.yaml"
    line = (RULES + bad).splitlines().index("    consult: {crn: {continue: true}}") + 1
    assert problems(tmp_path, RULES + bad) == [
        f"{path}:{line}: tests[0].consult: unknown service 'crn' (did you mean 'crm'?)"
    ]


def test_simulate_follows_a_stubbed_answer_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIP_ROUTER_OUTBOUND_SECRET", raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    answer = tmp_path / "crm.json"
    answer.write_text(json.dumps({"reject": {"status_code": 486}}))
    args = ["simulate", "--rules", str(rules), "--from", "+14155550123", "--to", "+18005550100"]
    assert main([*args, "--consult", f"crm={answer}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["rule"], result["action"]) == ("ask-crm", "reject")
    assert result["request"]["body"] == {"status_code": 486}
    assert result["consulted"][0]["outcome"] == "answered"

    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("refer by after-crm")
    assert "crm was not asked" in out
    assert "--consult crm=FILE.json" in out

    assert main([*args, "--consult", f"crn={answer}"]) == 1
    assert "no such service" in capsys.readouterr().err
    assert main([*args, "--consult", f"crm={tmp_path / 'missing.json'}"]) == 1


def test_check_warns_when_requests_to_services_would_be_unsigned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("SIP_ROUTER_OUTBOUND_SECRET", raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    assert main(["check", str(rules)]) == 0
    assert "SIP_ROUTER_OUTBOUND_SECRET is not set" in capsys.readouterr().err
    monkeypatch.setenv("SIP_ROUTER_OUTBOUND_SECRET", "whsec_" + "A" * 43 + "=")
    assert main(["check", str(rules)]) == 0
    assert "SIP_ROUTER_OUTBOUND_SECRET" not in capsys.readouterr().err


def test_the_outbound_secret_is_checked_like_the_webhook_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIP_ROUTER_OUTBOUND_SECRET", "not-a-secret")
    with pytest.raises(ConfigurationError, match=r"^SIP_ROUTER_OUTBOUND_SECRET: .*whsec_"):
        load_settings()
    monkeypatch.setenv("SIP_ROUTER_OUTBOUND_SECRET", "")
    assert load_settings().outbound_secret is None


# -- validation -----------------------------------------------------------------------------


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "consult: crm",
            "consult: crn",
            "rule 'ask-crm' consult: unknown service 'crn' (did you mean 'crm'?)",
        ),
        ('url: "https://crm.example.com/decide"', 'url: "ftp://crm.example.com"', "https://"),
        (
            'url: "https://crm.example.com/decide"',
            'url: "http://crm.example.com/x"',
            "http:// is allowed only to loopback and private addresses",
        ),
        ('url: "https://crm.example.com/decide"', 'url: "http://8.8.8.8/x"', "8.8.8.8 is not"),
        (
            'url: "https://crm.example.com/decide"',
            'url: "https://u:p@crm.example.com"',
            "user name or password",
        ),
        ("timeout_s: 2", "timeout_s: 6", "less than or equal to 5"),
        ("timeout_s: 2", "timeout_s: 0", "greater than 0"),
        ("timeout_s: 2", "timeout: 2", "unknown key 'timeout' (did you mean 'timeout_s'?)"),
    ],
)
def test_services_and_consult_rules_are_validated_with_file_and_line(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = RULES.replace(old, new)
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'rules.yaml'}:{line_of(text, new)}: ")
    assert message in found[0]


def test_consult_is_only_for_rules_and_takes_no_other_action(tmp_path: Path) -> None:
    in_default = RULES.replace("default: {accept: {profile: desk}}", "default: {consult: crm}")
    assert any("unknown key 'consult'" in p for p in problems(tmp_path, in_default))
    both = RULES.replace("    consult: crm", "    consult: crm\n    reject: {}")
    assert any(
        "takes exactly one of accept, refer, reject, consult" in p for p in problems(tmp_path, both)
    )


def test_http_to_a_private_address_loads_with_a_warning(tmp_path: Path) -> None:
    for url in (
        "http://127.0.0.1:8080/d",
        "http://10.1.2.3/d",
        "http://crm/d",
        "http://[::1]/d",
        "http://crm.default.svc/d",
    ):
        ruleset = load(tmp_path, RULES.replace("https://crm.example.com/decide", url))
        assert any("unencrypted over http://" in w for w in ruleset.warnings), url
    assert check_outbound_url("https://crm.example.com/d") == (None, None)


def test_a_consult_rule_does_not_hide_the_rules_after_it(tmp_path: Path) -> None:
    text = RULES.replace('    when: {caller: "+1415*"}\n    consult', "    consult")
    assert load(tmp_path, text).warnings == ()


# -- split ----------------------------------------------------------------------------------

SPLIT = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  a: {model: gpt-realtime, instructions: "A"}
  b: {model: gpt-realtime, instructions: "B"}
default: {accept: {split: [{profile: a, weight: 90}, {profile: b, weight: 10}]}}
"""


def test_a_split_picks_profiles_by_weight(tmp_path: Path) -> None:
    ruleset = load(tmp_path, SPLIT)
    picked = Counter(
        ruleset.decide(
            simulated_context(ruleset, "+14155550123", "+18005550100", AT, call_id=f"rtc_{i:x}")
        ).profile
        for i in range(10_000)
    )
    assert set(picked) == {"a", "b"}
    assert abs(picked["a"] / 10_000 - 0.9) < 0.02
    assert abs(picked["b"] / 10_000 - 0.1) < 0.02


def test_a_split_picks_the_same_profile_for_every_delivery_of_a_call(tmp_path: Path) -> None:
    first = load(tmp_path, SPLIT)
    # Another process (another load, another hash seed) picks the same for each call.
    second = load(tmp_path, SPLIT + "# reloaded\n")
    for i in range(200):
        call_id = f"rtc_{i}"
        ctx = simulated_context(first, "+14155550123", "+18005550100", AT, call_id=call_id)
        decision = first.decide(ctx)
        assert decision.profile == second.decide(ctx).profile
        assert decision.body["instructions"] == decision.profile.upper()
    # sha256 of the call_id, taken mod the total weight: fixed for all time.
    ids = ("rtc_abc", "rtc_def", "rtc_123", "rtc_12")
    chosen = {
        call_id: first.decide(
            simulated_context(first, "+14155550123", "+18005550100", AT, call_id=call_id)
        ).profile
        for call_id in ids
    }
    assert chosen == {"rtc_abc": "a", "rtc_def": "a", "rtc_123": "a", "rtc_12": "b"}


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("[{profile: a, weight: 0}]", "greater than or equal to 1"),
        ('[{profile: a, weight: "10"}]', "valid integer"),
        ("[{profile: a, weight: 1.5}]", "valid integer"),
        ("[{profile: c, weight: 1}]", "unknown profile 'c'"),
        ("[{profile: aa, weight: 1}]", "(did you mean 'a'?)"),
        ("[]", "at least 1"),
        ("[{profile: a}]", "missing key 'weight'"),
        ("[{profile: a, weight: 1}, {profile: a, weight: 2}]", "listed twice"),
    ],
)
def test_splits_are_validated_with_file_and_line(tmp_path: Path, split: str, message: str) -> None:
    text = SPLIT.replace(
        "default: {accept: {split: [{profile: a, weight: 90}, {profile: b, weight: 10}]}}",
        f"default: {{accept: {{split: {split}}}}}",
    )
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'rules.yaml'}:6: ")
    assert message in found[0]


def test_a_split_takes_no_overrides_and_not_a_profile_too(tmp_path: Path) -> None:
    text = SPLIT.replace("{accept: {split:", "{accept: {profile: a, split:")
    assert any("either a profile or a split" in p for p in problems(tmp_path, text))
    text = SPLIT.replace("weight: 10}]}", "weight: 10}], overrides: {instructions: x}}")
    assert any("a split takes no overrides" in p for p in problems(tmp_path, text))


def test_a_rule_test_can_expect_a_split_profile(tmp_path: Path) -> None:
    text = SPLIT + textwrap.dedent(
        """\
        tests:
          - {from: "+14155550123", to: "+18005550100", expect: {action: accept, profile: a}}
        """
    )
    ruleset = load(tmp_path, text)
    assert [r.failure for r in run_rule_tests(ruleset, AT)] == [None]


def test_an_answer_overriding_a_templated_field_is_literal_and_the_others_still_render(
    tmp_path: Path,
) -> None:
    rules = RULES.replace(
        '  desk: {model: gpt-realtime, instructions: "Hello {{ vars.name }}, this is the desk."}',
        "  desk:\n"
        "    model: gpt-realtime\n"
        '    prompt: {id: pmpt_1, variables: {who: "{{ caller.e164 }}", ext: "{{ rule }}"}}\n'
        '    tracing: {group_id: "calls-{{ called.e164 }}"}',
    )
    ruleset = load(tmp_path, rules)
    overrides = {"prompt": {"variables": {"who": "{{ call_id }}"}}}
    decision = decide(ruleset, {"crm": {"accept": {"profile": "desk", "overrides": overrides}}})
    assert decision.body["prompt"]["variables"] == {"who": "{{ call_id }}", "ext": "ask-crm"}
    assert decision.body["tracing"] == {"group_id": "calls-+18005550100"}
