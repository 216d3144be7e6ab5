"""The JSON Schema of rule files, for editor completion, hover help and checks.

The rule-file language is described by hand, because the loader expands shorthands before
its models see them; profiles and overrides reuse the accept body's schema from pydantic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from copy import deepcopy
from typing import Any

from app.calls.call_control import DEFAULT_FUNCTION_TIMEOUT_S, MAX_FUNCTION_TIMEOUT_S
from app.rules.accept_body import accept_body_json_schema
from app.rules.live_accept_body import live_session_json_schema
from app.rules.profile_overrides import MAX_DURATION_LIMIT_S
from app.rules.schedule import WEEKDAYS

SCHEMA_ID = "https://sip-router.dev/rules.schema.json"

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Two prefixes for the accept body's own $defs: complete, and with nothing required; and
# two for the GPT-Live session's.
_SESSION = "session."
_PARTIAL = "session.partial."
_LIVE = "live."
_LIVE_PARTIAL = "live.partial."
_API = {
    "enum": ["realtime", "live"],
    "default": "realtime",
    "description": "The API whose calls this profile accepts: realtime (default) or live"
    " (GPT-Live; the profile is then a Live session: model, instructions, audio.output.voice,"
    " delegation, store, input).",
}

_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]"
_MONTH_DAY = r"(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_DATE = rf"[0-9]{{4}}-{_MONTH_DAY}"
_OFFSET = r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)"
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,100}$"

Schema = dict[str, Any]


def rule_file_schema() -> Schema:
    """The JSON Schema (draft 2020-12) of a rule file, as `sip-router schema` prints it."""
    session_defs, full_props, partial_props = _session_parts()
    live_defs, live_full, live_partial = _session_parts(live=True)
    defs: Schema = {
        **_name_defs(),
        **_number_defs(),
        **_condition_defs(),
        # Overrides may write the keys of either API's session (the profile's API decides).
        **_action_defs({**live_partial, **partial_props}),
        **_profile_defs(full_props, partial_props, live_full, live_partial),
        **_schedule_defs(),
        **_test_defs(),
        **session_defs,
        **live_defs,
    }
    schema: Schema = {
        "$schema": _DRAFT,
        "$id": SCHEMA_ID,
        "title": "sip-router rule file",
        "description": (
            "Routing rules for incoming SIP calls: the first rule whose `when` holds decides"
            " to accept, refer or reject the call; `default` decides when none does."
        ),
        "type": "object",
        "properties": _top_level_properties(),
        "required": ["version", "default"],
        "additionalProperties": False,
        "$defs": defs,
    }
    schema["$defs"] = _reachable_defs(schema)
    return schema


# --- small builders --------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/$defs/{name}"}


def _described(schema: Schema, description: str) -> Schema:
    return {**schema, "description": description}


def _object(properties: Schema, *, required: tuple[str, ...] = (), **extra: Any) -> Schema:
    """A mapping with exactly these keys allowed (the loader refuses unknown keys)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    schema["additionalProperties"] = False
    schema.update(extra)
    return schema


def _one_key_of(properties: Schema, description: str) -> Schema:
    """A mapping holding exactly one of `properties`."""
    return _object(properties, minProperties=1, maxProperties=1, description=description)


def _one_or_list(item: Schema, *, min_items: int = 0) -> list[Schema]:
    listed: Schema = {"type": "array", "items": item}
    if min_items:
        listed["minItems"] = min_items
    return [item, listed]


def _map_of(names: Schema, values: Schema, description: str) -> Schema:
    return {
        "type": "object",
        "propertyNames": names,
        "additionalProperties": values,
        "description": description,
    }


# --- the top level ---------------------------------------------------------------------------


