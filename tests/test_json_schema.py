"""The rule-file JSON Schema: valid itself, committed up to date, and in step with the loader."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from app.rules.json_schema import rule_file_schema
from app.rules.loader import load_ruleset
from app.rules.problems import RuleFileError

REPO = Path(__file__).resolve().parent.parent

# The documented example rule file (rule language reference), verbatim.
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
  blocked: {file: lists/blocked.txt}         # one number or prefix (ending in *) a line, # comments
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
  - {from: "+4915112345678", to: "+4930123456", at: "2026-03-27T23:30:00+01:00", expect: dach-in-hours}
  - {from: "+12125550123", to: "+4930123456", at: "2026-03-29T03:30:00+02:00", expect: {action: refer}}
"""  # noqa: E501 (verbatim)

# Files the documents below refer to, relative to the rule file.
REFERENCED_FILES = {
    "prompts/concierge.md": "You are the concierge.\n",
    "lists/blocked.txt": "+19005550100\n+1900555*  # premium\n",
    "lists/vip.txt": "+14155550100\n",
}

BASE: dict[str, Any] = {
    "version": 1,
    "defaults": {"timezone": "America/New_York", "region": "US"},
    "profiles": {
        "concierge": {
            "model": "gpt-realtime",
            "instructions": "Hello {{ caller.e164 }}",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad"}},
                "output": {"voice": "marin"},
            },
        },
    },
    "lists": {"vip": ["+14155550100"]},
    "schedules": {"office": {"weekly": [{"days": "mon-fri", "from": "08:30", "to": "18:00"}]}},
    "rules": [{"name": "first", "when": {"caller": "+1415*"}, "reject": {"status_code": 603}}],
    "default": {"accept": {"profile": "concierge"}},
}

DELETE = object()
RULE = ("rules", 0)
WHEN = ("rules", 0, "when")
WINDOW = ("schedules", "office", "weekly", 0)
CONCIERGE = ("profiles", "concierge")
TEST_CASE = {"from": "+12125550123", "to": "+14155550100", "expect": "first"}
WITH_CRM = {**BASE, "services": {"crm": {"url": "https://crm.example.com/decide"}}}

