"""Decisions of compiled rule files: numbers, headers, nesting, order, schedules, profiles.

Every case builds a small rule file, loads it with the real loader and decides simulated
or hand-made calls at fixed instants.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.rules.call_context import CallContext
from app.rules.loader import load_ruleset
from app.rules.ruleset import Decision, Ruleset
from app.rules.simulation import run_rule_tests, simulated_context
from app.sip_identity import SipHeaders, parse_parties

# A Monday noon in UTC: no schedule is involved unless a test says so.
AT = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def load(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> Ruleset:
    for name, content in (files or {}).items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_ruleset(path)


def decide(
    ruleset: Ruleset,
    caller: str,
    called: str = "+14155550100",
    *,
    at: datetime = AT,
    headers: dict[str, str] | None = None,
    explain: bool = False,
) -> Decision:
    return ruleset.decide(simulated_context(ruleset, caller, called, at, headers), explain=explain)


def decide_headers(
    ruleset: Ruleset, pairs: list[tuple[str, str]], *, explain: bool = False
) -> Decision:
    """A call described by its raw SIP headers, as the webhook carries them."""
    headers = SipHeaders.from_pairs(pairs)
    parties = parse_parties(headers, ruleset.region or "ZZ")
    ctx = CallContext(call_id="rtc_test", parties=parties, headers=headers, at=AT)
    return ruleset.decide(ctx, explain=explain)


def rule_for(ruleset: Ruleset, caller: str, called: str = "+14155550100") -> str | None:
    return decide(ruleset, caller, called).rule


# --- numbers ------------------------------------------------------------------------------

US_FORMS = ["4155550123", "+1 (415) 555-0123", "14155550123", "+14155550123"]


@pytest.mark.parametrize("written", US_FORMS)
@pytest.mark.parametrize("dialled", [*US_FORMS, "(415) 555-0123", "+1.415.555.0123"])
def test_exact_number_in_every_written_form_is_the_same(
    tmp_path: Path, written: str, dialled: str
) -> None:
    ruleset = load(
        tmp_path,
        f"""\
        version: 1
        defaults: {{region: US}}
        rules:
          - {{name: exact, when: {{caller: "{written}"}}, reject: {{}}}}
          - {{name: exact-key, when: {{called: {{exact: "{written}"}}}}, reject: {{}}}}
        default: {{reject: {{status_code: 486}}}}
        """,
    )
    assert rule_for(ruleset, dialled, "+12125550100") == "exact"
    assert rule_for(ruleset, "+12125550100", dialled) == "exact-key"
    assert rule_for(ruleset, "+14155550124", "+12125550100") is None


@pytest.mark.parametrize(
    ("prefix", "caller", "matches"),
    [
        ("+1415*", "+14155550123", True),
        ("+1415*", "(415) 555-0123", True),
        ("+1415*", "+16505550123", False),
        ("1415*", "+14155550123", True),
        ("1415*", "+16505550123", False),
        ("415*", "+14155550123", True),
        ("+1 (415) 555*", "+14155550123", True),
        ("+1 (415) 555*", "+14156660123", False),
        ("+44*", "+442079460958", True),
        ("+44*", "+14155550123", False),
    ],
)
def test_prefix_with_and_without_plus(
    tmp_path: Path, prefix: str, caller: str, matches: bool
) -> None:
    ruleset = load(
        tmp_path,
        f"""\
        version: 1
        defaults: {{region: US}}
        rules:
          - {{name: short, when: {{caller: "{prefix}"}}, reject: {{}}}}
          - {{name: long, when: {{caller: {{prefix: "{prefix}"}}}}, reject: {{}}}}
        default: {{reject: {{status_code: 486}}}}
        """,
    )
    assert (rule_for(ruleset, caller) == "short") is matches


@pytest.mark.parametrize(
    ("caller", "rule"),
    [
        ("+4915112345678", "mobile"),
        ("015112345678", "mobile"),
        ("0049 151 12345678", "mobile"),
        ("+4915212345678", None),
        ("+4930901820", "berlin"),
        ("030 901820", "berlin"),
    ],
)
def test_national_prefixes_are_read_in_the_region(
    tmp_path: Path, caller: str, rule: str | None
) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        defaults: {region: DE}
        rules:
          - {name: mobile, when: {caller: "0151*"}, reject: {}}
          - {name: berlin, when: {caller: "030*"}, reject: {}}
        default: {reject: {status_code: 486}}
        """,
    )
    assert rule_for(ruleset, caller, "+4930123456") == rule


