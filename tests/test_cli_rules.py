"""`sip-router check | test | simulate | schema`, in process and once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.rules.loader import load_ruleset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "routing_rules" / "rules.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


SMALL = """\
version: 1
defaults: {timezone: Europe/Berlin, region: DE}
rules:
  - name: mobile
    when: {caller: "0151*"}
    reject: {status_code: 486}
default: {reject: {status_code: 603}}
tests:
  - {from: "+4915112345678", to: "+4930123456", expect: mobile}
  - {from: "+4930901820", to: "+4930123456", expect: default}
  - {from: "+4930901820", to: "+4930123456", expect: {action: reject, status_code: 603}}
"""


# --- check --------------------------------------------------------------------------------


def test_check_the_example_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIP_ROUTER_OUTBOUND_SECRET", "whsec_" + "c2lwLXJvdXRlci1vdXRib3VuZA==")
    assert main(["check", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    version = load_ruleset(EXAMPLE).version
    assert out == (f"{EXAMPLE}: ok: 9 rules, 15 tests passed, 0 warnings, ruleset {version}\n")
    assert err == ""


def test_check_warns_when_the_examples_function_requests_would_go_unsigned(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIP_ROUTER_OUTBOUND_SECRET", raising=False)
    monkeypatch.chdir(EXAMPLE.parent)  # no .env of the checkout
    assert main(["check", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("warning: SIP_ROUTER_OUTBOUND_SECRET is not set")
    assert "functions" in err
    assert ", 1 warning, " in out  # the summary counts what was printed


def test_check_uses_sip_router_rules_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SMALL)
    monkeypatch.setenv("SIP_ROUTER_RULES", str(path))
    assert main(["check"]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok: 1 rules, 3 tests passed, 0 warnings")


def test_check_a_broken_file_prints_each_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        lists:
          vip: ["+14155550100"]
        rules:
          - name: a
            when: {caller: {in: vipp}}
            reject: {}
          - name: b
            refer: {target_uri: "tel:12345"}
        default: {reject: {}}
        """,
    )
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:6: ")
    assert "unknown list 'vipp' (did you mean 'vip'?)" in lines[0]
    assert lines[1].startswith(f"{path}:9: ")
    assert "target_uri" in lines[1]


def test_check_prints_warnings_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        rules:
          - {name: nanp, when: {caller: "+1*"}, reject: {}}
          - {name: sf, when: {caller: "+1415*"}, reject: {}}
        default: {reject: {}}
        """,
    )
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err.startswith(f"{path}:4: warning: rule 'sf' can never match")
    assert len(err.splitlines()) == 1
    assert out.startswith(f"{path}: ok: 2 rules, 0 tests passed, 1 warning,")


def test_check_fails_on_a_failing_test_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SMALL.replace("expect: default}", "expect: mobile}"))
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "ok" not in out
    assert err.startswith(f"{path}:10: test +4930901820 -> +4930123456: ")
    assert "expected rule mobile, got reject by default" in err


def test_check_an_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["check", str(missing)]) == 1
    assert capsys.readouterr().err.startswith(f"{missing}: cannot read the rule file")


def test_check_prints_every_problem_of_every_kind_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        version: 1
        defaults: {timezone: America/Los_Angles, region: US}
        profiles:
          desk: {model: gpt-realtime}
        schedules:
          office:
            weekly: [{days: mon-fri, from: 08:30, to: "18:00"}]
        rules:
          - name: vip-desk
            whne: {schedule: office}
            accept: {profile: dsek}
          - name: busy
            reject: {status_code: 700}
        default: {accept: {profile: desk}}
        """,
    )
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:2: unknown time zone 'America/Los_Angles' (did you mean 'America/Los_Angeles'?)",
        f'{path}:7: 08:30 is read by YAML as a number; times must be quoted: "08:30"',
        f"{path}:10: rule 'vip-desk': unknown key 'whne' (did you mean 'when'?)",
        f"{path}:11: unknown profile 'dsek' (did you mean 'desk'?)",
        f"{path}:13: rule 'busy' reject.status_code: Input should be less than or equal to 699",
    ]