# (path in BASE, new value or DELETE, whether the loader and the schema accept the result)
CASES: list[tuple[str, tuple[Any, ...], Any, bool]] = [
    ("the base document", (), BASE, True),
    # conditions
    ("caller prefix", (*WHEN, "caller"), "+1212*", True),
    ("caller anonymous", (*WHEN, "caller"), "anonymous", True),
    ("caller as unquoted digits", (*WHEN, "caller"), 4155550100, True),
    ("caller list of terms", (*WHEN, "caller"), ["+1415*", {"in": "vip"}, {"country": "DE"}], True),
    ("caller country list", (*WHEN, "caller"), {"country": ["DE", "AT"]}, True),
    ("caller not anonymous", (*WHEN, "caller"), {"anonymous": False}, True),
    ("called pattern", (*WHEN, "called"), {"pattern": "+1415NXXXXXX"}, True),
    ("caller exact as digits", (*WHEN, "caller"), {"exact": 4155550100}, True),
    ("caller empty list", (*WHEN, "caller"), [], False),
    ("caller term with two keys", (*WHEN, "caller"), {"exact": "+1415", "prefix": "+1"}, False),
    ("caller unknown term key", (*WHEN, "caller"), {"starts": "+1"}, False),
    ("caller three-letter country", (*WHEN, "caller"), {"country": "DEU"}, False),
    ("caller anonymous as text", (*WHEN, "caller"), {"anonymous": "yes"}, False),
    ("header exact value", (*WHEN, "header"), {"X-Partner-Id": "ABC1234"}, True),
    ("header regex", (*WHEN, "header"), {"X-Partner-Id": {"regex": "[A-Z]{3}"}}, True),
    ("header absent", (*WHEN, "header"), {"Privacy": {"present": False}}, True),
    ("header two tests", (*WHEN, "header"), {"X-A": {"regex": "a", "present": True}}, False),
    ("header name with a space", (*WHEN, "header"), {"X Partner": "a"}, False),
    ("header present as text", (*WHEN, "header"), {"X-A": {"present": "true"}}, False),
    (
        "all, any and not",
        WHEN,
        {
            "all": [{"caller": "+1*"}],
            "any": [{"schedule": "office"}],
            "not": {"called": "+14155550100"},
        },
        True,
    ),
    ("empty when", WHEN, None, True),
    ("api live", (*WHEN, "api"), "live", True),
    ("api sip", (*WHEN, "api"), "sip", False),
    ("media_security srtp", (*WHEN, "media_security"), "srtp", True),
    ("media_security upper case", (*WHEN, "media_security"), "SRTP", False),
    ("no when", WHEN, DELETE, True),
    ("unknown condition key", (*WHEN, "callers"), "+1415*", False),
    ("unknown key inside not", (*WHEN, "not"), {"time": "08:00"}, False),
    # rules and actions
    ("reject with the default status", (*RULE, "reject"), {}, True),
    ("status_code 300", (*RULE, "reject", "status_code"), 300, False),
    ("status_code 700", (*RULE, "reject", "status_code"), 700, False),
    ("status_code as text", (*RULE, "reject", "status_code"), "603", False),
    ("two actions", (*RULE, "refer"), {"target_uri": "tel:+18005550100"}, False),
    ("no action", (*RULE, "reject"), DELETE, False),
    ("rule without a name", (*RULE, "name"), DELETE, False),
    ("rule named default", (*RULE, "name"), "default", False),
    ("rule name with a space", (*RULE, "name"), "first rule", False),
    ("unknown rule key", (*RULE, "priority"), 1, False),
    ("refer to a SIP URI", ("default",), {"refer": {"target_uri": "sips:desk@pbx.example"}}, True),
    ("refer to a template", ("default",), {"refer": {"target_uri": "sip:{{ rule }}@pbx"}}, True),
    ("refer to an http URL", ("default",), {"refer": {"target_uri": "http://example.com"}}, False),
    ("default with two actions", ("default", "reject"), {}, False),
    ("no default", ("default",), DELETE, False),
    ("on_error reject", ("on_error",), {"reject": {"status_code": 503}}, True),
    ("on_error unknown action", ("on_error",), {"hangup": {}}, False),
    ("unknown accept key", ("default", "accept", "voice"), "marin", False),
    # profiles and overrides
    (
        "a GPT-Live profile",
        ("profiles", "live"),
        {
            "api": "live",
            "model": "gpt-live-1",
            "instructions": "Hello {{ caller.e164 }}",
            "audio": {"output": {"voice": {"id": "voice_1"}}},
            "delegation": {"type": "responses", "responses": {"model": "gpt-5-mini"}},
            "store": False,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
            "greeting": "Hello.",
            "end_call": True,
            "transcript": True,
            "max_duration_s": 300,
        },
        True,
    ),
    ("a GPT-Live profile without a model", ("profiles", "live"), {"api": "live"}, False),
    (
        "a GPT-Live profile with Realtime tools",
        ("profiles", "live"),
        {"api": "live", "model": "gpt-live-1", "tools": []},
        False,
    ),
    (
        "a GPT-Live profile with transfer",
        ("profiles", "live"),
        {"api": "live", "model": "gpt-live-1", "transfer": ["desk"]},
        False,
    ),
    (
        "a GPT-Live delegation of an unknown type",
        ("profiles", "live"),
        {"api": "live", "model": "gpt-live-1", "delegation": {"type": "server"}},
        False,
    ),
    ("a profile of an unknown api", (*CONCIERGE, "api"), "sip", False),
    ("a profile saying api realtime", (*CONCIERGE, "api"), "realtime", True),
    ("voice by id", (*CONCIERGE, "audio", "output", "voice"), {"id": "voice_1234"}, True),
    ("custom voice name", (*CONCIERGE, "audio", "output", "voice"), "nova", True),
    ("empty voice name", (*CONCIERGE, "audio", "output", "voice"), "", False),
    ("reasoning effort", (*CONCIERGE, "reasoning"), {"effort": "high"}, True),
    ("reasoning effort unknown", (*CONCIERGE, "reasoning"), {"effort": "max"}, False),
    ("a key written as null", (*CONCIERGE, "tracing"), None, True),
    ("audio format", (*CONCIERGE, "audio", "output", "format"), {"type": "audio/pcm"}, False),
    ("profile type", (*CONCIERGE, "type"), "realtime", False),
    ("unknown profile key", (*CONCIERGE, "voice"), "marin", False),
    ("speed too high", (*CONCIERGE, "audio", "output", "speed"), 2.0, False),
    ("max_output_tokens inf", (*CONCIERGE, "max_output_tokens"), "inf", True),
    ("max_output_tokens 5000", (*CONCIERGE, "max_output_tokens"), 5000, False),
    ("max_duration_s", (*CONCIERGE, "max_duration_s"), 300, True),
    ("max_duration_s 0", (*CONCIERGE, "max_duration_s"), 0, False),
    ("max_duration_s over a day", (*CONCIERGE, "max_duration_s"), 86401, False),
    ("instructions_file", (*CONCIERGE, "instructions"), DELETE, True),
    ("instructions and instructions_file", (*CONCIERGE, "instructions_file"), "x.md", False),
    (
        "extending profile gives part of a mapping",
        ("profiles", "quiet"),
        {"extends": "concierge", "audio": {"input": {"turn_detection": {"threshold": 0.9}}}},
        True,
    ),
    (
        "root profile gives part of a mapping",
        (*CONCIERGE, "audio", "input", "turn_detection"),
        {"threshold": 0.9},
        False,
    ),
    (
        "overrides: voice and max_duration_s",
        ("default", "accept", "overrides"),
        {"audio": {"output": {"voice": "cedar"}}, "max_duration_s": 60},
        True,
    ),
    (
        "overrides: part of a mapping",
        ("default", "accept", "overrides"),
        {"audio": {"input": {"turn_detection": {"silence_duration_ms": 400}}}},
        True,
    ),
    ("overrides: extends", ("default", "accept", "overrides"), {"extends": "concierge"}, False),
    (
        "overrides: unknown audio key",
        ("default", "accept", "overrides"),
        {"audio": {"x": 1}},
        False,
    ),
    # lists
    ("list from a file", ("lists", "vip"), {"file": "lists/vip.txt"}, True),
    ("list of unquoted digits", ("lists", "vip"), [4155550100], True),
    (
        "list with file and numbers",
        ("lists", "vip"),
        {"file": "lists/vip.txt", "numbers": []},
        False,
    ),
    ("list as one string", ("lists", "vip"), "+14155550100", False),
    # schedules
    ("days as a list", (*WINDOW, "days"), ["mon", "wed-fri"], True),
    ("days wrapping the week", (*WINDOW, "days"), "fri-mon", True),
    ("bad weekday", (*WINDOW, "days"), "monday", False),
    ("day range on one day", (*WINDOW, "days"), "mon-mon", False),
    ("no days", (*WINDOW, "days"), [], False),
    ("to 24:00", (*WINDOW, "to"), "24:00", True),
    ("overnight window", (*WINDOW, "to"), "02:00", True),
    ("time 8:30", (*WINDOW, "from"), "8:30", False),
    ("from 24:00", (*WINDOW, "from"), "24:00", False),
    ("to 25:00", (*WINDOW, "to"), "25:00", False),
    ("time as a number", (*WINDOW, "from"), 510, False),
    ("window without to", (*WINDOW, "to"), DELETE, False),
    (
        "closed days and open days",
        ("schedules", "office", "closed"),
        {
            "holidays": [{"country": "DE", "subdiv": "BE"}, {"country": "US"}],
            "dates": ["2026-12-24", "2026-12-28..2026-12-31"],
        },
        True,
    ),
    ("closed on one date", ("schedules", "office", "closed"), {"dates": "2026-12-24"}, True),
    ("month 13", ("schedules", "office", "closed"), {"dates": ["2026-13-01"]}, False),
    ("date in another format", ("schedules", "office", "closed"), {"dates": ["24.12.2026"]}, False),
    (
        "every-year dates, ranges and nth weekdays",
        ("schedules", "office", "closed"),
        {
            "dates": [
                "12-25",
                "12-24..12-26",
                "12-31..01-02",
                {"month": 5, "weekday": "mon", "nth": -1},
            ],
            "times": [
                {"date": "2026-12-23", "from": "14:00", "to": "24:00"},
                {"date": {"month": 11, "weekday": "fri", "nth": 4}, "from": "13:00", "to": "17:00"},
                {"date": "12-31", "from": "18:00", "to": "02:00"},
            ],
        },
        True,
    ),
    ("every-year month 13", ("schedules", "office", "closed"), {"dates": ["13-01"]}, False),
    (
        "mixed range",
        ("schedules", "office", "closed"),
        {"dates": ["2026-12-24..12-26"]},
        False,
    ),
    (
        "nth 0",
        ("schedules", "office", "closed"),
        {"dates": [{"month": 5, "weekday": "mon", "nth": 0}]},
        False,
    ),
    (
        "nth weekday without nth",
        ("schedules", "office", "open"),
        {"dates": [{"month": 5, "weekday": "mon"}]},
        False,
    ),
    (
        "times under open",
        ("schedules", "office", "open"),
        {"times": [{"date": "12-24", "from": "09:00", "to": "12:00"}]},
        False,
    ),
    (
        "closed time without to",
        ("schedules", "office", "closed"),
        {"times": [{"date": "12-24", "from": "09:00"}]},
        False,
    ),
    ("holidays without a country", ("schedules", "office", "open"), {"holidays": {}}, False),
    ("unknown schedule key", ("schedules", "office", "hours"), [], False),
    ("schedule time zone", ("schedules", "office", "timezone"), "Europe/Berlin", True),
    # tests
    ("test expecting a rule", ("tests",), [TEST_CASE], True),
    (
        "test expecting an action, with headers and a time",
        ("tests",),
        [
            {
                **TEST_CASE,
                "headers": {"X-Partner-Id": "ABC1234"},
                "at": "2026-03-27 23:30",
                "expect": {"action": "reject", "status_code": 603},
            }
        ],
        True,
    ),
    (
        "test of a GPT-Live call",
        ("tests",),
        [{**TEST_CASE, "api": "live", "media_security": "srtp"}],
        True,
    ),
    ("test of an unknown api", ("tests",), [{**TEST_CASE, "api": "sip"}], False),
    ("test expecting hangup", ("tests",), [{**TEST_CASE, "expect": {"action": "hangup"}}], False),
    ("test without expect", ("tests",), [{"from": "+12125550123", "to": "+14155550100"}], False),
    ("test at a bad time", ("tests",), [{**TEST_CASE, "at": "yesterday"}], False),
    # consult and services
    ("consult a service", (), {**WITH_CRM, "rules": [{"name": "ask", "consult": "crm"}]}, True),
    (
        "consult and reject",
        (),
        {**WITH_CRM, "rules": [{"name": "ask", "consult": "crm", "reject": {}}]},
        False,
    ),
    ("consult in default", (), {**WITH_CRM, "default": {"consult": "crm"}}, False),
    (
        "service timeout 5",
        ("services",),
        {"crm": {"url": "https://a.example", "timeout_s": 5}},
        True,
    ),
    (
        "service timeout 6",
        ("services",),
        {"crm": {"url": "https://a.example", "timeout_s": 6}},
        False,
    ),
    (
        "service timeout 0",
        ("services",),
        {"crm": {"url": "https://a.example", "timeout_s": 0}},
        False,
    ),
    ("service without url", ("services",), {"crm": {"timeout_s": 1}}, False),
    ("service ftp url", ("services",), {"crm": {"url": "ftp://a.example"}}, False),
    ("service unknown key", ("services",), {"crm": {"url": "https://a", "retries": 1}}, False),
    (
        "test with a stubbed answer",
        (),
        {**WITH_CRM, "tests": [{**TEST_CASE, "consult": {"crm": {"continue": True}}}]},
        True,
    ),
    # split
    ("split", ("default", "accept"), {"split": [{"profile": "concierge", "weight": 1}]}, True),
    (
        "split weight 0",
        ("default", "accept"),
        {"split": [{"profile": "concierge", "weight": 0}]},
        False,
    ),
    ("split without weight", ("default", "accept"), {"split": [{"profile": "concierge"}]}, False),
    ("split empty", ("default", "accept"), {"split": []}, False),
    (
        "split and profile",
        ("default", "accept"),
        {"profile": "concierge", "split": [{"profile": "concierge", "weight": 1}]},
        False,
    ),
    (
        "split with overrides",
        ("default", "accept"),
        {"split": [{"profile": "concierge", "weight": 1}], "overrides": {"instructions": "x"}},
        False,
    ),
    # the top level
    ("unknown top-level key", ("rule",), [], False),
    ("version 2", ("version",), 2, False),
    ("no version", ("version",), DELETE, False),
    ("region of three letters", ("defaults", "region"), "USA", False),
]