def _top_level_properties() -> Schema:
    return {
        "version": {"const": 1, "description": "The rule-file format version: 1."},
        "defaults": _object(
            {
                "timezone": _described(
                    _ref("TimeZone"), "Time zone of schedules without their own. Default UTC."
                ),
                "region": _described(
                    _ref("CountryCode"),
                    "How numbers without + are read: 0151* in region DE is +49151*.",
                ),
            },
            description="Settings that apply to the whole file.",
        ),
        "profiles": _map_of(
            _ref("Name"),
            _ref("Profile"),
            "Accept configurations by name: the accept body without `type`, plus `extends`,"
            " `instructions_file` and `max_duration_s`.",
        ),
        "lists": _map_of(
            _ref("Name"),
            _ref("NumberList"),
            "Number lists by name, used by `caller: {in: name}`.",
        ),
        "schedules": _map_of(
            _ref("Name"),
            _ref("Schedule"),
            "Opening hours by name, used by `schedule: name` in conditions.",
        ),
        "transfer_targets": _map_of(
            _ref("Name"),
            _object(
                {
                    "target_uri": _described(
                        _ref("TargetUri"), "Where the caller goes when the agent transfers."
                    ),
                    "description": {
                        "type": "string",
                        "maxLength": 1000,
                        "description": "Tells the agent what this target is for.",
                    },
                },
                required=("target_uri",),
            ),
            "Destinations of the agent's `transfer_call` tool, named by a profile's `transfer`.",
        ),
        "functions": _map_of(
            _ref("Name"),
            _object(
                {
                    "description": {
                        "type": "string",
                        "maxLength": 4000,
                        "description": "Tells the agent what the function does.",
                    },
                    "parameters": {
                        "type": "object",
                        "description": 'A JSON Schema object ("type": "object") of the arguments.',
                    },
                    "url": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 2048,
                        "pattern": "^https?://",
                        "description": "Where sip-router posts each call of the function:"
                        " https://, or http:// to a loopback or private address.",
                    },
                    "timeout_s": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": MAX_FUNCTION_TIMEOUT_S,
                        "default": DEFAULT_FUNCTION_TIMEOUT_S,
                        "description": "How long the service may take to answer, at most 30 s.",
                    },
                },
                required=("url",),
            ),
            "Your own functions the agent may call, named by a profile's `functions`; your"
            " service answers them (signed requests, SIP_ROUTER_OUTBOUND_SECRET).",
        ),
        "services": _map_of(
            _ref("Name"),
            _ref("Service"),
            "Your own services, by name, that `consult` rules ask for a decision.",
        ),
        "rules": {
            "type": "array",
            "items": _ref("Rule"),
            "description": "Tried top to bottom; the first whose `when` holds decides.",
        },
        "default": _described(
            _ref("Action"), "What to do when no rule matches (exactly one action)."
        ),
        "on_error": _described(
            _ref("Action"),
            "What to do when the chosen action fails (upstream error after retries, template"
            " error). Default: reject with 503.",
        ),
        "tests": {
            "type": "array",
            "items": _ref("TestCase"),
            "description": "Example calls and the decision each must get (`sip-router test`).",
        },
    }


def _name_defs() -> Schema:
    return {
        "Name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 100,
            "pattern": _NAME_PATTERN,
            "description": "A name: letters, digits, _ . and -.",
        },
        "CountryCode": {
            "type": "string",
            "pattern": "^[A-Z]{2}$",
            "description": 'ISO 3166 two-letter code, upper case. Quote NO: "NO".',
        },
        "TimeZone": {
            "type": "string",
            "minLength": 1,
            "description": "An IANA time zone name.",
            "examples": ["UTC", "Europe/Berlin", "America/New_York"],
        },
    }


# --- numbers and conditions ------------------------------------------------------------------


