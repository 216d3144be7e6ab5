"""Rule-file validation: every problem is `file:line: message`, and bad files never load.

Each case marks the line its problem must be reported on with `# <-`, in the rule file or
in the referenced file the problem belongs to.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.rules.loader import load_ruleset
from app.rules.problems import Problem, RuleFileError
from app.rules.simulation import simulated_context

MARK = "# <-"

HEAD = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime}
lists:
  vip: ["+14155550100"]
schedules:
  office: {weekly: [{days: mon-fri, from: "09:00", to: "17:00"}]}
"""

RULES_AND_DEFAULT = """\
rules:
  - name: vip
    when: {caller: {in: vip}}
    reject: {}
default: {accept: {profile: desk}}
"""


def write_files(tmp_path: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative name -> text) under tmp_path; the first one is the rule file."""
    for name, text in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return tmp_path / next(iter(files))


def marked_place(tmp_path: Path, files: dict[str, str]) -> tuple[str, int]:
    """The file and 1-based line holding the `# <-` marker."""
    places = [
        (str(tmp_path / name), number)
        for name, text in files.items()
        for number, line in enumerate(text.splitlines(), start=1)
        if MARK in line
    ]
    assert len(places) == 1, "a case marks exactly one line"
    return places[0]


def load_problems(path: Path) -> list[Problem]:
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(path)
    return caught.value.problems


CASES: list[tuple[str, dict[str, str], str]] = [
    (
        "unknown-top-level-key",
        {"rules.yaml": HEAD + "colour: blue  # <-\n" + RULES_AND_DEFAULT},
        "unknown key 'colour'",
    ),
    (
        "unknown-condition-key",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      callr: "+1415*"  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "unknown key 'callr'",
    ),
    (
        "unknown-key-in-number-condition",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      caller:
        prefx: "+1415"  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "unknown key 'prefx'",
    ),
    (
        "rule-with-two-actions",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a  # <-
    reject: {}
    refer: {target_uri: "tel:+14155550100"}
default: {reject: {}}
"""
        },
        "exactly one of accept, refer, reject",
    ),
    (
        "rule-without-action",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a  # <-
    when: {caller: "+1415*"}
default: {reject: {}}
"""
        },
        "exactly one of accept, refer, reject",
    ),
    (
        "missing-default",
        {"rules.yaml": "version: 1  # <-\nrules:\n  - {name: a, reject: {}}\n"},
        "missing key 'default'",
    ),
    (
        "version-2",
        {"rules.yaml": "version: 2  # <-\ndefault: {reject: {}}\n"},
        "version",
    ),
    (
        "status-code-399",
        {"rules.yaml": HEAD + "default:\n  reject: {status_code: 399}  # <-\n"},
        "greater than or equal to 400",
    ),
    (
        "status-code-700",
        {"rules.yaml": HEAD + "default:\n  reject: {status_code: 700}  # <-\n"},
        "less than or equal to 699",
    ),
    (
        "status-code-as-string",
        {"rules.yaml": HEAD + 'default:\n  reject: {status_code: "603"}  # <-\n'},
        "status_code",
    ),
    (
        "refer-to-http-uri",
        {
            "rules.yaml": HEAD
            + 'default:\n  refer: {target_uri: "http://pbx.example.com/desk"}  # <-\n'
        },
        "target_uri must be tel:+<E.164> or a sip:/sips: URI",
    ),
    (
        "refer-to-tel-without-plus",
        {"rules.yaml": HEAD + 'default:\n  refer: {target_uri: "tel:12345"}  # <-\n'},
        "target_uri must be tel:+<E.164> or a sip:/sips: URI",
    ),
    (
        "refer-to-sip-with-spaces",
        {
            "rules.yaml": HEAD
            + 'default:\n  refer: {target_uri: "sip:front desk@pbx.example.com"}  # <-\n'
        },
        "target_uri must be tel:+<E.164> or a sip:/sips: URI",
    ),
    (
        "unknown-list",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      caller: {in: vipp}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "unknown list 'vipp' (did you mean 'vip'?)",
    ),
    (
        "unknown-profile",
        {
            "rules.yaml": HEAD
            + """\
rules: []
default:
  accept:
    profile: dsek  # <-
"""
        },
        "unknown profile 'dsek' (did you mean 'desk'?)",
    ),
    (
        "unknown-schedule",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      schedule: ofice  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "unknown schedule 'ofice' (did you mean 'office'?)",
    ),
    (
        "bad-time-zone-in-defaults",
        {
            "rules.yaml": """\
version: 1
defaults:
  timezone: Mars/Olympus_Mons  # <-
default: {reject: {}}
"""
        },
        "unknown time zone 'Mars/Olympus_Mons'",
    ),
    (
        "bad-time-zone-in-schedule",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    timezone: Europe/Berlni  # <-
    weekly: [{days: mon-fri, from: "08:00", to: "18:00"}]
default: {reject: {}}
"""
        },
        "unknown time zone 'Europe/Berlni' (did you mean 'Europe/Berlin'?)",
    ),
    (
        "bad-regex-in-caller",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      caller: {regex: "+1[0-9"}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "invalid regex",
    ),
    (
        "bad-regex-in-header",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      header:
        X-Partner-Id: {regex: "(PH[0-9]{4}"}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "invalid regex",
    ),
    (
        "bad-pattern",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      caller: {pattern: "+1415ABCXXXX"}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "pattern '+1415ABCXXXX'",
    ),
    (
        "bad-number-in-inline-list",
        {
            "rules.yaml": """\
version: 1
defaults: {region: US}
lists:
  clinicians:
    - "+1 (415) 555-0142"
    - "628-555-01x9"  # <-
default: {reject: {}}
"""
        },
        "'628-555-01x9' is not a phone number",
    ),
    (
        "bad-number-in-list-file",
        {
            "rules.yaml": """\
version: 1
defaults: {region: US}
lists:
  blocked: {file: lists/blocked.txt}
rules:
  - {name: blocked, when: {caller: {in: blocked}}, reject: {}}
default: {reject: {}}
""",
            "lists/blocked.txt": "# robocallers\n+12025550199\n\n+1202555abcd  # <-\n+1213*\n",
        },
        "the line starting '+120…' is not a phone number",
    ),
    (
        "unreadable-list-file",
        {
            "rules.yaml": """\
version: 1
lists:
  blocked:
    file: lists/missing.txt  # <-
default: {reject: {}}
"""
        },
        "cannot read",
    ),
    (
        "unreadable-instructions-file",
        {
            "rules.yaml": """\
version: 1
profiles:
  desk:
    model: gpt-realtime
    instructions_file: prompts/missing.md  # <-
default: {accept: {profile: desk}}
"""
        },
        "cannot read",
    ),
    (
        "profile-extends-cycle",
        {
            "rules.yaml": """\
version: 1
profiles:
  a: {extends: b, model: gpt-realtime}
  b: {extends: c}
  c: {extends: a}  # <-
default: {reject: {}}
"""
        },
        "cycle: a -> b -> c -> a",
    ),
    (
        "profile-extends-unknown-parent",
        {
            "rules.yaml": """\
version: 1
profiles:
  base: {model: gpt-realtime}
  child:
    extends: bsae  # <-
default: {accept: {profile: base}}
"""
        },
        "unknown profile 'bsae' (did you mean 'base'?)",
    ),
    (
        "profile-audio-output-format",
        {
            "rules.yaml": """\
version: 1
profiles:
  desk:
    audio:
      output:
        format: {type: audio/pcmu}  # <-
default: {accept: {profile: desk}}
"""
        },
        "audio.output.format must not be set",
    ),
    (
        "profile-speed-2",
        {
            "rules.yaml": """\
version: 1
profiles:
  desk:
    audio:
      output:
        speed: 2.0  # <-
default: {accept: {profile: desk}}
"""
        },
        "profiles.desk.audio.output.speed",
    ),
    (
        "profile-voice-empty",
        {
            "rules.yaml": """\
version: 1
profiles:
  desk:
    audio:
      output:
        voice: ""  # <-
default: {accept: {profile: desk}}
"""
        },
        "profiles.desk.audio.output.voice",
    ),
    (
        "profile-max-output-tokens-5000",
        {
            "rules.yaml": """\
version: 1
profiles:
  desk:
    model: gpt-realtime
    max_output_tokens: 5000  # <-
default: {accept: {profile: desk}}
"""
        },
        "profiles.desk.max_output_tokens",
    ),
    (
        "duplicate-rule-names",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: twice
    when: {caller: "+1415*"}
    reject: {}
  - name: twice  # <-
    when: {caller: "+1650*"}
    reject: {}
default: {reject: {}}
"""
        },
        "rule name 'twice' is used twice",
    ),
    (
        "duplicate-yaml-key",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when: {caller: "+1415*"}
    reject: {status_code: 486}
    reject: {status_code: 603}  # <-
default: {reject: {}}
"""
        },
        "duplicate key 'reject'",
    ),
    (
        "yaml-trap-unquoted-time-with-leading-zero",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    weekly:
      - days: mon-fri
        from: 08:30  # <-
        to: "18:00"
default: {reject: {}}
"""
        },
        'times must be quoted: "08:30"',
    ),
    (
        "yaml-trap-unquoted-time-sexagesimal",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    weekly:
      - days: mon-fri
        from: 8:30  # <-
        to: "18:00"
default: {reject: {}}
"""
        },
        'times must be quoted: "8:30"',
    ),
    (
        "yaml-trap-country-NO",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: norway
    when:
      caller: {country: NO}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        'quote it: "NO"',
    ),
    (
        "yaml-trap-on",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      header:
        X-Recording: {present: on}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        'quote it: "on"',
    ),
    (
        "yaml-trap-off",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      header:
        X-Recording: off  # <-
    reject: {}
default: {reject: {}}
"""
        },
        'quote it: "off"',
    ),
    (
        "yaml-trap-leading-zero-number",
        {
            "rules.yaml": """\
version: 1
defaults: {region: DE}
rules:
  - name: mobile
    when:
      caller: 0151  # <-
    reject: {}
default: {reject: {}}
"""
        },
        'quote it: "0151"',
    ),
    (
        "bad-date-in-schedule",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    weekly: [{days: mon-fri, from: "08:00", to: "18:00"}]
    closed:
      dates: ["2026-12-24", "2026-02-30"]  # <-
default: {reject: {}}
"""
        },
        "invalid date '2026-02-30'",
    ),
    (
        "every-year-date-that-never-is",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    closed:
      dates:
        - "12-25"
        - "02-30"  # <-
default: {reject: {}}
"""
        },
        "invalid date '02-30': day is out of range for month",
    ),
    (
        "every-year-date-month-13",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    open:
      dates: ["13-01..01-02"]  # <-
default: {reject: {}}
"""
        },
        "invalid date '13-01': month must be 01 to 12",
    ),
    (
        "nth-weekday-nth-0",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    closed:
      dates:
        - month: 5
          weekday: mon
          nth: 0  # <-
default: {reject: {}}
"""
        },
        "nth must be 1 to 5 (the first to fifth) or -1 (the last), got 0",
    ),
    (
        "nth-weekday-bad-weekday",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    closed:
      dates:
        - month: 11
          weekday: thursday  # <-
          nth: 4
default: {reject: {}}
"""
        },
        "unknown weekday 'thursday' (did you mean 'thu'?)",
    ),
    (
        "closed-time-bad-date",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    closed:
      times:
        - {date: "2026-12-24", from: "14:00", to: "24:00"}
        - {date: "2027-02-29", from: "14:00", to: "18:00"}  # <-
default: {reject: {}}
"""
        },
        "invalid date '2027-02-29'",
    ),
    (
        "closed-time-unquoted-time",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    closed:
      times:
        - date: "12-31"
          from: 18:00  # <-
          to: "02:00"
default: {reject: {}}
"""
        },
        'times must be quoted: "18:00"',
    ),
    (
        "times-only-in-closed",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    open:
      times: [{date: "12-24", from: "09:00", to: "12:00"}]  # <-
default: {reject: {}}
"""
        },
        "unknown key 'times'",
    ),
    (
        "bad-header-name",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      header:
        "X Partner Id": PH0042  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "'X Partner Id' is not a valid SIP header name",
    ),
    (
        "bad-number-in-rule",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      caller:
        - "+1415*"
        - "+1 (415) 555-01OO"  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "'+1 (415) 555-01OO' is not a phone number",
    ),
    (
        "unclosed-flow-mapping",
        {
            "rules.yaml": """\
version: 1
rules:
  - name: a
    when: {caller: "+1415*"  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "invalid YAML: this '{' is not closed",
    ),
    (
        "unclosed-flow-mapping-at-the-end-of-the-file",
        {
            "rules.yaml": """\
version: 1
profiles:
  desk: {model: gpt-realtime,  # <-
    instructions: "Be brief.",
    audio: {output: {voice: marin}}
"""
        },
        "invalid YAML: this '{' is not closed",
    ),
    (
        "unclosed-flow-sequence",
        {
            "rules.yaml": """\
version: 1
lists:
  vip: ["+14155550100", "+14155550101"  # <-
rules: []
default: {reject: {}}
"""
        },
        "invalid YAML: this '[' is not closed",
    ),
    (
        "tab-in-indentation",
        {
            "rules.yaml": "version: 1\ndefaults:\n  timezone: UTC\n\tregion: US  # <-\n"
            "default: {reject: {}}\n"
        },
        "tab character in indentation: use spaces",
    ),
    (
        "tab-indenting-a-list-item",
        {
            "rules.yaml": "version: 1\nrules:\n\t- name: a  # <-\n    reject: {}\n"
            "default: {reject: {}}\n"
        },
        "tab character in indentation: use spaces",
    ),
    (
        "unknown-key-suggests-the-key-meant",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    whne: {caller: "+1415*"}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "rule 'a': unknown key 'whne' (did you mean 'when'?)",
    ),
    (
        "unknown-condition-key-suggests-the-key-meant",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      shedule: office  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "unknown key 'shedule' (did you mean 'schedule'?)",
    ),
    (
        "unknown-number-condition-key-suggests-the-key-meant",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      caller:
        prefx: "+1415"  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "unknown key 'prefx' (did you mean 'prefix'?)",
    ),
    (
        "unknown-top-level-key-suggests-the-key-meant",
        {"rules.yaml": HEAD + "rulse: []  # <-\ndefault: {reject: {}}\n"},
        "unknown key 'rulse' (did you mean 'rules'?)",
    ),
    (
        "unknown-schedule-key-suggests-the-key-meant",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    weekley: [{days: mon-fri, from: "09:00", to: "17:00"}]  # <-
default: {reject: {}}
"""
        },
        "unknown key 'weekley' (did you mean 'weekly'?)",
    ),
    (
        "unknown-profile-key-suggests-the-key-meant",
        {
            "rules.yaml": """\
version: 1
profiles:
  desk:
    modle: gpt-realtime  # <-
default: {accept: {profile: desk}}
"""
        },
        "profiles.desk: unknown key 'modle' (did you mean 'model'?)",
    ),
    (
        "unknown-profile-key-suggests-a-key-sip-router-reads",
        {
            "rules.yaml": """\
version: 1
profiles:
  base: {model: gpt-realtime}
  desk:
    extend: base  # <-
default: {accept: {profile: desk}}
"""
        },
        "unknown key 'extend' (did you mean 'extends'?)",
    ),
    (
        "bad-time-zone-in-defaults-suggests-the-zone-meant",
        {
            "rules.yaml": """\
version: 1
defaults:
  timezone: America/Los_Angles  # <-
default: {reject: {}}
"""
        },
        "unknown time zone 'America/Los_Angles' (did you mean 'America/Los_Angeles'?)",
    ),
    (
        "rule-named-in-the-message",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: vip
    when: {caller: {in: vip}}
    reject: {}
  - name: vip-desk
    when:
      caller: {regex: "+1[0-9"}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "rule 'vip-desk' when.caller: invalid regex",
    ),
    (
        "rule-named-in-a-shape-message",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: vip
    when: {caller: {in: vip}}
    reject: {}
  - name: busy
    reject: {status_code: 700}  # <-
default: {reject: {}}
"""
        },
        "rule 'busy' reject.status_code: Input should be less than or equal to 699",
    ),
    (
        "inherited-bad-value-reported-where-written",
        {
            "rules.yaml": """\
version: 1
profiles:
  base:
    audio: {output: {speed: 2}}  # <-
  sales: {extends: base, instructions: "Sell."}
  support: {extends: base, instructions: "Help."}
  night: {extends: support, max_output_tokens: 100}
default: {accept: {profile: support}}
"""
        },
        "profiles.base.audio.output.speed",
    ),
    (
        "inherited-bad-duration-reported-where-written",
        {
            "rules.yaml": """\
version: 1
profiles:
  base:
    model: gpt-realtime
    max_duration_s: 0  # <-
  sales: {extends: base}
  support: {extends: base}
default: {accept: {profile: sales}}
"""
        },
        "max_duration_s must be between 0 and 86400",
    ),
    (
        "inherited-bad-instructions-template-reported-where-written",
        {
            "rules.yaml": """\
version: 1
profiles:
  base:
    instructions: "Hello {{ caller.e164 "  # <-
  sales: {extends: base}
  support: {extends: base}
default: {accept: {profile: sales}}
"""
        },
        "profiles.base.instructions",
    ),
    (
        "no-cascade-from-an-invalid-list",
        {
            "rules.yaml": """\
version: 1
lists:
  vip: {numbers: ["+14155550100"], file: vip.txt}  # <-
rules:
  - {name: a, when: {caller: {in: vip}}, reject: {}}
default: {reject: {}}
tests:
  - {from: "+14155550100", to: "+14155550199", expect: a}
"""
        },
        "a list is either",
    ),
    (
        "no-cascade-from-an-invalid-rule-expected-by-a-test",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: busy
    reject: {status_code: 700}  # <-
default: {reject: {}}
tests:
  - {from: "+14155550100", to: "+14155550199", expect: busy}
"""
        },
        "less than or equal to 699",
    ),
    (
        "no-cascade-from-an-invalid-schedule",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    timezone: Europe/Berlni  # <-
    weekly: [{days: mon-fri, from: "08:00", to: "18:00"}]
  late:
    weekly: [{days: mon-fri, from: "18:00", to: "23:00"}]
rules:
  - {name: a, when: {schedule: office}, reject: {}}
  - {name: b, when: {schedule: late}, reject: {}}
default: {reject: {}}
"""
        },
        "unknown time zone 'Europe/Berlni'",
    ),
    (
        "no-cascade-from-an-invalid-region",
        {
            "rules.yaml": """\
version: 1
defaults: {region: USA}  # <-
lists:
  vip: ["415-555-0100", "(415) 555-0101"]
rules:
  - {name: a, when: {caller: "415*"}, reject: {}}
  - {name: b, when: {caller: {in: vip}}, reject: {}}
default: {reject: {}}
"""
        },
        "region",
    ),
    (
        "no-cascade-from-a-section-that-is-not-a-mapping",
        {
            "rules.yaml": """\
version: 1
schedules: [office]  # <-
rules:
  - {name: a, when: {schedule: office}, reject: {}}
default: {reject: {}}
"""
        },
        "schedules: Input should be a valid dictionary",
    ),
    (
        "no-cascade-from-a-rule-without-a-name",
        {
            "rules.yaml": """\
version: 1
rules:
  - {name: a, reject: {}}
  - {reject: {}}  # <-
default: {reject: {}}
tests:
  - {from: "+14155550100", to: "+14155550199", expect: b}
"""
        },
        "rules[1]: missing key 'name'",
    ),
    (
        "missing-keys-of-one-mapping-in-one-message",
        {
            "rules.yaml": """\
version: 1
schedules:
  office:
    weekly:
      - {}  # <-
default: {reject: {}}
"""
        },
        "schedules.office.weekly[0]: missing keys 'days', 'from', 'to'",
    ),
    (
        "number-condition-naming-nothing",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      caller: {in: null}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "a number condition takes exactly one of",
    ),
    (
        "header-test-naming-nothing",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      header:
        X-Partner-Id: {present: null}  # <-
    reject: {}
default: {reject: {}}
"""
        },
        "a header test takes exactly one of",
    ),
    (
        "profile-extending-a-list",
        {
            "rules.yaml": """\
version: 1
profiles:
  base: {model: gpt-realtime}
  desk:
    extends: [base]  # <-
default: {accept: {profile: base}}
"""
        },
        "unknown profile",
    ),
    (
        "no-cascade-from-an-unquoted-boolean",
        {
            "rules.yaml": HEAD
            + """\
rules:
  - name: a
    when:
      header:
        X-Recording: {present: yes}  # <-
    reject: {}
  - {name: b, when: {schedule: office}, reject: {}}
default: {reject: {}}
"""
        },
        'quote it: "yes"',
    ),
]


@pytest.mark.parametrize(
    ("files", "fragment"), [(f, m) for _, f, m in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_file_is_refused_with_its_place(
    tmp_path: Path, files: dict[str, str], fragment: str
) -> None:
    path = write_files(tmp_path, files)
    file, line = marked_place(tmp_path, files)
    problems = load_problems(path)
    shown = "\n".join(str(p) for p in problems)
    assert len(problems) == 1, shown
    assert str(problems[0]).startswith(f"{file}:{line}: "), shown
    assert fragment in str(problems[0]), shown
    assert problems[0].severity == "error"


def test_every_reference_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        rules:
          - name: a
            when: {caller: {in: vipp}}
            reject: {status_code: 486}
          - name: b
            when: {schedule: ofice}
            refer: {target_uri: "tel:12345"}
        default: {accept: {profile: dsek}}
        """
    )
    path = write_files(tmp_path, {"rules.yaml": text})
    problems = load_problems(path)
    assert [p.line for p in problems] == [11, 14, 15, 16], [str(p) for p in problems]