@pytest.mark.parametrize(
    ("caller", "rule"),
    [
        ("+14155550123", "pattern"),
        ("+14159930123", "pattern"),
        ("+14151550123", "pattern"),
        ("+14155150123", None),  # N is 2-9, not 1
        ("+14150550123", None),  # Z is 1-9, not 0
        ("+14155560123", None),  # [1-5] does not hold 6
        ("+141555501234", None),  # one digit too many: patterns match whole numbers
        ("+1415555012", None),
        ("+4930123456", "short-pattern"),
    ],
)
def test_pattern_letters_and_classes(tmp_path: Path, caller: str, rule: str | None) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        defaults: {region: US}
        rules:
          - {name: pattern, when: {caller: {pattern: "+1415ZN[1-5]XXXX"}}, reject: {}}
          - {name: short-pattern, when: {caller: {pattern: "4930XXXXXX"}}, reject: {}}
        default: {reject: {status_code: 486}}
        """,
    )
    assert rule_for(ruleset, caller) == rule


@pytest.mark.parametrize(
    ("regex", "caller", "matches"),
    [
        (r"\+1415555[0-9]{4}", "+14155550123", True),
        (r"\+1415", "+14155550123", False),  # a partial match is no match
        (r"[0-9]{4}", "+14155550123", False),
        (r"\+1(415|650)[0-9]{7}", "+16505550123", True),
        (r"\+1(415|650)[0-9]{7}", "+12125550123", False),
        (r".*0123", "+14155550123", True),
    ],
)
def test_regex_must_match_the_whole_number(
    tmp_path: Path, regex: str, caller: str, matches: bool
) -> None:
    ruleset = load(
        tmp_path,
        f"""\
        version: 1
        defaults: {{region: US}}
        rules:
          - name: regex
            when: {{caller: {{regex: '{regex}'}}}}
            reject: {{}}
        default: {{reject: {{status_code: 486}}}}
        """,
    )
    assert (rule_for(ruleset, caller) == "regex") is matches


LIST_FILE = """\
# numbers this clinic never answers
+1 (202) 555-0199
2025550188        # national form, read in region US
1-213-555-0177
+1 650 555*       # a whole block
+44 20 7946 0958

   # an indented comment, then a blank line

(312) 555-0166
"""


@pytest.mark.parametrize(
    ("caller", "blocked"),
    [
        ("+12025550199", True),
        ("+12025550188", True),
        ("+12135550177", True),
        ("+16505551234", True),
        ("+442079460958", True),
        ("+13125550166", True),
        ("+12025550100", False),
        ("+16515551234", False),
    ],
)
def test_in_list_from_file_and_inline(tmp_path: Path, caller: str, blocked: bool) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        defaults: {region: US}
        lists:
          blocked: {file: lists/blocked.txt}
          inline:
            - "+1 (202) 555-0199"
            - "2025550188"
            - 1-213-555-0177
            - "+1 650 555*"
            - "+44 20 7946 0958"
            - "(312) 555-0166"
        rules:
          - {name: from-file, when: {caller: {in: blocked}}, reject: {}}
        default: {reject: {status_code: 486}}
        """,
        {"lists/blocked.txt": LIST_FILE},
    )
    assert (rule_for(ruleset, caller) == "from-file") is blocked
    inline = load(
        tmp_path,
        (tmp_path / "rules.yaml")
        .read_text()
        .replace("{in: blocked}", "{in: inline}")
        .replace("from-file", "inline"),
    )
    assert (rule_for(inline, caller) == "inline") is blocked


def test_list_of_a_million_numbers_decides_correctly(tmp_path: Path) -> None:
    lines = [f"+1415{i:07d}" for i in range(1_000_000)]
    lines[500_000] = "+1 (628) 555-*  # a prefix in the middle"
    ruleset = load(
        tmp_path,
        """\
        version: 1
        defaults: {region: US}
        lists:
          big: {file: lists/big.txt}
        rules:
          - {name: big, when: {caller: {in: big}}, reject: {}}
        default: {reject: {status_code: 486}}
        """,
        {"lists/big.txt": "# generated\n" + "\n".join(lines) + "\n"},
    )
    assert rule_for(ruleset, "+14150000000") == "big"
    assert rule_for(ruleset, "+14150999999") == "big"
    assert rule_for(ruleset, "+1 (415) 012-3456") == "big"
    assert rule_for(ruleset, "+16285550123") == "big"
    assert rule_for(ruleset, "+14150500000") is None  # replaced by the prefix line
    assert rule_for(ruleset, "+14151000000") is None
    assert rule_for(ruleset, "+16295550123") is None


@pytest.mark.parametrize(
    ("caller", "rule"),
    [
        ("+4930901820", "germany"),
        ("+43 1 53115", "alps"),
        ("+41 44 668 18 00", "alps"),
        ("+33 1 42 68 53 00", None),
        ("+14155550123", None),
        ("anonymous", None),
    ],
)
def test_country_single_and_list(tmp_path: Path, caller: str, rule: str | None) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        rules:
          - {name: germany, when: {caller: {country: DE}}, reject: {}}
          - {name: alps, when: {caller: {country: [AT, ch]}}, reject: {}}
        default: {reject: {status_code: 486}}
        """,
    )
    assert rule_for(ruleset, caller, "+4930123456") == rule


ANONYMITY_RULES = """\
version: 1
defaults: {region: US}
rules:
  - {name: withheld, when: {caller: anonymous}, reject: {status_code: 433}}
  - {name: germany, when: {caller: {country: DE}}, reject: {}}