def _number_defs() -> Schema:
    return {
        "NumberText": {
            "type": ["string", "integer"],
            "description": "A phone number; unquoted digits are read as text.",
        },
        "NumberList": {
            "anyOf": [
                {
                    "type": "array",
                    "items": _ref("NumberText"),
                    "description": "Numbers, or prefixes ending in *.",
                },
                _object(
                    {
                        "file": {
                            "type": "string",
                            "minLength": 1,
                            "description": "A file relative to this one: a number or prefix"
                            " (ending in *) a line, # comments.",
                        }
                    },
                    required=("file",),
                ),
                _object(
                    {"numbers": {"type": "array", "items": {"type": "string"}}},
                    required=("numbers",),
                ),
            ],
            "description": 'Numbers inline (["+14155550100", "+1415555*"]) or {file: path}.',
        },
    }


def _number_term() -> Schema:
    text_or_digits = _ref("NumberText")
    mapping = _one_key_of(
        {
            "exact": _described(text_or_digits, "This number exactly."),
            "prefix": _described(
                text_or_digits, "Numbers starting with this (a trailing * is allowed)."
            ),
            "pattern": _described(
                text_or_digits,
                "Digits plus X (0-9), Z (1-9), N (2-9) and classes like [1-5].",
            ),
            "regex": _described(
                text_or_digits,
                "A regular expression (RE2: no back-references or look-around)"
                " matching the whole E.164.",
            ),
            "in": {
                "anyOf": [_ref("Name"), {"type": "integer"}],
                "description": "The name of a list under `lists`.",
            },
            "country": {
                "anyOf": _one_or_list(_ref("CountryCode"), min_items=1),
                "description": "Numbers of this country, or of any of these (DE or [DE, AT]).",
            },
            "anonymous": {
                "type": "boolean",
                "description": "true: the caller withheld the number; false: they did not.",
            },
        },
        "Exactly one of exact, prefix, pattern, regex, in, country, anonymous.",
    )
    return {
        "anyOf": [
            {
                "type": "string",
                "minLength": 1,
                "description": "anonymous (a withheld caller), a prefix ending in *, or a number.",
            },
            {"type": "integer", "description": "A number written without quotes."},
            mapping,
        ]
    }


def _condition_defs() -> Schema:
    number_condition = {
        "anyOf": _one_or_list(_ref("NumberTerm"), min_items=1),
        "description": (
            '"+1415*" (prefix), "+14155550123" (exact), anonymous, a mapping such as'
            " {in: vip} or {country: [DE, AT]}, or a list of these (any of them)."
        ),
    }
    header_test = {
        "anyOf": [
            {"type": ["string", "integer"], "description": "The exact value."},
            _one_key_of(
                {
                    "equals": {"type": "string", "description": "The exact value."},
                    "regex": {
                        "type": "string",
                        "description": "A regular expression (RE2: no back-references or"
                        " look-around) matching the whole value.",
                    },
                    "present": {
                        "type": "boolean",
                        "description": "true: the header is there; false: it is not.",
                    },
                },
                "Exactly one of equals, regex, present.",
            ),
        ]
    }
    when = _object(
        {
            "caller": _described(
                _ref("NumberCondition"),
                "The caller: from P-Asserted-Identity if present, else From.",
            ),
            "called": _described(_ref("NumberCondition"), "The called number, from To."),
            "header": _map_of(
                {"type": "string", "pattern": _HEADER_NAME},
                _ref("HeaderTest"),
                "SIP headers (names case-insensitive): {Name: value}, {Name: {regex: ...}}"
                " or {Name: {present: true|false}}.",
            ),
            "schedule": _described(
                _ref("Name"), "Holds when this schedule (under `schedules`) is open."
            ),
            "all": {
                "type": "array",
                "items": _ref("When"),
                "description": "Holds when every condition holds.",
            },
            "any": {
                "type": "array",
                "items": _ref("When"),
                "description": "Holds when at least one condition holds.",
            },
            "not": _described(_ref("When"), "Holds when this condition does not."),
            "api": {
                "enum": ["realtime", "live"],
                "description": "Holds for calls announced on this API: realtime"
                " (realtime.call.incoming) or live (GPT-Live).",
            },
            "media_security": {
                "enum": ["srtp", "rtp"],
                "description": "Holds when the call's media protection (sip_media_security) is"
                " this; a call whose protection is unknown matches neither.",
            },
        },
        description="Conditions, all of which must hold. Empty: always holds.",
    )
    return {
        "When": when,
        "NumberCondition": number_condition,
        "NumberTerm": _number_term(),
        "HeaderTest": header_test,
    }


