"""Accept-body session config: validation against the reference, body building, warnings."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.rules.accept_body import (
    VOICES,
    FunctionTool,
    McpTool,
    SemanticVad,
    ServerVad,
    SessionConfig,
    accept_body_json_schema,
    build_accept_body,
    function_tool_warnings,
    validate_session_config,
)

OPENAPI = Path(__file__).parent / "data" / "openai-calls-openapi.yaml"

TUNNEL = "tunnel_" + "0123456789abcdef" * 2
MCP = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example.com/sse"}

# Sets every key of every model once, so the schema checks below see all of them.
FULL: dict[str, Any] = {
    "audio": {
        "input": {
            "noise_reduction": {"type": "far_field"},
            "transcription": {
                "delay": "low",
                "keywords": ["Acme", "Zwiebelkuchen"],
                "language": "de",
                "languages": ["de", "en"],
                "model": "gpt-4o-transcribe",
                "prompt": "names",
            },
            "turn_detection": {
                "type": "server_vad",
                "create_response": True,
                "idle_timeout_ms": 6000,
                "interrupt_response": False,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "threshold": 0.5,
            },
        },
        "output": {"speed": 1.1, "voice": "marin"},
    },
    "include": ["item.input_audio_transcription.logprobs"],
    "instructions": "You are the front desk.",
    "max_output_tokens": 4096,
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "prompt": {
        "id": "pmpt_123",
        "version": "3",
        "variables": {
            "city": "Berlin",
            "greeting": {
                "type": "input_text",
                "text": "Hello",
                "prompt_cache_breakpoint": {"mode": "explicit"},
            },
            "logo": {
                "type": "input_image",
                "detail": "auto",
                "image_url": "https://example.com/logo.png",
                "prompt_cache_breakpoint": {"mode": "explicit"},
            },
            "menu": {
                "type": "input_file",
                "detail": "high",
                "file_data": "data",
                "file_id": "file_1",
                "file_url": "https://example.com/menu.pdf",
                "filename": "menu.pdf",
                "prompt_cache_breakpoint": {"mode": "explicit"},
            },
        },
    },
    "tool_choice": {"type": "mcp", "server_label": "crm", "name": "lookup"},
    "tools": [
        {
            "type": "function",
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
        {
            **MCP,
            "allowed_tools": {"read_only": True, "tool_names": ["lookup"]},
            "authorization": "token",
            "defer_loading": False,
            "headers": {"X-Tenant": "acme"},
            "require_approval": {
                "always": {"tool_names": ["delete"]},
                "never": {"read_only": True},
            },
            "server_description": "Customer records",
        },
        {
            "type": "mcp",
            "server_label": "mail",
            "connector_id": "connector_gmail",
            "allowed_tools": ["search"],
            "require_approval": "never",
        },
        {
            "type": "mcp",
            "server_label": "intranet",
            "tunnel_id": TUNNEL,
            "allowed_callers": ["direct", "programmatic"],
        },
    ],
    "parallel_tool_calls": True,
    "reasoning": {"effort": "xhigh"},
    "tracing": {"group_id": "g", "metadata": {"site": "berlin"}, "workflow_name": "desk"},
    "truncation": {
        "type": "retention_ratio",
        "retention_ratio": 0.8,
        "token_limits": {"post_instructions": 5000},
    },
}

# Configs the published OpenAPI schema describes too (it lacks null for noise_reduction,
# transcription and tracing, which the reference allows).
SAMPLES: list[dict[str, Any]] = [
    {},
    {"model": "gpt-realtime", "instructions": "Hi", "audio": {"output": {"voice": "cedar"}}},
    FULL,
    {
        "audio": {
            "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
            "output": {"voice": {"id": "voice_1234"}, "speed": 0.25},
        },
        "max_output_tokens": "inf",
        "output_modalities": ["text"],
        "tool_choice": "required",
        "tracing": "auto",
        "truncation": "disabled",
    },
    {
        "audio": {"input": {"turn_detection": None}},
        "prompt": None,
        "tool_choice": {"type": "function", "name": "lookup_order"},
        "tools": [
            {},
            {**MCP, "allowed_tools": None, "headers": None, "require_approval": None},
        ],
    },
    {
        "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": None}}},
        "prompt": {"id": "pmpt_1", "variables": None, "version": None},
        "tool_choice": {"type": "mcp", "server_label": "crm", "name": None},
        "truncation": "auto",
    },
]


def set_path(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """A deep copy of data with value placed at path, creating mappings on the way."""
    result = copy.deepcopy(data)
    node: Any = result
    for key in path[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return result


def errors(data: Any) -> list[tuple[tuple[str | int, ...], str, str]]:
    with pytest.raises(ValidationError) as info:
        validate_session_config(data)
    return [(tuple(e["loc"]), e["type"], e["msg"]) for e in info.value.errors()]


def only_error(data: Any) -> tuple[tuple[str | int, ...], str, str]:
    found = errors(data)
    assert len(found) == 1, found
    return found[0]


# --- values at their boundaries ------------------------------------------------------------

SPEED = ("audio", "output", "speed")
VOICE = ("audio", "output", "voice")
TD = ("audio", "input", "turn_detection")
SERVER_VAD = {"type": "server_vad"}

VALID_VALUES: list[tuple[tuple[str | int, ...], Any]] = [
    (SPEED, 0.25),
    (SPEED, 1.5),
    (SPEED, 1),
    (("max_output_tokens",), 1),
    (("max_output_tokens",), 4096),
    (("max_output_tokens",), "inf"),
    (("output_modalities",), ["text"]),
    (("output_modalities",), ["audio"]),
    (("include",), []),
    (("instructions",), ""),
    (("model",), "my-fine-tuned-realtime"),
    (("audio", "input", "noise_reduction"), {"type": "near_field"}),
    (("audio", "input", "noise_reduction"), {}),
    (("audio", "input", "transcription"), {"delay": "minimal", "languages": ["hi"]}),
    (("audio", "input", "transcription"), {"keywords": []}),
    (("reasoning",), {"effort": "minimal"}),
    (("reasoning",), {}),
    (("parallel_tool_calls",), False),
    (("audio", "input", "transcription"), {"model": "any-transcriber"}),
    (TD, {**SERVER_VAD, "threshold": 0.0}),
    (TD, {**SERVER_VAD, "threshold": 1.0}),
    (TD, {**SERVER_VAD, "threshold": 1}),
    (TD, {**SERVER_VAD, "idle_timeout_ms": 5000}),
    (TD, {**SERVER_VAD, "idle_timeout_ms": 30000}),
    (TD, {**SERVER_VAD, "prefix_padding_ms": 0}),
    (TD, {**SERVER_VAD, "silence_duration_ms": 0}),
    (TD, {"type": "semantic_vad", "eagerness": "auto", "create_response": False}),
    (("truncation",), {"type": "retention_ratio", "retention_ratio": 0}),
    (("truncation",), {"type": "retention_ratio", "retention_ratio": 1.0}),
    (("truncation",), {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {}}),
    (
        ("truncation",),
        {
            "type": "retention_ratio",
            "retention_ratio": 0.5,
            "token_limits": {"post_instructions": 0},
        },
    ),
    (("tracing",), {}),
    (("tools",), []),
    (("tool_choice",), "none"),
    (("tool_choice",), "auto"),
    (("tools",), [{**MCP, "server_url": "http://10.0.0.5:8080/mcp"}]),
    (("tools",), [{"type": "function", "parameters": {"nested": [1, 2.5, None, True, {}]}}]),
    *[(VOICE, voice) for voice in VOICES],
    # Custom voices by name: the reference allows any string.
    (VOICE, "nova"),
    (VOICE, "Marin"),
    (VOICE, "voice_1234"),
]


@pytest.mark.parametrize(("path", "value"), VALID_VALUES)
def test_valid_values_are_accepted_and_sent_as_written(
    path: tuple[str | int, ...], value: Any
) -> None:
    config = validate_session_config(set_path({}, path, value))
    body: Any = build_accept_body(config)
    for key in path:
        body = body[key]
    assert body == value


INVALID_VALUES: list[
    tuple[tuple[str | int, ...], Any, tuple[str | int, ...] | None, str | None]
] = [
    (SPEED, 0.24, SPEED, "greater_than_equal"),
    (SPEED, 1.51, SPEED, "less_than_equal"),
    (SPEED, float("nan"), SPEED, "finite_number"),
    (("max_output_tokens",), 0, ("max_output_tokens",), "greater_than_equal"),
    (("max_output_tokens",), 4097, ("max_output_tokens",), "less_than_equal"),
    (("max_output_tokens",), "INF", ("max_output_tokens",), "max_output_tokens"),
    (("max_output_tokens",), "100", ("max_output_tokens",), "max_output_tokens"),
    (("max_output_tokens",), float("inf"), ("max_output_tokens",), "int_type"),
    (("max_output_tokens",), [1], ("max_output_tokens",), "invalid_shape"),
    (("output_modalities",), [], ("output_modalities",), "too_short"),
    (("output_modalities",), ["text", "audio"], ("output_modalities",), "too_long"),
    (("output_modalities",), ["video"], ("output_modalities", 0), "literal_error"),
    (("output_modalities",), "audio", ("output_modalities",), "list_type"),
    (("include",), ["logprobs"], ("include", 0), "literal_error"),
    (("model",), "", ("model",), "string_too_short"),
    (VOICE, "", VOICE, "voice_name"),
    (VOICE, 3, VOICE, "invalid_shape"),
    (("reasoning",), {"effort": "max"}, ("reasoning", "effort"), "literal_error"),
    (("reasoning",), "high", ("reasoning",), "model_type"),
    (("parallel_tool_calls",), "yes", ("parallel_tool_calls",), "bool_type"),
    (
        ("audio", "input", "transcription"),
        {"delay": "slow"},
        ("audio", "input", "transcription", "delay"),
        "literal_error",
    ),
    (
        ("audio", "input", "transcription"),
        {"languages": []},
        ("audio", "input", "transcription", "languages"),
        "too_short",
    ),
    (
        ("audio", "input", "transcription"),
        {"keywords": "Acme"},
        ("audio", "input", "transcription", "keywords"),
        "list_type",
    ),
    (
        ("prompt",),
        {"id": "p", "variables": {"f": {"type": "input_file", "detail": "original"}}},
        ("prompt", "variables", "f", "detail"),
        "literal_error",
    ),
    (
        ("prompt",),
        {
            "id": "p",
            "variables": {
                "t": {
                    "type": "input_text",
                    "text": "x",
                    "prompt_cache_breakpoint": {"mode": "auto"},
                }
            },
        },
        ("prompt", "variables", "t", "prompt_cache_breakpoint", "mode"),
        "literal_error",
    ),
    (VOICE, {"id": ""}, (*VOICE, "id"), "string_too_short"),
    (VOICE, {}, (*VOICE, "id"), "missing"),
    (VOICE, ["marin"], VOICE, "invalid_shape"),
    (("audio", "input", "noise_reduction"), {"type": "mid_field"}, None, "literal_error"),
    (TD, {**SERVER_VAD, "threshold": -0.01}, (*TD, "threshold"), "greater_than_equal"),
    (TD, {**SERVER_VAD, "threshold": 1.01}, (*TD, "threshold"), "less_than_equal"),
    (TD, {**SERVER_VAD, "idle_timeout_ms": 4999}, (*TD, "idle_timeout_ms"), "greater_than_equal"),
    (TD, {**SERVER_VAD, "idle_timeout_ms": 30001}, (*TD, "idle_timeout_ms"), "less_than_equal"),
    (TD, {**SERVER_VAD, "prefix_padding_ms": -1}, (*TD, "prefix_padding_ms"), "greater_than_equal"),
    (TD, {**SERVER_VAD, "silence_duration_ms": -1}, (*TD, "silence_duration_ms"), None),
    (TD, {**SERVER_VAD, "prefix_padding_ms": 300.5}, (*TD, "prefix_padding_ms"), "int_type"),
    (TD, {"type": "semantic_vad", "eagerness": "eager"}, (*TD, "eagerness"), "literal_error"),
    (
        ("truncation",),
        {"type": "retention_ratio", "retention_ratio": -0.1},
        ("truncation", "retention_ratio"),
        "greater_than_equal",
    ),
    (
        ("truncation",),
        {"type": "retention_ratio", "retention_ratio": 1.1},
        ("truncation", "retention_ratio"),
        "less_than_equal",
    ),
    (("truncation",), {"retention_ratio": 0.5}, ("truncation", "type"), "missing"),
    (("truncation",), {"type": "retention_ratio"}, ("truncation", "retention_ratio"), "missing"),
    (
        ("truncation",),
        {
            "type": "retention_ratio",
            "retention_ratio": 0.5,
            "token_limits": {"post_instructions": -1},
        },
        ("truncation", "token_limits", "post_instructions"),
        "greater_than_equal",
    ),
    (("truncation",), "off", ("truncation",), "literal_error"),
    (("tracing",), "on", ("tracing",), "literal_error"),
    (("tracing",), {"metadata": "x"}, ("tracing", "metadata"), "dict_type"),
    (("tracing",), {"metadata": {"when": float("inf")}}, ("tracing", "metadata", "when"), None),
    (("prompt",), {"version": "1"}, ("prompt", "id"), "missing"),
    (("prompt",), {"id": "p", "variables": {"v": 1}}, ("prompt", "variables", "v"), None),
    (
        ("prompt",),
        {"id": "p", "variables": {"v": {"type": "input_image"}}},
        ("prompt", "variables", "v", "detail"),
        "missing",
    ),
    (
        ("prompt",),
        {"id": "p", "variables": {"v": {"type": "input_video"}}},
        ("prompt", "variables", "v", "type"),
        "unknown_type",
    ),
    (
        ("prompt",),
        {"id": "p", "variables": {"v": {"text": "hi"}}},
        ("prompt", "variables", "v", "type"),
        "missing",
    ),
]


@pytest.mark.parametrize(("path", "value", "loc", "kind"), INVALID_VALUES)
def test_invalid_values_are_refused_at_their_field(
    path: tuple[str | int, ...],
    value: Any,
    loc: tuple[str | int, ...] | None,
    kind: str | None,
) -> None:
    found_loc, found_kind, _ = only_error(set_path({}, path, value))
    assert found_loc == (loc or (*path, "type"))
    if kind is not None:
        assert found_kind == kind


# --- strictness ------------------------------------------------------------------------------

STRICT_CASES: list[tuple[tuple[str | int, ...], Any]] = [
    (SPEED, True),
    (SPEED, "1.0"),
    (("max_output_tokens",), True),
    (("max_output_tokens",), 100.0),
    (("audio", "input", "turn_detection", "threshold"), False),
    (("audio", "input", "turn_detection", "threshold"), "0.5"),
    (("audio", "input", "turn_detection", "idle_timeout_ms"), True),
    (("audio", "input", "turn_detection", "prefix_padding_ms"), "300"),
    (("audio", "input", "turn_detection", "silence_duration_ms"), True),
    (("audio", "input", "turn_detection", "create_response"), 1),
    (("audio", "input", "turn_detection", "interrupt_response"), "yes"),
    (("truncation", "retention_ratio"), True),
    (("truncation", "token_limits", "post_instructions"), True),
    (("instructions",), 5),
    (("model",), 1.5),
    (VOICE, 5),
    (VOICE, True),
    (("audio", "output", "voice", "id"), 1234),
    (("audio", "input", "transcription", "language"), False),
]


@pytest.mark.parametrize(("path", "value"), STRICT_CASES)
def test_values_of_the_wrong_type_are_not_coerced(path: tuple[str | int, ...], value: Any) -> None:
    base: dict[str, Any] = {}
    if path[:3] == TD:
        base = set_path(base, TD, dict(SERVER_VAD))
    if path[0] == "truncation":
        base = {"truncation": {"type": "retention_ratio", "retention_ratio": 0.5}}
    assert only_error(set_path(base, path, value))[0] == path


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((*TD, "interrupt_response"), 0),
        (("tools",), [{**MCP, "defer_loading": "true"}]),
        (("tools",), [{**MCP, "headers": {"X-Port": 8080}}]),
        (("tools",), [{**MCP, "allowed_tools": {"read_only": 1}}]),
    ],
)
def test_booleans_and_strings_stay_strict_inside_tools(
    path: tuple[str | int, ...], value: Any
) -> None:
    data = set_path({}, path, value)
    if path[:3] == TD:
        data = set_path(data, (*TD, "type"), "server_vad")
    errors(data)


def test_yaml_1_1_spellings_are_refused_rather_than_converted() -> None:
    profile = yaml.safe_load(
        """
        audio:
          output: {speed: yes}
          input: {turn_detection: {type: server_vad, create_response: on, threshold: .inf}}
        max_output_tokens: .inf
        """
    )
    locs = {loc for loc, _, _ in errors(profile)}
    assert locs == {
        SPEED,
        (*TD, "threshold"),
        ("max_output_tokens",),
    }


# --- nulls -----------------------------------------------------------------------------------

NULL_LEFT_OUT = [
    ("audio",),
    ("audio", "input"),
    ("audio", "output"),
    ("audio", "input", "noise_reduction"),
    ("audio", "input", "transcription"),
    ("prompt",),
    ("tracing",),
    SPEED,
    VOICE,
    ("include",),
    ("instructions",),
    ("max_output_tokens",),
    ("model",),
    ("output_modalities",),
    ("parallel_tool_calls",),
    ("reasoning",),
    ("tool_choice",),
    ("tools",),
    ("truncation",),
    ("audio", "input", "transcription", "language"),
    ("audio", "input", "noise_reduction", "type"),
    ("reasoning", "effort"),
]


@pytest.mark.parametrize("path", NULL_LEFT_OUT)
def test_a_key_written_as_null_is_left_out(path: tuple[str, ...]) -> None:
    data = set_path({}, path, None)
    body = build_accept_body(validate_session_config(data))
    expected = set_path({}, path[:-1], {}) if len(path) > 1 else {}
    assert body == {"type": "realtime", **expected}


def test_turn_detection_null_is_sent_it_turns_detection_off() -> None:
    # Left out, OpenAI's default (server VAD) would apply: the null means something.
    data = set_path({}, TD, None)
    assert build_accept_body(validate_session_config(data)) == {"type": "realtime", **data}


@pytest.mark.parametrize("key", ["allowed_tools", "allowed_callers", "headers", "require_approval"])
def test_mcp_keys_written_as_null_are_left_out(key: str) -> None:
    body = build_accept_body(validate_session_config({"tools": [{**MCP, key: None}]}))
    assert body["tools"] == [MCP]


@pytest.mark.parametrize(
    "path",
    [
        (*TD, "idle_timeout_ms"),
        ("tool_choice", "name"),
        ("prompt", "variables"),
        ("prompt", "version"),
        ("prompt", "variables", "img", "file_id"),
        ("prompt", "variables", "img", "image_url"),
    ],
)
def test_nested_keys_written_as_null_are_left_out(path: tuple[str, ...]) -> None:
    base: dict[str, Any] = {
        "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
        "tool_choice": {"type": "mcp", "server_label": "crm"},
        "prompt": {"id": "p", "variables": {"img": {"type": "input_image", "detail": "low"}}},
    }
    expected = set_path(base, path, None)
    node: Any = expected
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    body = build_accept_body(validate_session_config(set_path(base, path, None)))
    assert body == {"type": "realtime", **expected}


def test_a_required_key_written_as_null_is_missing() -> None:
    assert only_error({"prompt": {"id": None}})[:2] == (("prompt", "id"), "missing")


# --- refused keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["input", "output"])
@pytest.mark.parametrize(
    "value", [{"type": "audio/pcmu"}, {"type": "audio/pcm", "rate": 24000}, None, "g711"]
)
def test_audio_format_is_refused_on_either_side(side: str, value: Any) -> None:
    assert only_error({"audio": {side: {"format": value}}}) == (
        ("audio", side, "format"),
        "format_not_allowed",
        f"audio.{side}.format must not be set: on SIP calls the codec is negotiated by the trunk",
    )


def test_format_refusal_does_not_hide_other_errors() -> None:
    data = {"audio": {"output": {"format": {"type": "audio/pcma"}, "speed": 9}}, "model": 1}
    assert {loc for loc, _, _ in errors(data)} == {
        ("audio", "output", "format"),
        SPEED,
        ("model",),
    }


@pytest.mark.parametrize("value", ["realtime", "transcription", None])
def test_top_level_type_is_refused(value: Any) -> None:
    assert only_error({"type": value, "model": "gpt-realtime"}) == (
        ("type",),
        "type_not_allowed",
        'type is always "realtime" and is added by sip-router',
    )


UNKNOWN_KEY_BASE: dict[str, Any] = {
    "audio": {
        "input": {
            "noise_reduction": {"type": "near_field"},
            "transcription": {"model": "whisper-1"},
        },
        "output": {"voice": {"id": "voice_1"}},
    },
    "prompt": {
        "id": "p",
        "variables": {
            "t": {"type": "input_text", "text": "x"},
            "i": {"type": "input_image", "detail": "low"},
            "f": {"type": "input_file"},
        },
    },
    "tool_choice": {"type": "function", "name": "f"},
    "tools": [
        {"name": "f"},
        {**MCP, "allowed_tools": {"tool_names": []}, "require_approval": {"never": {}}},
    ],
    "tracing": {"workflow_name": "w"},
    "truncation": {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {}},
}


@pytest.mark.parametrize(
    "where",
    [
        (),
        ("audio",),
        ("audio", "input"),
        ("audio", "output"),
        ("audio", "input", "noise_reduction"),
        ("audio", "input", "transcription"),
        ("audio", "output", "voice"),
        ("prompt",),
        ("prompt", "variables", "t"),
        ("prompt", "variables", "i"),
        ("prompt", "variables", "f"),
        ("tool_choice",),
        ("tools", 0),
        ("tools", 1),
        ("tools", 1, "allowed_tools"),
        ("tools", 1, "require_approval"),
        ("tools", 1, "require_approval", "never"),
        ("tracing",),
        ("truncation",),
        ("truncation", "token_limits"),
    ],
)
def test_unknown_keys_are_refused_where_they_are(where: tuple[str | int, ...]) -> None:
    validate_session_config(UNKNOWN_KEY_BASE)
    data = set_path(UNKNOWN_KEY_BASE, (*where, "voice_speed"), 1)
    assert only_error(data)[:2] == ((*where, "voice_speed"), "extra_forbidden")


@pytest.mark.parametrize(
    ("turn_detection", "extra_key"),
    [
        ({"type": "server_vad", "eagerness": "low"}, "eagerness"),
        ({"type": "semantic_vad", "threshold": 0.5}, "threshold"),
        ({"type": "semantic_vad", "idle_timeout_ms": 6000}, "idle_timeout_ms"),
        ({"type": "semantic_vad", "silence_duration_ms": 200}, "silence_duration_ms"),
    ],
)
def test_turn_detection_keys_belong_to_their_type(
    turn_detection: dict[str, Any], extra_key: str
) -> None:
    data = set_path({}, TD, turn_detection)
    assert only_error(data)[:2] == ((*TD, extra_key), "extra_forbidden")


@pytest.mark.parametrize(
    ("value", "loc", "kind"),
    [
        ({"threshold": 0.5}, (*TD, "type"), "missing"),
        ({"type": "client_vad"}, (*TD, "type"), "unknown_type"),
        ({"type": 1}, (*TD, "type"), "unknown_type"),
        ("server_vad", TD, "invalid_shape"),
        (True, TD, "invalid_shape"),
    ],
)
def test_turn_detection_needs_a_known_type(value: Any, loc: tuple[str, ...], kind: str) -> None:
    assert only_error(set_path({}, TD, value))[:2] == (loc, kind)


def test_turn_detection_types_are_told_apart() -> None:
    server = validate_session_config(set_path({}, TD, {"type": "server_vad", "threshold": 0.7}))
    semantic = validate_session_config(set_path({}, TD, {"type": "semantic_vad"}))
    assert server.audio is not None
    assert server.audio.input is not None
    assert semantic.audio is not None
    assert semantic.audio.input is not None
    assert isinstance(server.audio.input.turn_detection, ServerVad)
    assert server.audio.input.turn_detection.threshold == 0.7
    assert isinstance(semantic.audio.input.turn_detection, SemanticVad)


# --- voices, tools, tool_choice --------------------------------------------------------------


def test_voices_are_the_ten_built_in_voices() -> None:
    assert VOICES == (
        "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
    )  # fmt: skip


@pytest.mark.parametrize("voice", ["marin", {"id": "voice_1234"}])
def test_both_voice_shapes_are_sent_as_written(voice: Any) -> None:
    body = build_accept_body(validate_session_config({"audio": {"output": {"voice": voice}}}))
    assert body == {"type": "realtime", "audio": {"output": {"voice": voice}}}


def test_voice_errors_name_the_expected_shapes() -> None:
    _, _, message = only_error({"audio": {"output": {"voice": 3}}})
    assert "alloy" in message
    assert "cedar" in message
    assert "id" in message


@pytest.mark.parametrize(
    "tool",
    [
        {},
        {"name": "f"},
        {"type": "function", "name": "f", "description": "d", "parameters": {}},
        MCP,
        {"type": "mcp", "server_label": "cal", "connector_id": "connector_googlecalendar"},
        {**MCP, "allowed_tools": ["a", "b"]},
        {**MCP, "allowed_tools": {"read_only": False}},
        {**MCP, "require_approval": "always"},
        {**MCP, "require_approval": {"never": {"tool_names": ["read"]}}},
        {**MCP, "headers": {}},
        # A server reached through a Secure MCP Tunnel has no URL.
        {"type": "mcp", "server_label": "intranet", "tunnel_id": TUNNEL},
        {**MCP, "allowed_callers": ["programmatic"]},
    ],
)
def test_tool_shapes_are_accepted(tool: dict[str, Any]) -> None:
    config = validate_session_config({"tools": [tool]})
    assert build_accept_body(config)["tools"] == [tool]


@pytest.mark.parametrize(
    ("tool", "loc", "kind"),
    [
        ({"type": "mcp", "server_label": "crm"}, ("tools", 0), "mcp_server"),
        (
            {**MCP, "connector_id": "connector_gmail"},
            ("tools", 0),
            "mcp_server",
        ),
        ({**MCP, "tunnel_id": TUNNEL}, ("tools", 0), "mcp_server"),
        (
            {"type": "mcp", "server_label": "x", "tunnel_id": "tunnel_ABC"},
            ("tools", 0, "tunnel_id"),
            "string_pattern_mismatch",
        ),
        ({**MCP, "allowed_callers": []}, ("tools", 0, "allowed_callers"), "too_short"),
        ({**MCP, "allowed_callers": ["model"]}, ("tools", 0, "allowed_callers", 0), None),
        ({**MCP, "server_label": ""}, ("tools", 0, "server_label"), "string_too_short"),
        ({**MCP, "server_url": "mcp.example.com/sse"}, ("tools", 0, "server_url"), "url_scheme"),
        ({**MCP, "server_url": "ftp://mcp.example.com"}, ("tools", 0, "server_url"), "url_scheme"),
        (
            {"type": "mcp", "server_label": "x", "connector_id": "connector_slack"},
            ("tools", 0, "connector_id"),
            "literal_error",
        ),
        ({"server_url": "https://x"}, ("tools", 0, "server_url"), "extra_forbidden"),
        ({"type": "mcp", "server_url": "https://x"}, ("tools", 0, "server_label"), "missing"),
        ({"type": "code_interpreter"}, ("tools", 0, "type"), "unknown_type"),
        ({"type": "function", "strict": True}, ("tools", 0, "strict"), "extra_forbidden"),
        ({"parameters": ["a"]}, ("tools", 0, "parameters"), "dict_type"),
        ({"parameters": {1: "a"}}, ("tools", 0, "parameters"), "json_value"),
        ({**MCP, "allowed_tools": "lookup"}, ("tools", 0, "allowed_tools"), "invalid_shape"),
        ({**MCP, "allowed_tools": ["a", 2]}, ("tools", 0, "allowed_tools", 1), "string_type"),
        ({**MCP, "require_approval": "sometimes"}, ("tools", 0, "require_approval"), None),
        (
            {**MCP, "require_approval": {"always": {"tool_names": "x"}}},
            ("tools", 0, "require_approval", "always", "tool_names"),
            "list_type",
        ),
        ("lookup", ("tools", 0), "invalid_shape"),
    ],
)
def test_bad_tools_are_refused_at_their_field(
    tool: Any, loc: tuple[str | int, ...], kind: str | None
) -> None:
    found_loc, found_kind, _ = only_error({"tools": [tool]})
    assert found_loc == loc
    if kind is not None:
        assert found_kind == kind


def test_tool_parameters_must_be_plain_json() -> None:
    import datetime as dt

    tool = {"parameters": {"properties": {"since": {"default": dt.date(2026, 1, 1)}}}}
    assert only_error({"tools": [tool]})[:2] == (
        ("tools", 0, "parameters", "properties", "since", "default"),
        "json_value",
    )


def test_tools_are_told_apart() -> None:
    config = validate_session_config({"tools": [{"name": "f"}, MCP]})
    assert config.tools is not None
    assert [type(tool) for tool in config.tools] == [FunctionTool, McpTool]


@pytest.mark.parametrize(
    "choice",
    [
        "none",
        "auto",
        "required",
        {"type": "function", "name": "lookup"},
        {"type": "mcp", "server_label": "crm"},
        {"type": "mcp", "server_label": "crm", "name": "lookup"},
    ],
)
def test_tool_choice_shapes_are_accepted(choice: Any) -> None:
    body = build_accept_body(validate_session_config({"tool_choice": choice}))
    assert body["tool_choice"] == choice


@pytest.mark.parametrize(
    ("choice", "loc", "kind"),
    [
        ("any", ("tool_choice",), "literal_error"),
        ({"type": "function"}, ("tool_choice", "name"), "missing"),
        ({"name": "lookup"}, ("tool_choice", "type"), "missing"),
        ({"type": "mcp", "name": "lookup"}, ("tool_choice", "server_label"), "missing"),
        ({"type": "file_search"}, ("tool_choice", "type"), "unknown_type"),
        ({"type": "function", "name": "f", "server_label": "s"}, None, "extra_forbidden"),
        (["auto"], ("tool_choice",), "invalid_shape"),
    ],
)
def test_bad_tool_choices_are_refused_at_their_field(
    choice: Any, loc: tuple[str, ...] | None, kind: str
) -> None:
    assert only_error({"tool_choice": choice})[:2] == (
        loc or ("tool_choice", "server_label"),
        kind,
    )


def test_every_error_is_reported_at_once() -> None:
    data = {
        "audio": {"output": {"speed": 2, "voice": ""}},
        "max_output_tokens": 0,
        "tools": [{"type": "mcp", "server_label": "x"}, {"type": "function", "name": 1}],
        "bogus": True,
    }
    assert {loc for loc, _, _ in errors(data)} == {
        SPEED,
        VOICE,
        ("max_output_tokens",),
        ("tools", 0),
        ("tools", 1, "name"),
        ("bogus",),
    }


def test_any_mapping_is_accepted_as_input() -> None:
    config = validate_session_config(MappingProxyType({"model": "gpt-realtime"}))
    assert config.model == "gpt-realtime"


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(ValidationError):
        SessionConfig.model_validate(["model"])


def test_models_are_frozen() -> None:
    config = validate_session_config({"model": "gpt-realtime"})
    with pytest.raises(ValidationError):
        config.model = "other"  # type: ignore[misc]


# --- the accept body -------------------------------------------------------------------------


def test_empty_config_gives_only_the_type() -> None:
    assert build_accept_body(validate_session_config({})) == {"type": "realtime"}


def test_body_has_type_first_and_only_the_keys_that_were_set() -> None:
    config = validate_session_config(
        {
            "instructions": "Hello",
            "audio": {"output": {"voice": "marin"}, "input": {"turn_detection": None}},
            "tools": [{"type": "mcp", "server_label": "crm", "connector_id": "connector_gmail"}],
        }
    )
    body = build_accept_body(config)
    assert next(iter(body)) == "type"
    assert body == {
        "type": "realtime",
        "audio": {"input": {"turn_detection": None}, "output": {"voice": "marin"}},
        "instructions": "Hello",
        "tools": [{"type": "mcp", "server_label": "crm", "connector_id": "connector_gmail"}],
    }


def test_body_never_carries_defaults_of_nested_models() -> None:
    body = build_accept_body(
        validate_session_config({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    )
    assert body == {
        "type": "realtime",
        "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}},
    }


def test_full_body_is_the_input_plus_type() -> None:
    body = build_accept_body(validate_session_config(FULL))
    assert body == {"type": "realtime", **FULL}
    assert json.loads(json.dumps(body, allow_nan=False)) == body


def test_integer_speed_is_sent_as_a_number() -> None:
    body = build_accept_body(validate_session_config({"audio": {"output": {"speed": 1}}}))
    assert body["audio"]["output"]["speed"] == 1.0


@pytest.mark.parametrize("sample", [*SAMPLES, *(set_path({}, p, None) for p in NULL_LEFT_OUT)])
def test_body_round_trips(sample: dict[str, Any]) -> None:
    config = validate_session_config(sample)
    body = build_accept_body(config)
    assert body.pop("type") == "realtime"
    again = validate_session_config(body)
    assert again == config
    assert build_accept_body(again) == {"type": "realtime", **body}


# --- function tool warnings ------------------------------------------------------------------


def test_function_tools_are_warned_about_one_by_one() -> None:
    config = validate_session_config(
        {"tools": [{"type": "function", "name": "lookup_order"}, MCP, {"description": "x"}]}
    )
    assert function_tool_warnings(config) == [
        "tool 'lookup_order' is a function tool: OpenAI cannot run it and sip-router does not"
        " answer function calls (it needs a program on the call's sideband WebSocket); use an"
        " MCP tool or make sure such a program is connected",
        "tool at tools[2] is a function tool: OpenAI cannot run it and sip-router does not"
        " answer function calls (it needs a program on the call's sideband WebSocket); use an"
        " MCP tool or make sure such a program is connected",
    ]


@pytest.mark.parametrize("data", [{}, {"tools": []}, {"tools": [MCP]}])
def test_no_function_tools_no_warnings(data: dict[str, Any]) -> None:
    assert function_tool_warnings(validate_session_config(data)) == []


# --- schemas ---------------------------------------------------------------------------------


def test_json_schema_describes_the_profile_fields() -> None:
    schema = accept_body_json_schema()
    assert schema["additionalProperties"] is False
    assert "type" not in schema["properties"]
    assert set(schema["properties"]) == set(FULL)
    audio_output = schema["$defs"]["AudioOutput"]
    assert "format" not in audio_output["properties"]
    assert audio_output["properties"]["speed"] == {
        "anyOf": [{"maximum": 1.5, "minimum": 0.25, "type": "number"}, {"type": "null"}],
        "default": None,
        "title": "Speed",
    }
    assert {"type": "null"} in schema["$defs"]["AudioInput"]["properties"]["turn_detection"][
        "anyOf"
    ]


def test_json_schema_agrees_with_the_models() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(accept_body_json_schema())
    for sample in [*SAMPLES, *(set_path({}, p, None) for p in NULL_LEFT_OUT)]:
        validator.validate(sample)
    for data in [
        {"type": "realtime"},
        {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        {"audio": {"output": {"speed": 2}}},
        {"audio": {"output": {"voice": ""}}},
        {"max_output_tokens": 0},
        {"tools": [{"type": "mcp", "server_label": "x", "bogus": 1}]},
    ]:
        assert not validator.is_valid(data), data


def closed_objects(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to other keys."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: closed_objects(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def test_bodies_validate_against_the_published_openapi_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    document = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    operation = document["paths"]["/realtime/calls/{call_id}/accept"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    # Closed objects: a key the published schema does not list would be an extra key.
    root = {**closed_objects(request), "components": closed_objects(document["components"])}
    validator = jsonschema.Draft202012Validator(root)
    for sample in SAMPLES:
        body = build_accept_body(validate_session_config(sample))
        problems = [error.message for error in validator.iter_errors(body)]
        assert problems == [], (sample, problems)
    assert not validator.is_valid({"model": "gpt-realtime"})
    assert not validator.is_valid({"type": "realtime", "modell": "gpt-realtime"})


# --- every key of the published schema can be said -----------------------------------------

# What a profile may not say on purpose: sip-router adds `type`; on SIP the trunk
# negotiates the codec.
NOT_EXPRESSIBLE = (("type",), ("audio", "input", "format"), ("audio", "output", "format"))


class SchemaShape:
    """Every property path a JSON Schema describes, with the strings it allows there.

    Paths are tuples of names; "[]" stands for a list item and "{}" for a mapping value.
    """

    def __init__(self, root: Any, resolve: Any) -> None:
        self.paths: set[tuple[str, ...]] = set()
        self.enums: dict[tuple[str, ...], set[Any]] = {}
        self.free_strings: set[tuple[str, ...]] = set()
        self._resolve = resolve
        self._seen: set[tuple[str, tuple[str, ...]]] = set()
        self._walk(root, ())

    def _walk(self, node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            key = (node["$ref"], path)
            if key not in self._seen:
                self._seen.add(key)
                self._walk(self._resolve(node["$ref"]), path)
        for keyword in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(keyword, ()):
                # Variants told apart by `type` keep their own keys: "tools.[].<mcp>.tunnel_id".
                tag = self._tag(branch)
                self._walk(branch, (*path, f"<{tag}>") if tag else path)
        if "enum" in node:
            self.enums.setdefault(path, set()).update(node["enum"])
        if "const" in node:
            self.enums.setdefault(path, set()).add(node["const"])
        if node.get("type") == "string" and "enum" not in node and "const" not in node:
            self.free_strings.add(path)
        for name, sub in node.get("properties", {}).items():
            self.paths.add((*path, name))
            self._walk(sub, (*path, name))
        if isinstance(node.get("items"), dict):
            self._walk(node["items"], (*path, "[]"))
        if isinstance(node.get("additionalProperties"), dict):
            self._walk(node["additionalProperties"], (*path, "{}"))

    def _tag(self, node: Any) -> str | None:
        while isinstance(node, dict) and "$ref" in node:
            node = self._resolve(node["$ref"])
        kind = node.get("properties", {}).get("type") if isinstance(node, dict) else None
        for option in [kind, *(kind or {}).get("anyOf", ())]:
            if isinstance(option, dict) and "const" in option:
                return str(option["const"])
            if isinstance(option, dict) and len(option.get("enum", ())) == 1:
                return str(option["enum"][0])
        return None

    def allows_string(self, path: tuple[str, ...], value: str) -> bool:
        return path in self.free_strings or value in self.enums.get(path, set())


def published_accept_shape() -> SchemaShape:
    document = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    operation = document["paths"]["/realtime/calls/{call_id}/accept"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]

    def resolve(ref: str) -> Any:
        return document["components"]["schemas"][ref.removeprefix("#/components/schemas/")]

    return SchemaShape(request, resolve)


def profile_shape() -> SchemaShape:
    schema = accept_body_json_schema()
    return SchemaShape(schema, lambda ref: schema["$defs"][ref.removeprefix("#/$defs/")])


def expressible(path: tuple[str, ...]) -> bool:
    return not any(path[: len(refused)] == refused for refused in NOT_EXPRESSIBLE)


def test_every_key_of_the_published_accept_schema_is_expressible() -> None:
    published, ours = published_accept_shape(), profile_shape()
    missing = sorted(".".join(path) for path in published.paths - ours.paths if expressible(path))
    assert missing == [], f"keys of the published accept schema a profile cannot say: {missing}"


def test_every_value_the_published_accept_schema_lists_is_allowed() -> None:
    published, ours = published_accept_shape(), profile_shape()
    refused = sorted(
        f"{'.'.join(path)}={value}"
        for path, values in published.enums.items()
        if expressible(path)
        for value in values
        if isinstance(value, str) and not ours.allows_string(path, value)
    )
    refused += sorted(
        f"{'.'.join(path)}=<any string>"
        for path in published.free_strings - ours.free_strings
        if expressible(path)
    )
    assert refused == [], f"values of the published accept schema a profile cannot say: {refused}"


def test_the_schema_walk_sees_a_missing_key() -> None:
    # The check above would fail on a key the models do not take.
    published = published_accept_shape()
    assert ("reasoning", "effort") in published.paths
    assert ("tools", "[]", "<mcp>", "tunnel_id") in published.paths
    assert ("prompt", "variables", "{}", "<input_file>", "detail") in published.paths
    assert "xhigh" in published.enums[("reasoning", "effort")]