default: {reject: {status_code: 486}}
"""


@pytest.mark.parametrize(
    ("pairs", "rule"),
    [
        ([("From", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1')], "withheld"),
        ([("From", "<sip:anonymous@pbx.example.com>;tag=1")], "withheld"),
        ([("From", "<sip:+14155550123@anonymous.invalid>;tag=1")], "withheld"),
        ([("From", "<sip:+14155550123@pbx.example.com>;tag=1"), ("Privacy", "id")], "withheld"),
        (
            [("From", "<sip:+14155550123@pbx.example.com>;tag=1"), ("privacy", "header;id")],
            "withheld",
        ),
        ([("From", "<sip:@pbx.example.com>;tag=1")], "withheld"),
        ([("From", "<sip:reception@pbx.example.com>;tag=1")], "withheld"),
        ([], "withheld"),
        ([("From", "<sip:+14155550123@pbx.example.com>;tag=1")], None),
        ([("From", "<sip:+14155550123@pbx.example.com>;tag=1"), ("Privacy", "none")], None),
        # P-Asserted-Identity wins over From.
        (
            [
                ("From", "<sip:anonymous@anonymous.invalid>;tag=1"),
                ("P-Asserted-Identity", "<sip:+4930901820@carrier.example>"),
            ],
            "germany",
        ),
        ([("f", '"Klinik" <tel:+4930901820>;tag=1')], "germany"),
    ],
)
def test_anonymous_callers(tmp_path: Path, pairs: list[tuple[str, str]], rule: str | None) -> None:
    ruleset = load(tmp_path, ANONYMITY_RULES)
    assert decide_headers(ruleset, [*pairs, ("To", "<sip:+14155550100@trunk>")]).rule == rule


@pytest.mark.parametrize(
    "from_value",
    [
        "<sip:+4930901820@carrier.example>;tag=1",
        "sip:+4930901820@carrier.example;tag=1",
        "<sips:+4930901820@carrier.example:5061;transport=tls>",
        "<tel:+4930901820>",
        "tel:+49-30-901820",
        '"Praxis Dr. Weber" <sip:+49%2030%20901820@carrier.example;user=phone>;tag=1',
        "Praxis <sip:+4930901820@carrier.example>",
        "<sip:+4930901820;phone-context=+49@carrier.example>",
    ],
)
def test_caller_identity_in_any_uri_form(tmp_path: Path, from_value: str) -> None:
    ruleset = load(tmp_path, ANONYMITY_RULES)
    assert decide_headers(ruleset, [("From", from_value), ("To", "<sip:+1415@x>")]).rule == (
        "germany"
    )


@pytest.mark.parametrize(
    ("caller", "rule"),
    [
        ("+14155550100", "any-of"),
        ("+16505551234", "any-of"),
        ("anonymous", "any-of"),
        ("+4930901820", "any-of"),
        ("+14155550101", None),
        ("+4940123456", None),
    ],
)
def test_yaml_list_of_numbers_means_any(tmp_path: Path, caller: str, rule: str | None) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        defaults: {region: US}
        rules:
          - name: any-of
            when:
              caller:
                - "+14155550100"
                - "+1650*"
                - anonymous
                - {prefix: "+4930"}
            reject: {}
        default: {reject: {status_code: 486}}
        """,
    )
    assert rule_for(ruleset, caller) == rule


# --- headers ------------------------------------------------------------------------------

HEADER_RULES = """\
version: 1
defaults: {region: US}
rules:
  - name: exact
    when: {header: {X-Partner-Id: "PH0042"}}
    reject: {status_code: 480}
  - name: regex
    when: {header: {x-partner-id: {regex: "PH[0-9]{4}"}}}
    reject: {status_code: 481}
  - name: recorded
    when: {header: {X-RECORDING: {present: true}}}
    reject: {status_code: 482}
  - name: no-trunk-group
    when: {header: {X-Trunk-Group: {present: false}}}
    reject: {status_code: 483}
default: {reject: {status_code: 486}}
"""

CALLER = [("From", "<sip:+14155550123@pbx.example.com>"), ("To", "<sip:+14155550100@trunk>")]
TRUNK = [("X-Trunk-Group", "main")]


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        ([("X-Partner-Id", "PH0042")], "exact"),
        ([("x-partner-id", "PH0042")], "exact"),
        ([("X-PARTNER-ID", "PH0043")], "regex"),
        ([("X-Partner-Id", "ph0042")], None),  # values are compared as sent
        ([("X-Partner-Id", "PH00421")], None),  # regex is a full match
        ([("X-Partner-Id", "xPH0042")], None),
        ([("X-Partner-Id", "nope"), ("X-Partner-Id", "PH0042")], "exact"),
        ([("X-Partner-Id", "nope"), ("x-partner-id", "PH7777")], "regex"),
        ([("x-recording", "")], "recorded"),
        ([("X-Recording", "yes")], "recorded"),
        ([], None),
    ],
)
def test_header_conditions(
    tmp_path: Path, headers: list[tuple[str, str]], rule: str | None
) -> None:
    ruleset = load(tmp_path, HEADER_RULES)
    assert decide_headers(ruleset, [*CALLER, *TRUNK, *headers]).rule == rule