def test_every_shape_problem_is_reported(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        rules:
          - name: a
            reject: {status_code: 399}
          - name: b
            when: {callr: "+1*"}
            reject: {}
        default: {reject: {status_code: 700}}
        """
    )
    path = write_files(tmp_path, {"rules.yaml": text})
    problems = load_problems(path)
    assert [p.line for p in problems] == [11, 13, 15], [str(p) for p in problems]


def test_a_broken_file_never_yields_a_ruleset_even_with_warnings(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        rules:
          - name: everyone
            reject: {}
          - name: shadowed
            when: {caller: "+1415*"}
            reject: {status_code: 900}
        default: {reject: {}}
        """
    )
    path = write_files(tmp_path, {"rules.yaml": text})
    problems = load_problems(path)
    assert [p.severity for p in problems] == ["error"]
    assert "status_code" in str(problems[0])


def test_problem_text_is_file_line_message() -> None:
    assert str(Problem("rules.yaml", 7, "unknown key 'x'")) == "rules.yaml:7: unknown key 'x'"
    assert str(Problem("rules.yaml", 3, "shadowed", "warning")) == "rules.yaml:3: warning: shadowed"


@pytest.mark.parametrize(
    "action",
    [
        "reject: {status_code: 400}",
        "reject: {status_code: 699}",
        "reject: {}",
        'refer: {target_uri: "tel:+14155550100"}',
        'refer: {target_uri: "tel:+14155550100;ext=12"}',
        'refer: {target_uri: "sip:desk@pbx.example.com"}',
        'refer: {target_uri: "sips:desk@pbx.example.com:5061;transport=tls"}',
        'refer: {target_uri: "sip:+14155550100@10.0.0.1;user=phone"}',
        'refer: {target_uri: "sip:{{ caller.e164 }}@pbx.example.com"}',
    ],
)
def test_valid_actions_load(tmp_path: Path, action: str) -> None:
    path = write_files(tmp_path, {"rules.yaml": HEAD + f"default: {{{action}}}\n"})
    assert load_ruleset(path).default.kind == action.split(":")[0]