# --- actions and rules -----------------------------------------------------------------------

_ACTIONS = ("accept", "refer", "reject")


def _action_properties() -> Schema:
    return {
        "accept": _described(_ref("Accept"), "Answer the call with a profile."),
        "refer": _described(_ref("Refer"), "Transfer the call (SIP REFER)."),
        "reject": _described(_ref("Reject"), "Refuse the call with a SIP status code."),
    }


def _exactly_one_action() -> list[Schema]:
    return [{"required": [action]} for action in _ACTIONS]


def _action_defs(partial_session_props: Schema) -> Schema:
    overrides = _object(
        {
            **partial_session_props,
            "max_duration_s": _described(_ref("MaxDuration"), "Replaces the profile's limit."),
        },
        description=(
            "Accept fields deep-merged over the profile for this rule (mappings merge,"
            " other values replace), plus max_duration_s."
        ),
    )
    rule = _object(
        {
            "name": {
                "allOf": [_ref("Name"), {"not": {"const": "default"}}],
                "description": "Unique rule name, shown in traces and call records.",
            },
            "when": {
                "anyOf": [_ref("When"), {"type": "null"}],
                "description": "Conditions, all of which must hold. Empty or left out: always.",
            },
            **_action_properties(),
            "consult": _described(
                _ref("Name"),
                "Ask this service (under `services`) for the decision; when it does not"
                " answer in time, fails or says `continue`, the next rule decides.",
            ),
        },
        required=("name",),
        oneOf=[*_exactly_one_action(), {"required": ["consult"]}],
        description="A rule: a name, a `when`, and exactly one of accept, refer, reject, consult.",
    )
    return {
        "Rule": rule,
        "Action": _object(
            _action_properties(),
            oneOf=_exactly_one_action(),
            description="Exactly one of accept, refer, reject.",
        ),
        "Accept": _object(
            {
                "profile": _described(_ref("Name"), "A profile under `profiles`."),
                "overrides": overrides,
                "split": {
                    "type": "array",
                    "minItems": 1,
                    "items": _object(
                        {
                            "profile": _described(_ref("Name"), "A profile under `profiles`."),
                            "weight": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 1_000_000,
                                "description": "This profile's share: weight / sum of weights.",
                            },
                        },
                        required=("profile", "weight"),
                    ),
                    "description": "Accept with one of these profiles, picked by weight and"
                    " the same for every delivery of a call (a hash of its call_id).",
                },
            },
            oneOf=[
                {"required": ["profile"]},
                {"required": ["split"], "not": {"required": ["overrides"]}},
            ],
            description="A profile (with overrides), or a split between profiles.",
        ),
        "Service": _object(
            {
                "url": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 2048,
                    "pattern": "^https?://",
                    "description": "Where the call is posted: https://, or http:// only to"
                    " loopback and private addresses.",
                    "examples": ["https://crm.example.com/sip-router/decide"],
                },
                "timeout_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 5,
                    "default": 1.5,
                    "description": "How long to wait for the answer before the next rule"
                    " decides. Default 1.5, at most 5.",
                },
            },
            required=("url",),
            description="A service of yours that `consult` rules ask (signed with"
            " SIP_ROUTER_OUTBOUND_SECRET).",
        ),
        "TargetUri": {
            "type": "string",
            "minLength": 1,
            "maxLength": 2048,
            "pattern": r"^(tel|sips?):|\{[{%#]",
            "description": "tel:+E.164 or a sip:/sips: URI; {{ ... }} templates allowed.",
            "examples": ["sip:desk@pbx.example.com", "tel:+18005550100"],
        },
        "Refer": _object(
            {
                "target_uri": _ref("TargetUri"),
                "profile": _described(
                    _ref("Name"),
                    "The profile the call is accepted with before the refer. Default: a"
                    " built-in session that only speaks the announcement.",
                ),
                "announce": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 4000,
                    "description": "Said to the caller before the refer; {{ ... }} templates.",
                },
                "before_accept": {
                    "type": "boolean",
                    "default": False,
                    "description": "Refer the ringing call instead of accepting first (for"
                    " trunks where that is known to work); takes no profile or announce.",
                },
            },
            required=("target_uri",),
        ),
        "Reject": _object(
            {
                "status_code": {
                    "type": "integer",
                    "minimum": 400,
                    "maximum": 699,
                    "default": 603,
                    "description": "SIP status code, 400 to 699. Default 603 (Decline).",
                }
            }
        ),
    }