def test_header_present_false_holds_only_when_absent(tmp_path: Path) -> None:
    ruleset = load(tmp_path, HEADER_RULES)
    assert decide_headers(ruleset, CALLER).rule == "no-trunk-group"
    assert decide_headers(ruleset, [*CALLER, ("x-trunk-group", "")]).rule is None


HOSTILE_RULES = """\
version: 1
rules:
  - name: beyond-256
    when: {header: {X-Note: {regex: "a*MAGIC"}}}
    reject: {status_code: 480}
  - name: first-256
    when: {header: {X-Note: {regex: "a{256}"}}}
    reject: {status_code: 481}
  - name: partner
    when: {header: {X-Partner-Id: {regex: "PH[0-9]{4}"}}}
    reject: {status_code: 482}
  - name: partner-exact
    when: {header: {X-Partner-Id: "PH0042"}}
    reject: {status_code: 483}
  - name: anything-present
    when: {header: {X-Partner-Id: {present: true}}}
    reject: {status_code: 484}
default: {reject: {status_code: 486}}
"""


@pytest.mark.parametrize(
    ("headers", "rule"),
    [
        # Values are capped at 256 characters before matching.
        ([("X-Note", "a" * 300 + "MAGIC")], "first-256"),
        ([("X-Note", "a" * 10 * 1024)], "first-256"),
        ([("X-Note", "a" * 200 + "MAGIC")], "beyond-256"),
        ([("X-Partner-Id", "PH0042\x00")], "anything-present"),
        ([("X-Partner-Id", "PH0042\r\nX-Admin: 1")], "anything-present"),
        ([("X-Partner-Id", "\x1b[2JPH0042")], "anything-present"),
        ([("X-Partner-Id", "\u202ePH0042")], "anything-present"),
        ([("X-Partner-Id", "PH\u202e0042")], "anything-present"),
        ([("X-Partner-Id", "PH0042" + "\u202e" * 5000)], "anything-present"),
        ([("X-Partner-Id", "PH0042")], "partner"),
    ],
)
def test_hostile_header_values_never_crash_and_match_as_written(
    tmp_path: Path, headers: list[tuple[str, str]], rule: str
) -> None:
    ruleset = load(tmp_path, HOSTILE_RULES)
    pairs = [*CALLER, *headers]
    assert decide_headers(ruleset, pairs).rule == rule
    traced = decide_headers(ruleset, pairs, explain=True)
    assert traced.rule == rule
    assert traced.trace[-1].matched


# A rule file may come from a shared ConfigMap: its regexes are matched by RE2, in time
# linear in the value. Each pattern below takes exponential time in a backtracking engine
# on a value of this size (a 30-character header took 23.5 s).
@pytest.mark.parametrize(
    ("regex", "value", "rule"),
    [
        (r"(a|a|ab)*c", "a" * 30, None),
        (r"(a|a|ab)*c", "ab" * 15 + "c", "partner"),
        (r"(a+)+b", "a" * 30, None),
        (r"(\w+\s?)*x", "a" * 30, None),
        (r"([A-Za-z0-9]{1,15}){1,15}-x", "a" * 30, None),
        (r"([A-Za-z0-9]{1,15}){1,15}-x", "a" * 30 + "-x", "partner"),
    ],
)
def test_backtracking_bombs_in_header_regexes_decide_correctly(
    tmp_path: Path, regex: str, value: str, rule: str | None
) -> None:
    assert len(value) in (30, 31, 32)
    ruleset = load(
        tmp_path,
        f"""\
        version: 1
        rules:
          - name: partner
            when: {{header: {{X-Partner-Id: {{regex: '{regex}'}}}}}}
            reject: {{}}
        default: {{reject: {{status_code: 486}}}}
        tests:
          - {{from: "+14155550123", to: "+14155550100", headers: {{X-Partner-Id: "{value}"}},
             expect: {rule or "default"}}}
        """,
    )
    assert decide_headers(ruleset, [*CALLER, ("X-Partner-Id", value)]).rule == rule
    assert [r.passed for r in run_rule_tests(ruleset, AT)] == [True]


@pytest.mark.parametrize(
    ("regex", "caller", "rule"),
    [
        # 11 digits: minutes for a backtracking engine with nested, overlapping repetition.
        (r"\+((([0-9]|[0-9])+)+)+x", "+14155550123", None),
        (r"\+((([0-9]|[0-9])+)+)+", "+14155550123", "regex"),
        (r"\+((1|[0-9]|[0-9]{2})+)+0", "+14155550123", None),
        (r"\+((1|[0-9]|[0-9]{2})+)+3", "+14155550123", "regex"),
    ],
)
def test_backtracking_bombs_in_number_regexes_decide_correctly(
    tmp_path: Path, regex: str, caller: str, rule: str | None
) -> None:
    assert len(caller.lstrip("+")) == 11
    ruleset = load(
        tmp_path,
        f"""\
        version: 1
        rules:
          - name: regex
            when: {{caller: {{regex: '{regex}'}}}}
            reject: {{}}
        default: {{reject: {{status_code: 486}}}}
        """,
    )
    assert rule_for(ruleset, caller) == rule