def test_pattern_with_reversed_class_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        rules:
          - name: a
            when:
              caller: {pattern: "+1415[5-1]XXXXXX"}  # <-
            reject: {}
        default: {reject: {}}
        """
    )
    files = {"rules.yaml": text}
    path = write_files(tmp_path, files)
    file, line = marked_place(tmp_path, files)
    problems = load_problems(path)
    assert str(problems[0]).startswith(f"{file}:{line}: ")


def test_test_case_expecting_an_unknown_rule_is_an_error(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        rules:
          - name: vip
            when: {caller: {in: vip}}
            reject: {}
        default: {accept: {profile: desk}}
        tests:
          - {from: "+14155550100", to: "+14155550199", expect: vip-desk}  # <-
        """
    )
    files = {"rules.yaml": text}
    path = write_files(tmp_path, files)
    file, line = marked_place(tmp_path, files)
    problems = load_problems(path)
    assert any(
        str(p).startswith(f"{file}:{line}: ") and "vip-desk" in p.message for p in problems
    ), [str(p) for p in problems]


def test_unquoted_international_number_is_not_silently_changed(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        defaults: {region: DE}
        rules:
          - name: mobile
            when:
              caller: +4915112345678  # <-
            reject: {}
        default: {accept: {profile: desk}}
        profiles:
          desk: {model: gpt-realtime}
        """
    )
    files = {"rules.yaml": text}
    path = write_files(tmp_path, files)
    file, line = marked_place(tmp_path, files)
    try:
        ruleset = load_ruleset(path)
    except RuleFileError as exc:
        refused = exc.problems[0]
    else:
        at = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
        decision = ruleset.decide(simulated_context(ruleset, "+4915112345678", "+4930123456", at))
        assert decision.rule == "mobile"
        return
    # Refusing it with a hint is as good as reading it right.
    assert str(refused).startswith(f"{file}:{line}: ")
    assert "quote" in refused.message


# --- warnings ----------------------------------------------------------------------------


def load_warnings(tmp_path: Path, rules: str) -> list[str]:
    path = write_files(tmp_path, {"rules.yaml": HEAD + textwrap.dedent(rules)})
    return list(load_ruleset(path).warnings)


SHADOWED = [
    (
        "after-catch-all",
        """\
        rules:
          - name: everyone
            reject: {}
          - name: sf  # <-
            when: {caller: "+1415*"}
            reject: {}
        default: {reject: {}}
        """,
        "everyone",
    ),
    (
        "after-empty-when",
        """\
        rules:
          - name: everyone
            when: {}
            reject: {}
          - name: vip-desk  # <-
            when: {caller: {in: vip}, schedule: office}
            reject: {}
        default: {reject: {}}
        """,
        "everyone",
    ),
    (
        "identical-condition-written-differently",
        """\
        rules:
          - name: desk
            when: {caller: "+14155550100"}
            reject: {}
          - name: desk-again  # <-
            when: {caller: "(415) 555-0100"}
            reject: {}
        default: {reject: {}}
        """,
        "desk",
    ),
    (
        "broader-prefix",
        """\
        rules:
          - name: nanp
            when: {caller: "+1*"}
            reject: {}
          - name: sf  # <-
            when: {caller: "+1415*"}
            reject: {}
        default: {reject: {}}
        """,
        "nanp",
    ),
    (
        "broader-prefix-and-fewer-keys",
        """\
        rules:
          - name: nanp
            when: {caller: "+1*"}
            reject: {}
          - name: sf-in-hours  # <-
            when: {caller: ["+1415*", "+14155550100"], schedule: office}
            reject: {}
        default: {reject: {}}
        """,
        "nanp",
    ),
]


@pytest.mark.parametrize(
    ("rules", "earlier"), [(r, e) for _, r, e in SHADOWED], ids=[s[0] for s in SHADOWED]
)
def test_rule_that_can_never_match_is_warned(tmp_path: Path, rules: str, earlier: str) -> None:
    text = HEAD + textwrap.dedent(rules)
    files = {"rules.yaml": text}
    path = write_files(tmp_path, files)
    file, line = marked_place(tmp_path, files)
    warnings = list(load_ruleset(path).warnings)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{file}:{line}: warning: ")
    assert f"rule '{earlier}' before it" in warnings[0]


NOT_SHADOWED = [
    (
        "narrower-before-broader",
        """\
        rules:
          - name: sf
            when: {caller: "+1415*"}
            reject: {}
          - name: nanp
            when: {caller: "+1*"}
            reject: {}
        default: {reject: {}}
        """,
    ),
    (
        "earlier-needs-a-key-the-later-does-not",
        """\
        rules:
          - name: nanp-to-desk
            when: {caller: "+1*", called: "+14155550100"}
            reject: {}
          - name: sf
            when: {caller: "+1415*"}
            reject: {}
        default: {reject: {}}
        """,
    ),
    (
        "later-has-a-number-the-earlier-lacks",
        """\
        rules:
          - name: sf-or-peninsula
            when: {caller: ["+1415*", "+1650*"]}
            reject: {}
          - name: sf-or-dc
            when: {caller: ["+1415*", "+1202*"]}
            reject: {}
        default: {reject: {}}
        """,
    ),
    (
        "different-schedule",
        """\
        rules:
          - name: in-hours
            when: {schedule: office}
            reject: {}
          - name: out-of-hours
            when: {not: {schedule: office}}
            reject: {}
        default: {reject: {}}
        """,
    ),
    (
        "exact-before-its-prefix",
        """\
        rules:
          - name: one
            when: {caller: "+14155550100"}
            reject: {}
          - name: block
            when: {caller: "+1415555*"}
            reject: {}
        default: {reject: {}}
        """,
    ),
]


@pytest.mark.parametrize("rules", [r for _, r in NOT_SHADOWED], ids=[n[0] for n in NOT_SHADOWED])
def test_rule_narrower_in_a_way_the_earlier_does_not_cover_is_not_warned(
    tmp_path: Path, rules: str
) -> None:
    assert load_warnings(tmp_path, rules) == []


def test_same_header_condition_in_other_case_is_warned(tmp_path: Path) -> None:
    rules = """\
        rules:
          - name: partner
            when: {header: {X-Partner-Id: "PH0042"}}
            reject: {}
          - name: partner-again
            when: {header: {x-partner-id: "PH0042"}}
            reject: {}
        default: {reject: {}}
        """
    warnings = load_warnings(tmp_path, rules)
    assert len(warnings) == 1
    assert "partner-again" in warnings[0]


def test_function_tools_are_warned_and_mcp_tools_are_not(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        profiles:
          desk:  # <-
            model: gpt-realtime
            tools:
              - {type: function, name: lookup_patient, parameters: {type: object}}
              - type: mcp
                server_label: crm
                server_url: https://mcp.example.com/sse
        default: {accept: {profile: desk}}
        """
    )
    files = {"rules.yaml": text}
    path = write_files(tmp_path, files)
    file, line = marked_place(tmp_path, files)
    warnings = list(load_ruleset(path).warnings)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{file}:{line}: warning: ")
    assert "'lookup_patient' is a function tool" in warnings[0]