# --- profiles --------------------------------------------------------------------------------

_SESSION_KEY_HELP = {
    "model": "The Realtime model, e.g. gpt-realtime.",
    "instructions": (
        "System instructions; {{ ... }} templates see caller, called, call_id, rule, headers,"
        " now and vars (from consulted services)."
    ),
    "audio": "Audio settings: input (noise reduction, transcription, turn detection) and output"
    " (voice, speed). No format: on SIP the trunk negotiates the codec.",
    "prompt": "A stored prompt: id, version, variables; string variables are {{ ... }} templates.",
    "tracing": '"auto" or {workflow_name, group_id, metadata}; group_id and metadata string'
    " values are {{ ... }} templates.",
    "tools": "Tools for the model. MCP tools are run by OpenAI; function tools need a program"
    " on the call's sideband WebSocket.",
}


_LIVE_KEY_HELP = {
    "model": "The GPT-Live model, e.g. gpt-live-1 (required: there is no default).",
    "instructions": (
        "The voice agent's instructions; {{ ... }} templates see caller, called, call_id, rule,"
        " headers, now and vars (from consulted services)."
    ),
    "audio": "audio.output.voice only (a built-in voice name, a custom one's, or {id}). No"
    " format: on SIP the trunk negotiates the codec.",
    "delegation": "null, {type: client}, or {type: responses, responses: {model, instructions,"
    " tools, ...}}: the backend model GPT-Live hands work to (end_call needs responses).",
    "store": "Keep the session's recording (for download and fork); default false.",
    "input": "Text-only history the session starts with: messages of role developer, user"
    " (input_text) or assistant (output_text); texts are {{ ... }} templates.",
}