def test_hostile_identity_headers_never_crash(tmp_path: Path) -> None:
    ruleset = load(tmp_path, ANONYMITY_RULES)
    hostile = [
        "<" * 10_000,
        '"' + "\\" * 10_000,
        "sip:" + "9" * 10_000 + "@x",
        "\u202e<sip:+4930901820@x>",
        "<sip:+4930901820\x00@x>",
        "<tel:+49-30-901820;phone-context=" + "+" * 5000 + ">",
    ]
    for value in hostile:
        decision = decide_headers(ruleset, [("From", value), ("To", value)], explain=True)
        assert decision.action == "reject"


# --- nesting and order --------------------------------------------------------------------

NESTED_RULES = """\
version: 1
defaults: {region: US}
rules:
  - name: nested
    when:
      any:
        - all:
            - {caller: "+1415*"}
            - not: {header: {X-Vip: {present: true}}}
        - {caller: {country: DE}, called: "+4930123456"}
        - not:
            any:
              - {caller: "+1*"}
              - {caller: "+49*"}
              - {caller: anonymous}
    reject: {}
default: {reject: {status_code: 486}}
"""


@pytest.mark.parametrize(
    ("caller", "called", "headers", "rule"),
    [
        ("+14155550123", "+14155550100", None, "nested"),
        ("+14155550123", "+14155550100", {"X-Vip": "1"}, None),
        ("+16505550123", "+14155550100", None, None),
        ("+4940123456", "+4930123456", None, "nested"),
        ("+4940123456", "+4930999999", None, None),
        ("+442079460958", "+14155550100", None, "nested"),
        ("anonymous", "+14155550100", None, None),
    ],
)
def test_all_any_not_nesting(
    tmp_path: Path, caller: str, called: str, headers: dict[str, str] | None, rule: str | None
) -> None:
    ruleset = load(tmp_path, NESTED_RULES)
    assert decide(ruleset, caller, called, headers=headers).rule == rule


def test_keys_of_one_when_are_anded(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        defaults: {region: US}
        rules:
          - name: both
            when: {caller: "+1415*", called: "+14155550177", header: {X-Lang: es}}
            reject: {}
        default: {reject: {status_code: 486}}
        """,
    )
    assert decide(ruleset, "+14155550123", "+14155550177", headers={"X-Lang": "es"}).rule == "both"
    assert decide(ruleset, "+14155550123", "+14155550177").rule is None
    assert decide(ruleset, "+14155550123", "+14155550100", headers={"X-Lang": "es"}).rule is None
    assert decide(ruleset, "+16505550123", "+14155550177", headers={"X-Lang": "es"}).rule is None


ORDERED = """\
version: 1
defaults: {region: US}
rules:
  - {name: sf, when: {caller: "+1415*"}, reject: {status_code: 480}}
  - {name: desk, when: {caller: "+14155550123"}, reject: {status_code: 481}}
  - {name: nanp, when: {caller: "+1*"}, reject: {status_code: 482}}
default: {refer: {target_uri: "sip:operator@pbx.example.com"}}
"""


def test_first_matching_rule_wins_and_default_applies_otherwise(tmp_path: Path) -> None:
    ruleset = load(tmp_path, ORDERED)
    first = decide(ruleset, "+14155550123")
    assert (first.rule, first.action, dict(first.body)) == ("sf", "reject", {"status_code": 480})
    assert decide(ruleset, "+12125550123").rule == "nanp"
    default = decide(ruleset, "+442079460958")
    assert default.rule is None
    assert (default.action, dict(default.body)) == (
        "refer",
        {"target_uri": "sip:operator@pbx.example.com"},
    )


def test_order_decides_between_rules_that_both_hold(tmp_path: Path) -> None:
    lines = ORDERED.splitlines(keepends=True)
    desk_first = "".join([*lines[:3], lines[4], lines[3], *lines[5:]])
    ruleset = load(tmp_path, desk_first)
    assert [r.name for r in ruleset.rules] == ["desk", "sf", "nanp"]
    assert decide(ruleset, "+14155550123").rule == "desk"
    assert decide(ruleset, "+14155550199").rule == "sf"


def test_no_when_and_empty_when_always_hold(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        rules:
          - {name: empty, when: {}, reject: {status_code: 480}}
        default: {reject: {status_code: 486}}
        """,
    )
    assert decide(ruleset, "anonymous").rule == "empty"
    bare = load(tmp_path, "version: 1\nrules: [{name: bare, reject: {}}]\ndefault: {reject: {}}\n")
    assert decide(bare, "+14155550123").rule == "bare"
    assert dict(decide(bare, "+14155550123").body) == {"status_code": 603}


# --- schedules ----------------------------------------------------------------------------