def test_the_example_rule_file_loads_without_problems() -> None:
    ruleset = load_ruleset(Path("routing_rules/rules.yaml"))
    assert ruleset.warnings == ()
    assert [r.name for r in ruleset.rules][:2] == ["blocked-callers", "withheld-number"]


@pytest.mark.parametrize(
    ("regex", "reason"),
    [
        (r"(PH[0-9]{4})-\1", "back-references are not supported"),
        (r"(?=PH)[A-Z0-9]+", "look-ahead is not supported"),
        (r"(?!PH)[A-Z0-9]+", "look-ahead is not supported"),
        (r"(?<!x)PH[0-9]{4}", "look-behind is not supported"),
        # Bounded nesting: 64 x 64 repetitions, exponential for a backtracking engine.
        (r"([A-Za-z0-9]{1,64}){1,64}-x", "invalid repetition size: {1,64} (at most 1000"),
    ],
)
@pytest.mark.parametrize(
    "where", ["header: {X-Partner-Id: {regex: '%s'}}", "caller: {regex: '%s'}"]
)
def test_a_regex_re2_cannot_match_in_linear_time_is_refused_with_the_reason(
    tmp_path: Path, regex: str, reason: str, where: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: partner\n"
        f"    when: {{{where % regex}}}\n"
        "    reject: {}\n"
        "default: {reject: {}}\n"
    )
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(path)
    [problem] = caught.value.problems
    assert str(problem).startswith(f"{path}:4: rule 'partner' when.")
    assert "invalid regex: RE2 cannot compile it: " in problem.message
    assert reason in problem.message