def _profile_defs(
    full_props: Schema, partial_props: Schema, live_full: Schema, live_partial: Schema
) -> Schema:
    extras: Schema = {
        "api": _API,
        "extends": _described(
            _ref("Name"),
            "A parent profile: its fields are deep-merged under this one's. Fields the parent"
            " gives need not be repeated here.",
        ),
        "instructions_file": {
            "type": "string",
            "minLength": 1,
            "description": "A file relative to this one whose text is the instructions.",
        },
        "max_duration_s": _described(
            _ref("MaxDuration"), "sip-router hangs up after this many seconds."
        ),
        "greeting": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": 4000,
            "description": "Said first, as soon as sip-router is on the call's sideband;"
            " {{ ... }} templates.",
        },
        "transfer": {
            "type": ["array", "null"],
            "items": _ref("Name"),
            "minItems": 1,
            "description": "Names of `transfer_targets` the agent may transfer the caller to"
            " (adds the tool transfer_call).",
        },
        "end_call": {
            "type": ["boolean", "null"],
            "description": "Let the agent hang up after saying goodbye (adds the tool end_call).",
        },
        "functions": {
            "type": ["array", "null"],
            "items": _ref("Name"),
            "minItems": 1,
            "description": "Names of top-level `functions` the agent may call; each becomes a"
            " function tool that your service answers.",
        },
        "transcript": {
            "type": ["boolean", "null"],
            "description": "Keep the call's transcript in the call log (with"
            " SIP_ROUTER_TRANSCRIPTS=true).",
        },
    }
    realtime = _object(
        {**partial_props, **extras},
        description="A Realtime accept configuration: the accept body without `type`.",
    )
    realtime["not"] = {"required": ["instructions", "instructions_file"]}
    # A profile that extends another is checked after the merge, so only one without
    # `extends` must be complete on its own.
    realtime["if"] = {"required": ["extends"]}
    realtime["else"] = {"properties": full_props}
    # Transfer and functions are refused on GPT-Live.
    live_extras = {k: v for k, v in extras.items() if k not in ("transfer", "functions")}
    live_extras["end_call"] = {
        "type": ["boolean", "null"],
        "description": "Let the agent hang up after saying goodbye: adds the tool end_call to"
        " delegation.responses.tools, so it needs delegation: {type: responses, ...}.",
    }
    live = _object(
        {**live_partial, **live_extras},
        description="A GPT-Live accept session (without `type`); it names its model.",
    )
    live["not"] = {"required": ["instructions", "instructions_file"]}
    live["if"] = {"required": ["extends"]}
    live["else"] = {"properties": live_full, "required": ["model"]}
    profile = {
        "type": "object",
        "description": "An accept configuration: the accept body without `type`; with"
        " api: live, a GPT-Live session.",
        "if": {"properties": {"api": {"const": "live"}}, "required": ["api"]},
        "then": _ref("LiveProfile"),
        "else": _ref("RealtimeProfile"),
    }
    return {
        "Profile": profile,
        "RealtimeProfile": realtime,
        "LiveProfile": live,
        "MaxDuration": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_DURATION_LIMIT_S,
            "description": "Seconds, more than 0 and at most 86400.",
        },
    }


def _session_parts(*, live: bool = False) -> tuple[Schema, Schema, Schema]:
    """The accept body's $defs (complete and partial) and its properties, both ways.

    `live`: those of the GPT-Live accept session instead.
    """
    source = live_session_json_schema() if live else accept_body_json_schema()
    full, partial = (_LIVE, _LIVE_PARTIAL) if live else (_SESSION, _PARTIAL)
    source_defs: Mapping[str, Schema] = source.get("$defs", {})
    defs: Schema = {}
    for name, schema in source_defs.items():
        defs[full + name] = _imported(schema, partial=False, prefix=full)
        defs[partial + name] = _imported(schema, partial=True, prefix=partial)
    properties = {"properties": source["properties"]}
    full_props = _imported(properties, partial=False, prefix=full)["properties"]
    partial_props = _imported(properties, partial=True, prefix=partial)["properties"]
    help_texts = _LIVE_KEY_HELP if live else _SESSION_KEY_HELP
    for props in (full_props, partial_props):
        for key, help_text in help_texts.items():
            if key in props:
                props[key]["description"] = help_text
    return defs, full_props, partial_props


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = (
    "additionalProperties",
    "items",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
)
# List entries replace the parent's list whole, so they must be complete even in a partial.
_ELEMENT_KEYWORDS = ("items", "prefixItems", "contains")


def _imported(schema: Schema, *, partial: bool, prefix: str) -> Schema:
    """A copy of a pydantic schema with $refs under `prefix`; `partial` drops `required`.

    Element schemas (list items) stay complete in a partial: they are under the complete
    prefix, which `prefix` names with its partial part left out.
    """
    out: Schema = {}
    for key, value in schema.items():
        inner = partial and key not in _ELEMENT_KEYWORDS
        own = prefix if inner or not partial else prefix.replace("partial.", "")
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = "#/$defs/" + prefix + value.removeprefix("#/$defs/")
        elif key == "required" and partial:
            continue
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {
                name: _imported(sub, partial=inner, prefix=own) for name, sub in value.items()
            }
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [_imported(sub, partial=inner, prefix=own) for sub in value]
        elif key in _SCHEMA_VALUES and isinstance(value, dict):
            out[key] = _imported(value, partial=inner, prefix=own)
        else:
            out[key] = deepcopy(value)
    return out