DOCUMENTED_EXAMPLE = """\
# yaml-language-server: $schema=../rules.schema.json
version: 1
defaults:
  timezone: America/New_York    # IANA name; schedules without their own use it
  region: US                    # how national-format numbers are read
profiles:                       # accept configurations: the accept body without "type"
  concierge:
    model: gpt-realtime
    instructions_file: prompts/concierge.md
    audio: {output: {voice: marin}}
  after_hours:
    extends: concierge
    instructions: "We are closed. Take a message for {{ caller.e164 }}."
    max_duration_s: 300         # sip-router hangs up after this long
lists:
  blocked: {file: lists/blocked.txt}         # one number or prefix (ending in *) a line
  vip: ["+14155550100", "+1415555*"]
schedules:
  office:
    timezone: Europe/Berlin
    weekly:
      - {days: mon-fri, from: "08:30", to: "18:00"}
      - {days: fri, from: "22:00", to: "02:00"}    # overnight: belongs to Friday
    closed:
      holidays: {country: DE, subdiv: BE}
      dates: ["2026-12-24", "2026-12-28..2026-12-31"]
rules:
  - name: blocked-callers
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
  - name: withheld-number
    when: {caller: anonymous}
    reject: {status_code: 433}
  - name: vip-desk
    when: {caller: {in: vip}, schedule: office}
    refer: {target_uri: "sip:desk@pbx.example.com"}
  - name: partner-line
    when: {header: {X-Partner-Id: {regex: "[A-Z]{3}[0-9]{4}"}}}
    accept: {profile: concierge}
  - name: dach-in-hours
    when: {schedule: office, caller: {country: [DE, AT, CH]}}
    accept: {profile: concierge, overrides: {audio: {output: {voice: cedar}}}}
  - name: us-after-hours
    when: {not: {schedule: office}, caller: {prefix: "+1"}}
    refer: {target_uri: "tel:+18005550100"}
default: {accept: {profile: after_hours}}
on_error: {reject: {status_code: 503}}
tests:
  - {from: "+4915112345678", to: "+4930123456", at: "2026-03-27T23:30:00+01:00",
     expect: dach-in-hours}
  - {from: "+12125550123", to: "+4930123456", at: "2026-03-29T03:30:00+02:00",
     expect: {action: refer}}
"""

DOCUMENTED_FILES = {
    "prompts/concierge.md": "You are the concierge of Example GmbH.\n",
    "lists/blocked.txt": "# robocallers\n+12025550199\n+1900*\n",
}


@pytest.fixture
def spec_example(tmp_path: Path) -> Ruleset:
    return load(tmp_path, DOCUMENTED_EXAMPLE, DOCUMENTED_FILES)


def test_spec_example_tests_pass(spec_example: Ruleset) -> None:
    results = run_rule_tests(spec_example, AT)
    assert [r.failure for r in results] == [None, None]


@pytest.mark.parametrize(
    ("caller", "at", "rule"),
    [
        # The documented cases: Friday's overnight window, and Sunday after the DST change.
        ("+4915112345678", "2026-03-27T23:30:00+01:00", "dach-in-hours"),
        ("+12125550123", "2026-03-29T03:30:00+02:00", "us-after-hours"),
        # The overnight window belongs to Friday: open until Saturday 02:00, [from, to).
        ("+4915112345678", "2026-03-28T01:59:00+01:00", "dach-in-hours"),
        ("+4915112345678", "2026-03-28T02:00:00+01:00", None),
        ("+4915112345678", "2026-03-27T21:59:00+01:00", None),
        # Weekday windows, in Berlin time whatever zone the instant is written in.
        ("+4915112345678", "2026-03-26T08:30:00+01:00", "dach-in-hours"),
        ("+4915112345678", "2026-03-26T07:30:00+00:00", "dach-in-hours"),
        ("+4915112345678", "2026-03-26T08:29:00+01:00", None),
        ("+4915112345678", "2026-03-26T18:00:00+01:00", None),
        ("+43 1 53115", "2026-03-30T09:00:00+02:00", "dach-in-hours"),
        # Closed: Good Friday and Christmas (DE-BE holidays), listed dates and ranges.
        ("+4915112345678", "2026-04-03T10:00:00+02:00", None),
        ("+4915112345678", "2026-04-04T01:00:00+02:00", None),  # Good Friday's night window
        ("+4915112345678", "2026-12-25T10:00:00+01:00", None),
        ("+4915112345678", "2026-12-24T10:00:00+01:00", None),
        ("+4915112345678", "2026-12-29T10:00:00+01:00", None),
        ("+4915112345678", "2026-12-23T10:00:00+01:00", "dach-in-hours"),
        # VIP before DACH, blocked before everything, US outside office hours.
        ("+14155550100", "2026-03-26T10:00:00+01:00", "vip-desk"),
        ("+14155550100", "2026-03-26T20:00:00+01:00", "us-after-hours"),
        ("+12025550199", "2026-03-26T10:00:00+01:00", "blocked-callers"),
        ("anonymous", "2026-03-26T10:00:00+01:00", "withheld-number"),
        ("+12125550123", "2026-03-26T10:00:00+01:00", None),
    ],
)
def test_spec_example_schedule_decisions(
    spec_example: Ruleset, caller: str, at: str, rule: str | None
) -> None:
    decision = decide(spec_example, caller, "+4930123456", at=datetime.fromisoformat(at))
    assert decision.rule == rule