@pytest.mark.parametrize(
    "regex", [r"[A-Z]{3}[0-9]{4}", r"PH[0-9]{4}", r"(ab){2,5}", r".*gold.*", r"(?P<id>\d+)"]
)
def test_ordinary_header_regexes_load(tmp_path: Path, regex: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: partner\n"
        f"    when: {{header: {{X-Partner-Id: {{regex: '{regex}'}}}}}}\n"
        "    reject: {}\n"
        "default: {reject: {}}\n"
    )
    assert load_ruleset(path).rules[0].name == "partner"


# --- every problem in one run ---------------------------------------------------------------

EVERY_KIND = """\
version: 1
defaults:
  timezone: America/Los_Angles
  region: US
profiles:
  desk: {model: gpt-realtime}
lists:
  vip: ["+14155550100"]
schedules:
  office:
    weekly:
      - days: mon-fri
        from: 08:30
        to: "18:00"
rules:
  - name: vip-desk
    whne: {caller: {in: vip}}
    refer: {target_uri: "sip:desk@pbx.example.com"}
  - name: busy
    when: {caller: {in: vipp}}
    reject: {status_code: 700}
  - name: front
    when: {schedule: office}
    accept: {profile: dsek}
default: {reject: {}}
"""


def test_one_load_reports_every_kind_of_problem(tmp_path: Path) -> None:
    path = write_files(tmp_path, {"rules.yaml": EVERY_KIND})
    assert [str(p) for p in load_problems(path)] == [
        f"{path}:3: unknown time zone 'America/Los_Angles' (did you mean 'America/Los_Angeles'?)",
        f'{path}:13: 08:30 is read by YAML as a number; times must be quoted: "08:30"',
        f"{path}:17: rule 'vip-desk': unknown key 'whne' (did you mean 'when'?)",
        f"{path}:20: rule 'busy' when.caller: unknown list 'vipp' (did you mean 'vip'?)",
        f"{path}:21: rule 'busy' reject.status_code: Input should be less than or equal to 699",
        f"{path}:24: unknown profile 'dsek' (did you mean 'desk'?)",
    ]