# --- schedules -------------------------------------------------------------------------------


def _day_tokens() -> list[str]:
    """Weekday names, then every range "mon-fri" (ranges wrap: "fri-mon")."""
    ranges = [f"{first}-{last}" for first in WEEKDAYS for last in WEEKDAYS if first != last]
    return [*WEEKDAYS, *ranges]


def _range_of(form: str) -> str:
    """A date of `form`, or an inclusive range of two."""
    return rf"{form}( *\.\. *{form})?"


def _schedule_defs() -> Schema:
    day = {
        "enum": _day_tokens(),
        "description": "A weekday (mon ... sun) or a range like mon-fri.",
    }
    window = _object(
        {
            "days": {
                "anyOf": _one_or_list(_ref("DayToken"), min_items=1),
                "description": "mon-fri, sat, or a list like [mon, wed-fri].",
            },
            "from": _described(_ref("Time"), 'Start, a quoted "HH:MM" (included).'),
            "to": {
                "type": "string",
                "pattern": f"^({_TIME}|24:00)$",
                "description": 'End, a quoted "HH:MM" or "24:00" (excluded). Not after `from`:'
                " the window runs overnight and belongs to its start day.",
            },
        },
        required=("days", "from", "to"),
        description="A weekly window [from, to) in the schedule's time zone.",
    )
    holiday = _object(
        {
            "country": _described(_ref("CountryCode"), "Country of the public holidays."),
            "subdiv": {
                "type": "string",
                "description": 'A subdivision code of that country, e.g. BE (quote digits: "9").',
            },
            "categories": {
                "anyOf": _one_or_list({"type": "string"}, min_items=1),
                "description": "Holiday categories of that country, e.g. public.",
            },
        },
        required=("country",),
        description="Public holidays, from the holidays library.",
    )
    day_set_keys: Schema = {
        "holidays": {
            "anyOf": _one_or_list(_ref("Holiday")),
            "description": "{country: DE, subdiv: BE}, or a list of them.",
        },
        "dates": {
            "anyOf": _one_or_list(_ref("DateEntry")),
            "description": 'Dates, every-year dates and ranges of either: ["2026-12-24",'
            ' "12-25", "12-31..01-02"], or the nth weekday of a month {month, weekday, nth}.',
        },
    }
    day_set = _object(day_set_keys)
    closed_day_set = _object(
        {
            **day_set_keys,
            "times": {
                "type": "array",
                "items": _ref("ClosedTime"),
                "description": "Parts of days that are closed: [{date, from, to}].",
            },
        }
    )
    closed_time = _object(
        {
            "date": _ref("DateEntry"),
            "from": _described(_ref("Time"), 'Start, a quoted "HH:MM" (included).'),
            "to": {
                "type": "string",
                "pattern": f"^({_TIME}|24:00)$",
                "description": 'End, a quoted "HH:MM" or "24:00" (excluded). Not after `from`:'
                " the closure runs overnight and belongs to its start date.",
            },
        },
        required=("date", "from", "to"),
        description="Closed from `from` to `to` on a date (any form of date entry).",
    )
    nth_weekday = _object(
        {
            "month": {"type": "integer", "minimum": 1, "maximum": 12},
            "weekday": {"enum": list(WEEKDAYS)},
            "nth": {
                "enum": [1, 2, 3, 4, 5, -1],
                "description": "1 to 5 (the first to fifth), or -1 (the last). A fifth that a"
                " month does not have is no date.",
            },
        },
        required=("month", "weekday", "nth"),
        description="The nth weekday of a month, every year: {month: 5, weekday: mon, nth: -1}"
        " is the last Monday of May.",
    )
    schedule = _object(
        {
            "timezone": _described(_ref("TimeZone"), "Default: defaults.timezone."),
            "weekly": {
                "type": "array",
                "items": _ref("WeeklyWindow"),
                "description": "Opening windows. None: open at all times but closed days.",
            },
            "closed": _described(
                _ref("ClosedDaySet"),
                "Days (and parts of days, `times`) on which it is closed; wins over weekly.",
            ),
            "open": _described(
                _ref("DaySet"), "Days on which `closed` does not apply; wins over closed."
            ),
        },
        description="Open when the time is in a weekly window whose start day is not closed.",
    )
    return {
        "Schedule": schedule,
        "WeeklyWindow": window,
        "DayToken": day,
        "Time": {"type": "string", "pattern": f"^{_TIME}$", "description": '"HH:MM", quoted.'},
        "DaySet": day_set,
        "ClosedDaySet": closed_day_set,
        "ClosedTime": closed_time,
        "Holiday": holiday,
        "NthWeekday": nth_weekday,
        "DateEntry": {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": f"^({_range_of(_DATE)}|{_range_of(_MONTH_DAY)})$",
                },
                _ref("NthWeekday"),
            ],
            "description": "YYYY-MM-DD, MM-DD (every year), an inclusive range of either"
            " (12-31..01-02 crosses the year end), or {month, weekday, nth}.",
        },
    }