def test_spec_example_actions(spec_example: Ruleset) -> None:
    at = datetime.fromisoformat("2026-03-27T23:30:00+01:00")
    dach = decide(spec_example, "+4915112345678", "+4930123456", at=at)
    assert dach.action == "accept"
    assert dach.body["audio"] == {"output": {"voice": "cedar"}}
    assert dach.body["instructions"] == "You are the concierge of Example GmbH.\n"
    partner = decide(spec_example, "+4930901820", at=at, headers={"X-Partner-Id": "ABC1234"})
    assert partner.rule == "partner-line"
    assert partner.body["audio"] == {"output": {"voice": "marin"}}
    us = decide(spec_example, "+12125550123", at=datetime.fromisoformat("2026-03-29T03:30+02:00"))
    assert (us.action, dict(us.body)) == ("refer", {"target_uri": "tel:+18005550100"})
    closed = decide(spec_example, "+33142685300", at=at.replace(hour=3))
    assert closed.rule is None
    assert closed.profile == "after_hours"
    assert closed.max_duration_s == 300
    assert closed.body["instructions"] == "We are closed. Take a message for +33142685300."


WALL_CLOCK_RULES = """\
version: 1
defaults: {timezone: Europe/Berlin}
schedules:
  night:
    weekly: [{days: sun, from: "01:00", to: "04:00"}]
  fall-back-hour:
    weekly: [{days: sun, from: "02:00", to: "03:00"}]
  weekdays:
    timezone: America/New_York
    weekly: [{days: mon-fri, from: "09:00", to: "24:00"}]
    closed: {holidays: {country: US}}
    open: {dates: ["2026-07-03"]}
rules:
  - {name: fall-back-hour, when: {schedule: fall-back-hour}, reject: {status_code: 481}}
  - {name: night, when: {schedule: night}, reject: {status_code: 480}}
  - {name: weekdays, when: {schedule: weekdays}, reject: {status_code: 482}}
default: {reject: {status_code: 486}}
"""


@pytest.mark.parametrize(
    ("at", "rule"),
    [
        # Spring forward in Berlin (2026-03-29 02:00 -> 03:00): wall-clock windows.
        ("2026-03-29T00:30:00+00:00", "night"),  # 01:30 CET
        ("2026-03-29T03:30:00+02:00", "night"),
        ("2026-03-29T04:00:00+02:00", None),
        ("2026-03-29T00:59:00+01:00", None),
        # Fall back (2026-10-25 03:00 -> 02:00): 02:30 happens twice, both in the window.
        ("2026-10-25T02:30:00+02:00", "fall-back-hour"),
        ("2026-10-25T02:30:00+01:00", "fall-back-hour"),
        ("2026-10-25T03:00:00+01:00", "night"),
        # Another zone, "24:00", a holiday, and an `open` date that wins over it.
        ("2026-07-01T23:59:00-04:00", "weekdays"),
        ("2026-07-02T00:00:00-04:00", None),
        ("2026-07-02T04:00:00+00:00", None),  # still Wednesday 24:00 = Thursday 00:00 in NY
        ("2026-07-03T10:00:00-04:00", "weekdays"),  # Independence Day observed, but open
        ("2026-09-07T10:00:00-04:00", None),  # Labor Day
    ],
)
def test_schedules_follow_local_wall_clock_time(tmp_path: Path, at: str, rule: str | None) -> None:
    ruleset = load(tmp_path, WALL_CLOCK_RULES)
    assert decide(ruleset, "+4930901820", at=datetime.fromisoformat(at)).rule == rule


# --- profiles -----------------------------------------------------------------------------

PROFILE_RULES = """\
version: 1
defaults: {region: US}
profiles:
  base:
    model: gpt-realtime
    instructions_file: prompts/base.md
    audio:
      input:
        noise_reduction: {type: far_field}
        transcription: {model: gpt-4o-mini-transcribe, language: en}
      output: {voice: marin, speed: 1.1}
    tools:
      - {type: mcp, server_label: crm, server_url: "https://mcp.example.com/sse"}
  german:
    extends: base
    audio:
      input: {transcription: {language: de}}
      output: {voice: cedar}
    tools: []
    max_duration_s: 300
  grandchild:
    extends: german
    instructions: "Hallo {{ caller.e164 }}"
rules:
  - name: quick
    when: {caller: "+1415*"}
    accept:
      profile: german
      overrides: {audio: {output: {speed: 1.3}}, max_duration_s: 60}
  - name: de
    when: {caller: {country: DE}}
    accept: {profile: german}
  - name: deep
    when: {caller: {country: AT}}
    accept: {profile: grandchild}
default: {accept: {profile: base}}
"""

PROFILE_FILES = {"prompts/base.md": "You are the front desk.\nBe brief.\n"}