def test_a_rule_with_a_shape_problem_is_still_checked_for_the_rest(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        rules:
          - name: a
            when: {caller: {in: vipp}, shedule: office}
            reject: {status_code: 700}
        default: {reject: {}}
        """
    )
    path = write_files(tmp_path, {"rules.yaml": text})
    messages = [p.message for p in load_problems(path)]
    assert messages == [
        "rule 'a' when: unknown key 'shedule' (did you mean 'schedule'?)",
        "rule 'a' when.caller: unknown list 'vipp' (did you mean 'vip'?)",
        "rule 'a' reject.status_code: Input should be less than or equal to 699",
    ]


def test_a_yaml_trap_does_not_hide_the_other_problems(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent(
        """\
        rules:
          - name: norway
            when: {caller: {country: NO}}
            reject: {}
          - name: desk
            when: {schedule: ofice}
            accept: {profile: desk}
        default: {reject: {status_code: 900}}
        """
    )
    path = write_files(tmp_path, {"rules.yaml": text})
    problems = load_problems(path)
    assert [p.line for p in problems] == [11, 14, 16], [str(p) for p in problems]
    assert 'quote it: "NO"' in problems[0].message
    assert "unknown schedule 'ofice'" in problems[1].message
    assert "default.reject.status_code" in problems[2].message


def test_a_profile_repeating_its_parents_bad_value_is_reported_too(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        profiles:
          base:
            audio: {output: {speed: 2}}
          sales: {extends: base}
          support:
            extends: base
            audio: {output: {speed: 2}}
        default: {accept: {profile: support}}
        """
    )
    path = write_files(tmp_path, {"rules.yaml": text})
    problems = load_problems(path)
    assert [p.line for p in problems] == [4, 8], [str(p) for p in problems]
    assert "profiles.support.audio.output.speed" in problems[1].message