def with_change(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of BASE with the value at `path` replaced, added or (DELETE) removed."""
    if not path:
        return copy.deepcopy(value)
    document = copy.deepcopy(BASE)
    node: Any = document
    for part in path[:-1]:
        node = node[part]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = copy.deepcopy(value)
    return document


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(rule_file_schema())


def schema_errors(validator: Draft202012Validator, document: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def loader_problems(document: dict[str, Any], directory: Path) -> list[str]:
    for relative, text in REFERENCED_FILES.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(text)
    rules = directory / "rules.yaml"
    # JSON is YAML with every string quoted, so no YAML 1.1 conversion gets in the way.
    rules.write_text(json.dumps(document))
    try:
        load_ruleset(rules)
    except RuleFileError as exc:
        return [str(problem) for problem in exc.problems]
    return []


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = rule_file_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/rules.schema.json")


def refs_in(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(refs_in(item) for item in node))
    return set()


def test_every_ref_points_at_a_definition_and_every_definition_is_used() -> None:
    schema = rule_file_schema()
    refs = refs_in(schema)
    defined = {f"#/$defs/{name}" for name in schema["$defs"]}
    assert refs <= defined, refs - defined
    assert defined == refs, defined - refs
    # The accept body's own definitions come along, complete and partial.
    assert "#/$defs/session.VoiceId" in refs
    assert "#/$defs/session.partial.VoiceId" in refs


def test_main_keys_have_hover_help() -> None:
    schema = rule_file_schema()
    for key, prop in schema["properties"].items():
        assert prop.get("description"), key
    for name in ("Rule", "When", "Profile", "Schedule", "WeeklyWindow", "TestCase"):
        assert schema["$defs"][name].get("description"), name


def test_the_committed_schema_is_up_to_date() -> None:
    committed = REPO / "rules.schema.json"
    expected = json.dumps(rule_file_schema(), indent=2) + "\n"
    regenerate = "regenerate it: uv run sip-router schema > rules.schema.json"
    assert committed.exists(), f"rules.schema.json is missing; {regenerate}"
    assert committed.read_text() == expected, f"rules.schema.json is stale; {regenerate}"


def test_the_spec_example_is_valid(validator: Draft202012Validator, tmp_path: Path) -> None:
    document = yaml.safe_load(DOCUMENTED_EXAMPLE)
    assert schema_errors(validator, document) == []
    assert loader_problems(document, tmp_path) == []


def test_the_project_rule_file_is_valid(validator: Draft202012Validator) -> None:
    path = REPO / "routing_rules" / "rules.yaml"
    assert schema_errors(validator, yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize(
    ("path", "value", "valid"),
    [pytest.param(path, value, valid, id=label) for label, path, value, valid in CASES],
)
def test_the_schema_and_the_loader_agree(
    validator: Draft202012Validator, tmp_path: Path, path: tuple[Any, ...], value: Any, valid: bool
) -> None:
    document = with_change(path, value)
    errors = schema_errors(validator, document)
    assert (errors == []) is valid, errors or "the schema accepted it"
    problems = loader_problems(document, tmp_path)
    assert (problems == []) is valid, problems or "the loader accepted it"


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(with_change((*WINDOW, "days"), "Mon"), id="weekday in capitals"),
        pytest.param(with_change((*WHEN, "caller"), {"country": "de"}), id="country lower case"),
        pytest.param(with_change(("on_error",), None), id="null instead of leaving out"),
    ],
)
def test_the_schema_asks_for_the_canonical_spelling(
    validator: Draft202012Validator, document: dict[str, Any]
) -> None:
    # The loader forgives these; editors point at the documented spelling.
    assert schema_errors(validator, document) != []