def keys_anywhere(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_anywhere(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_anywhere(v)}
    return set()


def test_profiles_extend_with_a_deep_merge(tmp_path: Path) -> None:
    ruleset = load(tmp_path, PROFILE_RULES, PROFILE_FILES)
    german = decide(ruleset, "+4930901820")
    assert german.rule == "de"
    assert german.profile == "german"
    assert german.max_duration_s == 300
    assert dict(german.body) == {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "You are the front desk.\nBe brief.\n",
        "audio": {
            "input": {
                "noise_reduction": {"type": "far_field"},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "de"},
            },
            "output": {"voice": "cedar", "speed": 1.1},
        },
        "tools": [],
    }
    base = decide(ruleset, "+442079460958")
    assert base.rule is None
    assert base.max_duration_s is None
    assert base.body["tools"] == [
        {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/sse"}
    ]
    assert base.body["audio"]["input"]["transcription"]["language"] == "en"


def test_grandchild_profile_and_rule_overrides(tmp_path: Path) -> None:
    ruleset = load(tmp_path, PROFILE_RULES, PROFILE_FILES)
    deep = decide(ruleset, "+43153115")
    assert deep.body["instructions"] == "Hallo +43153115"
    assert deep.body["audio"]["output"] == {"voice": "cedar", "speed": 1.1}
    assert deep.max_duration_s == 300
    quick = decide(ruleset, "+14155550123")
    assert quick.profile == "german"
    assert quick.body["audio"]["output"] == {"voice": "cedar", "speed": 1.3}
    assert quick.body["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert quick.max_duration_s == 60
    # The override belongs to the rule; the profile itself is unchanged for other rules.
    assert decide(ruleset, "+4930901820").body["audio"]["output"]["speed"] == 1.1


@pytest.mark.parametrize("caller", ["+14155550123", "+4930901820", "+43153115", "+442079460958"])
def test_accept_body_is_realtime_without_meta_keys_or_audio_format(
    tmp_path: Path, caller: str
) -> None:
    ruleset = load(tmp_path, PROFILE_RULES, PROFILE_FILES)
    body = dict(decide(ruleset, caller).body)
    assert next(iter(body)) == "type"
    assert body["type"] == "realtime"
    found = keys_anywhere(body)
    assert not found & {"max_duration_s", "extends", "instructions_file", "profile", "format"}


# --- explain ------------------------------------------------------------------------------


def test_explain_traces_each_rule_tried_and_stops_at_the_match(tmp_path: Path) -> None:
    ruleset = load(
        tmp_path,
        """\
        version: 1
        defaults: {region: US}
        rules:
          - {name: peninsula, when: {caller: "+1650*"}, reject: {}}
          - {name: partner, when: {header: {X-Partner-Id: {present: true}}}, reject: {}}
          - {name: sf, when: {caller: "+1415*"}, reject: {}}
          - {name: nanp, when: {caller: "+1*"}, reject: {}}
        default: {reject: {status_code: 486}}
        """,
    )
    decision = decide(ruleset, "+14155550123", explain=True)
    assert decision.rule == "sf"
    assert [(s.rule, s.matched) for s in decision.trace] == [
        ("peninsula", False),
        ("partner", False),
        ("sf", True),
    ]
    assert all(step.reason for step in decision.trace)
    assert "+1650" in decision.trace[0].reason
    assert "+1415" in decision.trace[2].reason
    fallthrough = decide(ruleset, "+442079460958", explain=True)
    assert fallthrough.rule is None
    assert [s.matched for s in fallthrough.trace] == [False, False, False, False]
    assert decide(ruleset, "+14155550123").trace == ()


# --- ruleset version ----------------------------------------------------------------------

VERSIONED = """\
version: 1
defaults: {region: US}
profiles:
  desk: {model: gpt-realtime, instructions_file: prompts/desk.md}
lists:
  blocked: {file: lists/blocked.txt}
rules:
  - {name: blocked, when: {caller: {in: blocked}}, reject: {}}
default: {accept: {profile: desk}}
"""


def test_ruleset_version_follows_every_file_it_was_read_from(tmp_path: Path) -> None:
    files = {"prompts/desk.md": "Hello.\n", "lists/blocked.txt": "+12025550199\n"}
    first = load(tmp_path, VERSIONED, files).version
    assert load(tmp_path, VERSIONED).version == first
    (tmp_path / "unrelated.txt").write_text("not referenced")
    assert load(tmp_path, VERSIONED).version == first
    assert decide(load(tmp_path, VERSIONED), "+14155550123").ruleset == first

    (tmp_path / "lists/blocked.txt").write_text("+12025550199\n+12025550188\n")
    after_list = load(tmp_path, VERSIONED).version
    assert after_list != first
    (tmp_path / "prompts/desk.md").write_text("Hello there.\n")
    after_prompt = load(tmp_path, VERSIONED).version
    assert after_prompt not in (first, after_list)
    after_main = load(tmp_path, VERSIONED + "# a comment\n").version
    assert after_main not in (first, after_list, after_prompt)

    load(tmp_path, VERSIONED, files)
    assert load(tmp_path, VERSIONED).version == first