def test_a_function_tool_inherited_is_warned_once(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        profiles:
          desk:
            model: gpt-realtime
            tools: [{type: function, name: lookup_patient, parameters: {type: object}}]
          night: {extends: desk, instructions: "We are closed."}
        default: {accept: {profile: night}}
        """
    )
    path = write_files(tmp_path, {"rules.yaml": text})
    warnings = list(load_ruleset(path).warnings)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{path}:3: warning: profiles.desk: ")


@pytest.mark.parametrize(
    ("voice", "suggestion"), [("marine", "marin"), ("Cedar", "cedar"), ("shimer", "shimmer")]
)
def test_a_voice_close_to_a_built_in_one_is_warned_about(
    tmp_path: Path, voice: str, suggestion: str
) -> None:
    text = f"""\
version: 1
profiles:
  desk:
    audio: {{output: {{voice: {voice}}}}}
default: {{accept: {{profile: desk}}}}
"""
    path = write_files(tmp_path, {"rules.yaml": text})
    ruleset = load_ruleset(path)
    assert list(ruleset.warnings) == [
        f"{path}:3: warning: profiles.desk: voice '{voice}' is not a built-in voice (did you"
        f" mean '{suggestion}'?); it is sent as the name of a custom voice"
    ]


@pytest.mark.parametrize("voice", ["marin", "voice_1234", "my-brand-voice"])
def test_built_in_and_custom_voices_are_not_warned_about(tmp_path: Path, voice: str) -> None:
    text = f"""\
version: 1
profiles:
  desk:
    audio: {{output: {{voice: {voice}}}}}
default: {{accept: {{profile: desk}}}}
"""
    assert list(load_ruleset(write_files(tmp_path, {"rules.yaml": text})).warnings) == []


# --- the ruleset version ----------------------------------------------------------------------

VERSIONED = {
    "routing_rules/rules.yaml": """\
version: 1
profiles:
  concierge: {model: gpt-realtime, instructions_file: prompts/concierge.md}
lists:
  blocked: {file: ./lists/blocked.txt}
rules:
  - {name: blocked, when: {caller: {in: blocked}}, reject: {}}
default: {accept: {profile: concierge}}
""",
    "routing_rules/lists/blocked.txt": "+12025550199\n",
    "routing_rules/prompts/concierge.md": "You are the concierge.\n",
}


def test_the_version_does_not_depend_on_how_the_path_is_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_files(tmp_path, VERSIONED)
    (tmp_path / "elsewhere").symlink_to(tmp_path / "routing_rules")
    monkeypatch.chdir(tmp_path)
    spellings = [
        "routing_rules/rules.yaml",
        "./routing_rules/rules.yaml",
        str(tmp_path / "routing_rules" / "rules.yaml"),
        "elsewhere/rules.yaml",
        "routing_rules/../routing_rules/rules.yaml",
    ]
    versions = {load_ruleset(spelling).version for spelling in spellings}
    assert len(versions) == 1, versions


def test_the_version_is_the_same_for_a_copy_of_the_folder(tmp_path: Path) -> None:
    first = write_files(tmp_path / "laptop", VERSIONED)
    second = write_files(tmp_path / "server" / "app", VERSIONED)
    assert load_ruleset(first).version == load_ruleset(second).version


@pytest.mark.parametrize(
    ("name", "before", "after"),
    [
        ("routing_rules/lists/blocked.txt", "+12025550199", "+12025550198"),
        ("routing_rules/prompts/concierge.md", "concierge", "receptionist"),
        ("routing_rules/rules.yaml", "reject: {}", "reject: {status_code: 486}"),
    ],
)
def test_the_version_changes_with_any_files_content(
    tmp_path: Path, name: str, before: str, after: str
) -> None:
    path = write_files(tmp_path, VERSIONED)
    original = load_ruleset(path).version
    target = tmp_path / name
    target.write_text(target.read_text().replace(before, after))
    assert load_ruleset(path).version != original


def test_the_version_changes_when_a_referenced_file_is_renamed(tmp_path: Path) -> None:
    path = write_files(tmp_path, VERSIONED)
    original = load_ruleset(path).version
    lists = tmp_path / "routing_rules" / "lists"
    (lists / "blocked.txt").rename(lists / "denied.txt")
    path.write_text(path.read_text().replace("blocked.txt", "denied.txt"))
    assert load_ruleset(path).version != original