# --- tests -----------------------------------------------------------------------------------


def _test_defs() -> Schema:
    expect = {
        "anyOf": [
            _described(_ref("Name"), "The rule that must decide, or default."),
            _object(
                {
                    "action": {"enum": list(_ACTIONS)},
                    "rule": _ref("Name"),
                    "status_code": {"type": "integer"},
                    "target_uri": {"type": "string"},
                    "profile": _ref("Name"),
                },
            ),
        ],
        "description": "A rule name, default, or {action, rule?, status_code?, target_uri?,"
        " profile?}.",
    }
    case = _object(
        {
            "from": _described(_ref("NumberText"), "The caller's number."),
            "to": _described(_ref("NumberText"), "The called number."),
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Extra SIP headers of the call.",
            },
            "at": {
                "type": "string",
                "pattern": rf"^{_DATE}([Tt ]{_TIME}(:[0-5][0-9](\.[0-9]+)?)?{_OFFSET}?)?$",
                "description": "When the call arrives, ISO 8601. Without an offset: in"
                " defaults.timezone.",
            },
            "consult": _map_of(
                _ref("Name"),
                {"type": "object"},
                "The answer each consulted service gives in this case, by service name;"
                " a service without one is not asked.",
            ),
            "api": {
                "enum": ["realtime", "live"],
                "default": "realtime",
                "description": "The API that announces the call (default realtime).",
            },
            "media_security": {
                "type": "string",
                "minLength": 1,
                "maxLength": 32,
                "description": "The call's sip_media_security: srtp, rtp (or another value,"
                " which no condition matches). Left out: unknown.",
            },
            "expect": expect,
        },
        required=("from", "to", "expect"),
        description="An example call and the decision it must get.",
    )
    return {"TestCase": case}


# --- tidying ---------------------------------------------------------------------------------


def _refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.removeprefix("#/$defs/")
            else:
                yield from _refs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs_in(item)


def _reachable_defs(schema: Schema) -> Schema:
    """The $defs that the document uses, sorted by name; unused accept-body variants go."""
    defs: Schema = schema["$defs"]
    root = {key: value for key, value in schema.items() if key != "$defs"}
    pending = list(_refs_in(root))
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(_refs_in(defs[name]))
    return {name: defs[name] for name in sorted(seen)}