def test_check_prints_one_version_however_the_path_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "routing_rules"
    (folder / "lists").mkdir(parents=True)
    (folder / "lists" / "blocked.txt").write_text("+12025550199\n")
    rules = SMALL.replace(
        "rules:\n",
        "lists:\n  blocked: {file: lists/blocked.txt}\nrules:\n"
        "  - {name: blocked, when: {caller: {in: blocked}}, reject: {}}\n",
    )
    (folder / "rules.yaml").write_text(rules)
    (tmp_path / "linked").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    expected = load_ruleset(folder / "rules.yaml").version
    for spelling in (
        "routing_rules/rules.yaml",
        "./routing_rules/rules.yaml",
        str(folder / "rules.yaml"),
        "linked/rules.yaml",
    ):
        assert main(["check", spelling]) == 0
        out = capsys.readouterr().out
        assert (
            out
            == f"{Path(spelling)}: ok: 2 rules, 3 tests passed, 0 warnings, ruleset {expected}\n"
        )


# --- test ---------------------------------------------------------------------------------


def test_test_counts_passed_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(write(tmp_path, SMALL))]) == 0
    assert capsys.readouterr().out == "3 passed, 0 failed\n"


def test_test_prints_each_failure_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = SMALL.replace("expect: mobile}", "expect: default}").replace(
        "expect: {action: reject, status_code: 603}", "expect: {action: reject, status_code: 480}"
    )
    path = write(tmp_path, broken)
    assert main(["test", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 passed, 2 failed"
    assert len(lines) == 3
    assert lines[0].startswith(f"{path}:9: ")
    assert "expected rule default, got reject by mobile" in lines[0]
    assert lines[1].startswith(f"{path}:11: ")
    assert "expected status_code 480" in lines[1]


def test_test_on_a_broken_file_prints_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SMALL.replace("status_code: 486", "status_code: 99"))
    assert main(["test", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}:6: ")


# --- simulate -----------------------------------------------------------------------------


def simulate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["simulate", "--rules", str(EXAMPLE), "--json", *args]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


def test_simulate_json_is_one_object_with_the_spec_keys(capsys: pytest.CaptureFixture[str]) -> None:
    result = simulate_json(
        capsys,
        "--from",
        "+1 415 555 0123",
        "--to",
        "+14155550100",
        "--at",
        "2026-12-01T10:00:00-08:00",
    )
    assert {"rule", "action", "request", "trace", "ruleset"} <= set(result)
    assert result["rule"] == "front-desk-hours"
    assert result["action"] == "accept"
    assert result["ruleset"] == load_ruleset(EXAMPLE).version
    request = result["request"]
    assert isinstance(request, dict)
    assert set(request) == {"path", "body"}
    assert request["path"] == "/realtime/calls/rtc_simulated/accept"
    assert request["body"]["type"] == "realtime"
    assert request["body"]["model"] == "gpt-realtime"
    trace = result["trace"]
    assert isinstance(trace, list)
    assert [step["rule"] for step in trace] == [
        "blocked-callers",
        "withheld-number",
        "unencrypted-media",
        "clinicians-to-nurses",
        "pharmacy-partners",
        "gpt-live-front-desk",
        "gpt-live-after-hours",
        "spanish-line",
        "front-desk-hours",
    ]
    assert [step["matched"] for step in trace] == [False] * 8 + [True]
    assert result["api"] == "realtime"
    for step in trace:
        assert set(step) == {"rule", "matched", "reason"}
        assert isinstance(step["reason"], str)
        assert step["reason"]


def test_simulate_json_rule_is_null_when_the_default_applies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = simulate_json(
        capsys,
        "--from",
        "+14155550123",
        "--to",
        "+14155550100",
        "--at",
        "2026-12-25T10:00:00-08:00",
    )
    assert result["rule"] is None
    assert result["action"] == "accept"
    assert [step["matched"] for step in result["trace"]] == [False] * 9
    request = result["request"]
    assert isinstance(request, dict)
    assert "Do not book appointments." in request["body"]["instructions"]
    assert "+14155550123" in request["body"]["instructions"]


def test_simulate_api_live_decides_a_gpt_live_call(capsys: pytest.CaptureFixture[str]) -> None:
    at = ("--at", "2026-12-01T10:00:00-08:00")
    call = ("--from", "+14155550123", "--to", "+14155550100", *at)
    result = simulate_json(capsys, *call, "--api", "live", "--media-security", "srtp")
    assert result["rule"] == "gpt-live-front-desk"
    assert result["api"] == "live"
    assert result["request"]["path"] == "/live/sessions/live_simulated/accept"
    session = result["request"]["body"]["session"]
    assert session["type"] == "live"
    assert session["model"] == "gpt-live-1"
    tools = session["delegation"]["responses"]["tools"]
    assert [tool["name"] for tool in tools] == ["end_call"]
    assert "+14155550123" in session["delegation"]["responses"]["instructions"]
    assert result["after_accept"]["greeting"].startswith("Harbor Family Clinic")
    assert result["trace"][-1]["reason"].endswith("api is live")
    # Without --api the same call is a Realtime one; plain RTP media is refused.
    assert simulate_json(capsys, *call)["rule"] == "front-desk-hours"
    plain = simulate_json(capsys, *call, "--media-security", "rtp")
    assert (plain["rule"], plain["request"]["body"]) == ("unencrypted-media", {"status_code": 488})


def test_simulate_refuses_an_unknown_api(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--rules", str(EXAMPLE), "--from", "1", "--to", "2", "--api", "sip"])
    assert "invalid choice: 'sip'" in capsys.readouterr().err


def test_simulate_header_reaches_a_header_rule(capsys: pytest.CaptureFixture[str]) -> None:
    at = ("--at", "2026-12-02T12:00:00-08:00")
    result = simulate_json(
        capsys,
        "--from",
        "+14155550123",
        "--to",
        "+14155550100",
        "--header",
        "X-Partner-Id: PH0042",
        *at,
    )
    assert result["rule"] == "pharmacy-partners"
    assert result["action"] == "refer"
    # The refer is carried out after an accept: the ringing call gets the accept.
    assert result["request"]["path"] == "/realtime/calls/rtc_simulated/accept"
    assert result["after_accept"]["refer_after_accept"]["target_uri"] == "tel:+14155550150"
    without = simulate_json(capsys, "--from", "+14155550123", "--to", "+14155550100", *at)
    assert without["rule"] == "front-desk-hours"


def test_simulate_reject_by_a_list_and_anonymous(capsys: pytest.CaptureFixture[str]) -> None:
    withheld = simulate_json(capsys, "--from", "anonymous", "--to", "+14155550100")
    assert withheld["rule"] == "withheld-number"
    assert withheld["request"] == {
        "path": "/realtime/calls/rtc_simulated/reject",
        "body": {"status_code": 433},
    }


def test_simulate_naive_at_is_read_in_the_rules_time_zone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 08:30 in Los Angeles (the example's zone) is open; in UTC it would be 00:30, closed.
    result = simulate_json(
        capsys, "--from", "+14155550123", "--to", "+14155550100", "--at", "2026-12-01T08:30:00"
    )
    assert result["rule"] == "front-desk-hours"


def test_simulate_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--from", "+14155550123", "--to", "+14155550100", "--at", "2026-12-25T10:00:00-08:00"]
    assert main(["simulate", "--rules", str(EXAMPLE), *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accept by the default (ruleset ")
    assert "POST /realtime/calls/rtc_simulated/accept " in out
    assert "no rule matched: default applies" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--at", "yesterday"], "--at takes an ISO-8601 time"),
        (["--at", "2026-13-01T10:00:00"], "--at takes an ISO-8601 time"),
        (["--header", "X-Partner-Id PH0042"], "--header takes 'Name: value'"),
    ],
)
def test_simulate_bad_arguments_give_a_clear_message(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(
        [
            "simulate",
            "--rules",
            str(EXAMPLE),
            "--from",
            "+14155550123",
            "--to",
            "+14155550100",
            *args,
        ]
    )
    assert code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("sip-router: ")
    assert message in err
    assert len(err.splitlines()) == 1


def test_simulate_on_a_broken_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "version: 1\nrules: []\n")
    code = main(["simulate", "--rules", str(path), "--from", "+14155550123", "--to", "+1415555"])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"{path}:1: missing key 'default'")


# --- schema -------------------------------------------------------------------------------


def test_schema_prints_a_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert isinstance(schema, dict)
    assert schema.get("type") == "object" or "properties" in schema or "$defs" in schema


# --- as a process -------------------------------------------------------------------------


def test_console_entry_runs_as_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "check", "routing_rules/rules.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("routing_rules/rules.yaml: ok: 9 rules, 15 tests passed")
    bad = subprocess.run(
        [sys.executable, "-m", "app.cli", "simulate", "--from", "1", "--to", "2", "--at", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert "--at takes an ISO-8601 time" in bad.stderr
