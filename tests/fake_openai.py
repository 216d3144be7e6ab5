"""A strict fake of OpenAI's four Realtime call endpoints (accept, reject, refer, hangup),
and the same four of GPT-Live sessions (`/v1/live/sessions/{session_id}/...`).

One core checks, records and answers every request; it is served in process through
`FakeOpenAI.mock_transport()` and over real sockets through `FakeOpenAI.serve_on_loopback()`.
Served on loopback it also has the call's sideband WebSocket (`/v1/realtime?call_id=`):
it validates every client event against OpenAI's published event schemas and acts like
the agent as scripted per call (`FakeOpenAI.script_sideband`).
One SIP call may be announced on both APIs with two ids (`FakeOpenAI.same_call`): the first
decision (accept, reject, or refer before an accept) through either id takes it, and any
later one answers `decision_already_made`.
`python -m tests.fake_openai --port 9001 --record-file PATH` serves it for benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import jsonschema.exceptions
import uvicorn

from tests.loopback_service import listening_socket, running_server

VERBS = ("accept", "reject", "refer", "hangup")
ROUTE_PREFIX = "/v1/realtime/calls/"
# The answer to a decision on a call that is already decided (any id of the SIP call).
ALREADY_DECIDED_STATUS = 409
MOCK_BASE_URL = "http://fake-openai/v1"

# The request body schemas of accept, reject and refer as published in OpenAI's OpenAPI
# document (github.com/openai/openai-openapi @ f85dbe223d40e1a31cba812ab2d755c7e98a92a3),
# with annotations (descriptions, titles, examples, defaults) removed; a published
# `default: null` is kept as `nullable`. `_closed` tightens them before use.
_PUBLISHED_DEFS: dict[str, Any] = {
    "AudioTranscription": {
        "type": "object",
        "properties": {
            "model": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "string",
                        "enum": [
                            "whisper-1",
                            "gpt-transcribe",
                            "gpt-live-transcribe",
                            "gpt-4o-mini-transcribe",
                            "gpt-4o-mini-transcribe-2025-12-15",
                            "gpt-4o-transcribe",
                            "gpt-4o-transcribe-diarize",
                            "gpt-realtime-whisper",
                        ],
                    },
                ]
            },
            "language": {"type": "string"},
            "languages": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "keywords": {"type": "array", "items": {"type": "string"}},
            "prompt": {"type": "string"},
            "delay": {"type": "string", "enum": ["minimal", "low", "medium", "high", "xhigh"]},
        },
    },
    "CallableToolAllowedCaller": {"type": "string", "enum": ["direct", "programmatic"]},
    "FileInputDetail": {"type": "string", "enum": ["auto", "low", "high"]},
    "ImageDetail": {"type": "string", "enum": ["low", "high", "auto", "original"]},
    "InputFileContent": {
        "properties": {
            "type": {"type": "string", "enum": ["input_file"]},
            "file_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "filename": {"type": "string"},
            "file_data": {"type": "string"},
            "prompt_cache_breakpoint": {"$ref": "#/$defs/PromptCacheBreakpointConfig"},
            "file_url": {"type": "string", "format": "uri"},
            "detail": {"$ref": "#/$defs/FileInputDetail"},
        },
        "type": "object",
        "required": ["type"],
    },
    "InputImageContent": {
        "properties": {
            "type": {"type": "string", "enum": ["input_image"]},
            "image_url": {"anyOf": [{"type": "string", "format": "uri"}, {"type": "null"}]},
            "file_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "detail": {"$ref": "#/$defs/ImageDetail"},
            "prompt_cache_breakpoint": {"$ref": "#/$defs/PromptCacheBreakpointConfig"},
        },
        "type": "object",
        "required": ["type", "detail"],
    },
    "InputTextContent": {
        "properties": {
            "type": {"type": "string", "enum": ["input_text"]},
            "text": {"type": "string"},
            "prompt_cache_breakpoint": {"$ref": "#/$defs/PromptCacheBreakpointConfig"},
        },
        "type": "object",
        "required": ["type", "text"],
    },
    "MCPTool": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["mcp"]},
            "server_label": {"type": "string"},
            "server_url": {"type": "string", "format": "uri"},
            "connector_id": {
                "type": "string",
                "enum": [
                    "connector_dropbox",
                    "connector_gmail",
                    "connector_googlecalendar",
                    "connector_googledrive",
                    "connector_microsoftteams",
                    "connector_outlookcalendar",
                    "connector_outlookemail",
                    "connector_sharepoint",
                ],
            },
            "tunnel_id": {"type": "string", "pattern": "^tunnel_[a-z0-9]{32}$"},
            "authorization": {"type": "string"},
            "server_description": {"type": "string"},
            "headers": {
                "anyOf": [
                    {"type": "object", "additionalProperties": {"type": "string"}},
                    {"type": "null"},
                ]
            },
            "allowed_tools": {
                "anyOf": [
                    {
                        "oneOf": [
                            {"type": "array", "items": {"type": "string"}},
                            {"$ref": "#/$defs/MCPToolFilter"},
                        ]
                    },
                    {"type": "null"},
                ]
            },
            "allowed_callers": {
                "anyOf": [
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/$defs/CallableToolAllowedCaller"},
                    },
                    {"type": "null"},
                ]
            },
            "require_approval": {
                "anyOf": [
                    {
                        "oneOf": [
                            {
                                "type": "object",
                                "properties": {
                                    "always": {"$ref": "#/$defs/MCPToolFilter"},
                                    "never": {"$ref": "#/$defs/MCPToolFilter"},
                                },
                                "additionalProperties": False,
                            },
                            {"type": "string", "enum": ["always", "never"]},
                        ]
                    },
                    {"type": "null"},
                ]
            },
            "defer_loading": {"type": "boolean"},
        },
        "required": ["type", "server_label"],
    },
    "MCPToolFilter": {
        "type": "object",
        "properties": {
            "tool_names": {"type": "array", "items": {"type": "string"}},
            "read_only": {"type": "boolean"},
        },
        "required": [],
        "additionalProperties": False,
    },
    "NoiseReductionType": {"type": "string", "enum": ["near_field", "far_field"]},
    "Prompt": {
        "anyOf": [
            {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {"type": "string"},
                    "version": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "variables": {"$ref": "#/$defs/ResponsePromptVariables"},
                },
            },
            {"type": "null"},
        ]
    },
    "PromptCacheBreakpointConfig": {
        "properties": {"mode": {"type": "string", "enum": ["explicit"]}},
        "type": "object",
        "required": ["mode"],
    },
    "RealtimeAudioFormats": {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["audio/pcm"]},
                    "rate": {"type": "integer", "enum": [24000]},
                },
            },
            {"type": "object", "properties": {"type": {"type": "string", "enum": ["audio/pcmu"]}}},
            {"type": "object", "properties": {"type": {"type": "string", "enum": ["audio/pcma"]}}},
        ]
    },
    "RealtimeCallReferRequest": {
        "type": "object",
        "required": ["target_uri"],
        "properties": {"target_uri": {"type": "string"}},
        "additionalProperties": False,
    },
    "RealtimeCallRejectRequest": {
        "type": "object",
        "properties": {"status_code": {"type": "integer"}},
        "additionalProperties": False,
    },
    "RealtimeFunctionTool": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "parameters": {"type": "object"},
        },
    },
    "RealtimeReasoning": {
        "type": "object",
        "properties": {"effort": {"$ref": "#/$defs/RealtimeReasoningEffort"}},
    },
    "RealtimeReasoningEffort": {
        "type": "string",
        "enum": ["minimal", "low", "medium", "high", "xhigh"],
    },
    "RealtimeSessionCreateRequestGA": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["realtime"]},
            "output_modalities": {
                "type": "array",
                "items": {"type": "string", "enum": ["text", "audio"]},
            },
            "model": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "string",
                        "enum": [
                            "gpt-realtime",
                            "gpt-realtime-1.5",
                            "gpt-realtime-2",
                            "gpt-realtime-2.1",
                            "gpt-realtime-2.1-mini",
                            "gpt-realtime-2025-08-28",
                            "gpt-4o-realtime-preview",
                            "gpt-4o-realtime-preview-2024-10-01",
                            "gpt-4o-realtime-preview-2024-12-17",
                            "gpt-4o-realtime-preview-2025-06-03",
                            "gpt-4o-mini-realtime-preview",
                            "gpt-4o-mini-realtime-preview-2024-12-17",
                            "gpt-realtime-mini",
                            "gpt-realtime-mini-2025-10-06",
                            "gpt-realtime-mini-2025-12-15",
                            "gpt-audio-1.5",
                            "gpt-audio-mini",
                            "gpt-audio-mini-2025-10-06",
                            "gpt-audio-mini-2025-12-15",
                        ],
                    },
                ]
            },
            "instructions": {"type": "string"},
            "audio": {
                "type": "object",
                "properties": {
                    "input": {
                        "type": "object",
                        "properties": {
                            "format": {"$ref": "#/$defs/RealtimeAudioFormats"},
                            "transcription": {"$ref": "#/$defs/AudioTranscription"},
                            "noise_reduction": {
                                "type": "object",
                                "nullable": True,
                                "properties": {"type": {"$ref": "#/$defs/NoiseReductionType"}},
                            },
                            "turn_detection": {"$ref": "#/$defs/RealtimeTurnDetection"},
                        },
                    },
                    "output": {
                        "type": "object",
                        "properties": {
                            "format": {"$ref": "#/$defs/RealtimeAudioFormats"},
                            "voice": {"$ref": "#/$defs/VoiceIdsOrCustomVoice"},
                            "speed": {"type": "number", "maximum": 1.5, "minimum": 0.25},
                        },
                    },
                },
            },
            "include": {
                "type": "array",
                "items": {"type": "string", "enum": ["item.input_audio_transcription.logprobs"]},
            },
            "tracing": {
                "nullable": True,
                "oneOf": [
                    {"type": "string", "enum": ["auto"]},
                    {
                        "type": "object",
                        "properties": {
                            "workflow_name": {"type": "string"},
                            "group_id": {"type": "string"},
                            "metadata": {"type": "object"},
                        },
                    },
                ],
            },
            "tools": {
                "type": "array",
                "items": {
                    "oneOf": [{"$ref": "#/$defs/RealtimeFunctionTool"}, {"$ref": "#/$defs/MCPTool"}]
                },
            },
            "tool_choice": {
                "oneOf": [
                    {"$ref": "#/$defs/ToolChoiceOptions"},
                    {"$ref": "#/$defs/ToolChoiceFunction"},
                    {"$ref": "#/$defs/ToolChoiceMCP"},
                ]
            },
            "parallel_tool_calls": {"type": "boolean"},
            "reasoning": {"$ref": "#/$defs/RealtimeReasoning"},
            "max_output_tokens": {
                "oneOf": [{"type": "integer"}, {"type": "string", "enum": ["inf"]}]
            },
            "truncation": {"$ref": "#/$defs/RealtimeTruncation"},
            "prompt": {"$ref": "#/$defs/Prompt"},
        },
        "required": ["type"],
    },
    "RealtimeTruncation": {
        "oneOf": [
            {"type": "string", "enum": ["auto", "disabled"]},
            {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["retention_ratio"]},
                    "retention_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                    "token_limits": {
                        "type": "object",
                        "properties": {"post_instructions": {"type": "integer", "minimum": 0}},
                    },
                },
                "required": ["type", "retention_ratio"],
            },
        ]
    },
    "RealtimeTurnDetection": {
        "anyOf": [
            {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"type": "string", "const": "server_vad"},
                            "threshold": {"type": "number"},
                            "prefix_padding_ms": {"type": "integer"},
                            "silence_duration_ms": {"type": "integer"},
                            "create_response": {"type": "boolean"},
                            "interrupt_response": {"type": "boolean"},
                            "idle_timeout_ms": {
                                "anyOf": [
                                    {"type": "integer", "minimum": 5000, "maximum": 30000},
                                    {"type": "null"},
                                ]
                            },
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"type": "string", "const": "semantic_vad"},
                            "eagerness": {
                                "type": "string",
                                "enum": ["low", "medium", "high", "auto"],
                            },
                            "create_response": {"type": "boolean"},
                            "interrupt_response": {"type": "boolean"},
                        },
                    },
                ]
            },
            {"type": "null"},
        ]
    },
    "ResponsePromptVariables": {
        "anyOf": [
            {
                "type": "object",
                "additionalProperties": {
                    "oneOf": [
                        {"type": "string"},
                        {"$ref": "#/$defs/InputTextContent"},
                        {"$ref": "#/$defs/InputImageContent"},
                        {"$ref": "#/$defs/InputFileContent"},
                    ]
                },
            },
            {"type": "null"},
        ]
    },
    "ToolChoiceFunction": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "name": {"type": "string"},
        },
        "required": ["type", "name"],
    },
    "ToolChoiceMCP": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["mcp"]},
            "server_label": {"type": "string"},
            "name": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["type", "server_label"],
    },
    "ToolChoiceOptions": {"type": "string", "enum": ["none", "auto", "required"]},
    "VoiceIdsOrCustomVoice": {
        "anyOf": [
            {"$ref": "#/$defs/VoiceIdsShared"},
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["id"],
                "properties": {"id": {"type": "string"}},
            },
        ]
    },
    "VoiceIdsShared": {
        "anyOf": [
            {"type": "string"},
            {
                "type": "string",
                "enum": [
                    "alloy",
                    "ash",
                    "ballad",
                    "coral",
                    "echo",
                    "sage",
                    "shimmer",
                    "verse",
                    "marin",
                    "cedar",
                ],
            },
        ]
    },
}


def _closed(node: Any) -> Any:
    """Copy of a schema where objects with declared properties accept no other key.

    OpenAI rejects unknown parameters even where the published schema leaves objects
    open, and a published-nullable schema also accepts null.
    """
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "nullable":
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _closed(schema) for name, schema in value.items()}
        elif key in ("enum", "const", "required"):
            out[key] = value
        else:
            out[key] = _closed(value)
    if "properties" in node:
        out.setdefault("additionalProperties", False)
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _request_schema(name: str) -> dict[str, Any]:
    return {"$defs": _closed(_PUBLISHED_DEFS), "$ref": f"#/$defs/{name}"}


REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {
    "accept": _request_schema("RealtimeSessionCreateRequestGA"),
    "reject": _request_schema("RealtimeCallRejectRequest"),
    "refer": _request_schema("RealtimeCallReferRequest"),
    # hangup takes no body; an empty JSON object is tolerated.
    "hangup": {"type": "object", "properties": {}, "additionalProperties": False},
}
_VALIDATORS = {verb: jsonschema.Draft202012Validator(s) for verb, s in REQUEST_SCHEMAS.items()}
_BODY_REQUIRED = frozenset({"accept", "refer"})

# GPT-Live's request bodies as documented (reference/gpt-live-sip.md section 4): accept takes
# exactly `{"session": LiveCallAcceptSession}`, with `additionalProperties: false` throughout.
_LIVE_TEXT_PART = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "text"],
    "properties": {"type": {"enum": ["input_text"]}, "text": {"type": "string"}},
}
_LIVE_OUTPUT_PART = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "text"],
    "properties": {"type": {"enum": ["text", "output_text"]}, "text": {"type": "string"}},
}


def _live_message(roles: list[str], part: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["role", "content"],
        "properties": {
            "type": {"enum": ["message"]},
            "role": {"enum": roles},
            "content": {"type": "array", "minItems": 1, "maxItems": 1, "items": part},
            "id": {"type": "string"},
            "status": {"enum": ["incomplete", "completed"]},
        },
    }


_LIVE_FUNCTION_TOOL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "name"],
    "properties": {
        "type": {"enum": ["function"]},
        "name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]+$", "maxLength": 64},
        "description": {"type": "string"},
        "parameters": {"type": "object"},
        "strict": {"type": "boolean"},
    },
}
_LIVE_RESPONSES = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "instructions": {"type": ["string", "null"]},
        "max_output_tokens": {"anyOf": [{"type": "integer", "minimum": 16}, {"type": "null"}]},
        "service_tier": {
            "enum": [
                *("auto", "default", "fast_tier_temp_pilot", "flex", "priority", "ultrafast"),
                None,
            ]
        },
        "reasoning": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "effort": {"enum": ["none", "minimal", "low", "medium", "high", "xhigh"]},
                "summary": {"enum": ["concise", "detailed", "auto"]},
            },
        },
        "text": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"verbosity": {"enum": ["low", "medium", "high"]}},
        },
        "tools": {
            "type": "array",
            "items": {
                "anyOf": [
                    _LIVE_FUNCTION_TOOL,
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type"],
                        "properties": {"type": {"enum": ["web_search"]}},
                    },
                ]
            },
        },
        "tool_choice": {
            "anyOf": [
                {"enum": ["auto", "none", "required"]},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "name"],
                    "properties": {"type": {"enum": ["function"]}, "name": {"type": "string"}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "server_label", "name"],
                    "properties": {
                        "type": {"enum": ["mcp"]},
                        "server_label": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
            ]
        },
        "parallel_tool_calls": {"type": ["boolean", "null"]},
    },
}
_LIVE_SESSION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "model"],
    "properties": {
        "type": {"enum": ["live"]},
        "model": {"type": "string", "minLength": 1},
        "instructions": {"type": ["string", "null"]},
        "audio": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "output": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "voice": {
                            "anyOf": [
                                {"type": "string"},
                                {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["id"],
                                    "properties": {
                                        "id": {"type": "string", "minLength": 1, "maxLength": 128}
                                    },
                                },
                            ]
                        }
                    },
                }
            },
        },
        "delegation": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type"],
                    "properties": {"type": {"enum": ["client"]}},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type", "responses"],
                    "properties": {"type": {"enum": ["responses"]}, "responses": _LIVE_RESPONSES},
                },
            ]
        },
        "store": {"type": "boolean"},
        "input": {
            "type": "array",
            "maxItems": 128,
            "items": {
                "anyOf": [
                    _live_message(["developer", "user"], _LIVE_TEXT_PART),
                    _live_message(["assistant"], _LIVE_OUTPUT_PART),
                ]
            },
        },
    },
}
LIVE_REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {
    "accept": {
        "type": "object",
        "additionalProperties": False,
        "required": ["session"],
        "properties": {"session": _LIVE_SESSION},
    },
    # No default status: it is always sent, 300 to 699.
    "reject": {
        "type": "object",
        "additionalProperties": False,
        "required": ["status_code"],
        "properties": {"status_code": {"type": "integer", "minimum": 300, "maximum": 699}},
    },
    "refer": {
        "type": "object",
        "additionalProperties": False,
        "required": ["target_uri"],
        "properties": {"target_uri": {"type": "string", "minLength": 1, "pattern": r"\S"}},
    },
    "hangup": {"type": "object", "properties": {}, "additionalProperties": False},
}
_LIVE_VALIDATORS = {
    verb: jsonschema.Draft202012Validator(s) for verb, s in LIVE_REQUEST_SCHEMAS.items()
}
_LIVE_BODY_REQUIRED = frozenset({"accept", "reject", "refer"})
_SIP_SCHEMES = ("tel:", "sip:", "sips:")


@dataclass(frozen=True)
class Respond:
    """Answer with `status`; a non-2xx answer carries an OpenAI-shaped error body."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None
    param: str | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without any answer.

    `applied` says whether the upstream carried the action out before the connection
    was lost (an accept that took effect makes the call active).
    """

    applied: bool = True


@dataclass(frozen=True)
class Delay:
    """Wait `seconds` (a slow upstream), then answer as `then` says."""

    seconds: float
    then: Respond | Drop = field(default_factory=Respond)


Behaviour = Respond | Delay | Drop


# --- the sideband: what the agent does, and what the client sent ---------------------------


@dataclass(frozen=True)
class Emit:
    """Send one server event; a string is sent as it is (malformed events, for tests)."""

    event: dict[str, Any] | str


@dataclass(frozen=True)
class AgentCallsFunction:
    """The agent calls a function: `response.function_call_arguments.done`, then
    `response.done` with the function call item; a string `arguments` is sent unchanged."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    call_id: str = field(default_factory=lambda: "call_" + secrets.token_hex(8))


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class AwaitClient:
    """Wait until the client has sent `count` events of `type` on this call (any connection)."""

    type: str
    count: int = 1
    timeout_s: float = 5.0


@dataclass(frozen=True)
class HangUp:
    """The caller hangs up: the call ends and the server closes the socket (code 1000)."""


@dataclass(frozen=True)
class CloseSession:
    """GPT-Live: the session ends with `reason` (`session.closed`), then the socket closes.

    On a Realtime sideband it is a HangUp.
    """

    reason: str = "remote_hangup"


@dataclass(frozen=True)
class DropConnection:
    """The connection is lost without a close frame; the call goes on."""


AgentStep = Emit | AgentCallsFunction | Pause | AwaitClient | HangUp | CloseSession | DropConnection


@dataclass(frozen=True)
class ClientEvent:
    """One message a client sent on a sideband, with the verdict of the schema check."""

    call_id: str
    connection: int
    text: str
    event: dict[str, Any] | None
    problems: list[str]
    received_at: float


@dataclass(frozen=True)
class SidebandAttempt:
    """One connection attempt: `status` 101 (accepted) or the HTTP status it was refused with."""

    call_id: str
    status: int
    authorization: str | None


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it, with the verdict of its checks.

    `status` is the answer the fake gave (None: the connection was dropped).
    """

    verb: str
    call_id: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    received_at: float
    valid: bool
    problems: list[str]
    status: int | None = None
    # `realtime` (/realtime/calls/...) or `live` (/live/sessions/...).
    api: str = "realtime"


@dataclass(frozen=True)
class _Problem:
    """One failed check; `param` is the body parameter at fault, `where` any other place."""

    param: str | None
    message: str
    code: str | None = None
    where: str = "body"

    def __str__(self) -> str:
        return f"{self.param or self.where}: {self.message}"


@dataclass(frozen=True)
class _Outcome:
    delay: float
    final: Respond | Drop
    call_id: str


class FakeOpenAI:
    """OpenAI's call endpoints as a scriptable, recording fake.

    Responses scripted for a call are used first, then those scripted for any call, then
    `default` (200 with an empty body). Requests that fail a check never use the script.
    """

    def __init__(self, api_key: str = "sk-test", *, default: Behaviour | None = None) -> None:
        self.api_key = api_key
        self.default: Behaviour = default if default is not None else Respond()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._any_script: deque[Behaviour] = deque()
        self._calls: dict[str, str] = {}
        # Who waits for a call to leave `active` (its sideband's watcher), by call.
        self._call_watchers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        # Ids announcing one SIP call share a group; the id that decided each group.
        self._call_groups: dict[str, frozenset[str]] = {}
        self._decided_by: dict[frozenset[str], str] = {}
        self._sideband_scripts: dict[str, deque[Sequence[AgentStep]]] = {}
        self._client_events: list[ClientEvent] = []
        self._sideband_attempts: list[SidebandAttempt] = []
        self._script_errors: list[str] = []
        self._server_events: list[ServerEvent] = []
        # Seconds the agent "speaks" for each response.create before its audio stops.
        self.audio_s = 0.05

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a snapshot)."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, call_id: str) -> list[RecordedRequest]:
        """The requests received for `call_id`, oldest first."""
        return [r for r in self.requests if r.call_id == call_id]

    def verbs_for(self, call_id: str) -> list[str]:
        """The verbs received for `call_id`, in order (valid or not)."""
        return [r.verb for r in self.requests_for(call_id)]

    def script(self, call_id: str, *responses: Behaviour) -> None:
        """Queue answers for the next valid requests about `call_id`."""
        with self._lock:
            self._scripts.setdefault(call_id, deque()).extend(responses)

    def script_any(self, *responses: Behaviour) -> None:
        """Queue answers for the next valid requests about calls without their own script."""
        with self._lock:
            self._any_script.extend(responses)

    def mark_gone(self, call_id: str) -> None:
        """From now on every verb on `call_id` answers 404 call_id_not_found."""
        with self._lock:
            self._set_call_state_locked(call_id, "gone")

    def same_call(self, *call_ids: str) -> None:
        """Say that these ids (a Realtime `rtc_...` and a Live `live_...`) announce one SIP
        call: after the first decision through one of them, every later decision (accept,
        reject, refer before an accept) through any of them answers `decision_already_made`."""
        with self._lock:
            group = frozenset(call_ids).union(
                *(self._call_groups.get(call_id, ()) for call_id in call_ids)
            )
            for call_id in group:
                self._call_groups[call_id] = group

    def decided_by(self, call_id: str) -> str | None:
        """The id through which `call_id`'s SIP call was decided, or None."""
        with self._lock:
            return self._decided_by.get(self._group_locked(call_id))

    def _group_locked(self, call_id: str) -> frozenset[str]:
        return self._call_groups.get(call_id, frozenset({call_id}))

    def call_state(self, call_id: str) -> str | None:
        """`active`, `ended`, `gone`, or None for a call that saw no successful action."""
        with self._lock:
            return self._calls.get(call_id)

    async def until_not_active(self, call_id: str) -> None:
        """Return once `call_id` is no longer an active call (woken by the change, from
        whichever thread makes it)."""
        loop = asyncio.get_running_loop()
        while True:
            watcher = (loop, asyncio.Event())
            with self._lock:
                if self._calls.get(call_id) != "active":
                    return
                self._call_watchers.setdefault(call_id, []).append(watcher)
            try:
                await watcher[1].wait()
            finally:  # a sideband that closed first leaves no watcher behind
                with self._lock, contextlib.suppress(KeyError, ValueError):
                    self._call_watchers[call_id].remove(watcher)

    def _set_call_state_locked(
        self, call_id: str, state: str, *, unless_known: bool = False
    ) -> None:
        if unless_known and call_id in self._calls:
            return
        self._calls[call_id] = state
        self._wake_watchers_locked(call_id)

    def _wake_watchers_locked(self, call_id: str) -> None:
        for loop, changed in self._call_watchers.pop(call_id, []):
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(changed.set)

    def reset(self) -> None:
        """Forget requests, scripts and call states (to share one server between tests)."""
        with self._lock:
            self._requests.clear()
            self._scripts.clear()
            self._any_script.clear()
            self._calls.clear()
            for call_id in list(self._call_watchers):
                self._wake_watchers_locked(call_id)
            self._call_groups.clear()
            self._decided_by.clear()
            self._sideband_scripts.clear()
            self._client_events.clear()
            self._sideband_attempts.clear()
            self._script_errors.clear()
            self._server_events.clear()

    def script_sideband(self, call_id: str, *connections: Sequence[AgentStep]) -> None:
        """What the agent does on each sideband connection of `call_id`, one list each.

        Without a script (or once it has run out) a connection answers `response.create`
        like the agent (created, audio started, then stopped after `audio_s`) until the
        client or the call ends it.
        """
        with self._lock:
            self._sideband_scripts.setdefault(call_id, deque()).extend(connections)

    @property
    def client_events(self) -> list[ClientEvent]:
        """Every event received on any sideband, oldest first."""
        with self._lock:
            return list(self._client_events)

    def client_events_for(self, call_id: str) -> list[dict[str, Any]]:
        """The events (parsed) the client sent on `call_id`'s sideband, in order."""
        return [e.event for e in self.client_events if e.call_id == call_id and e.event is not None]

    @property
    def sideband_problems(self) -> list[str]:
        """Why each invalid client event was invalid, and scripts that failed (keep it empty)."""
        with self._lock:
            script_errors = list(self._script_errors)
        return [f"{e.call_id}: {p}" for e in self.client_events for p in e.problems] + script_errors

    def sideband_attempts_for(self, call_id: str) -> list[SidebandAttempt]:
        with self._lock:
            return [a for a in self._sideband_attempts if a.call_id == call_id]

    def activate(self, call_id: str) -> None:
        """Make `call_id` an active call, as a successful accept would."""
        with self._lock:
            self._set_call_state_locked(call_id, "active")

    def _next_sideband_script(self, call_id: str) -> Sequence[AgentStep]:
        with self._lock:
            queue = self._sideband_scripts.get(call_id)
            return queue.popleft() if queue else ()

    def _record_client_event(self, event: ClientEvent) -> None:
        with self._lock:
            self._client_events.append(event)

    def _record_script_error(self, problem: str) -> None:
        with self._lock:
            self._script_errors.append(problem)

    def _record_attempt(self, attempt: SidebandAttempt) -> None:
        with self._lock:
            self._sideband_attempts.append(attempt)

    def server_events_for(self, call_id: str) -> list[ServerEvent]:
        """What `call_id`'s GPT-Live sidebands sent, oldest first."""
        with self._lock:
            return [e for e in self._server_events if e.call_id == call_id]

    def _record_server_event(self, event: ServerEvent) -> None:
        with self._lock:
            self._server_events.append(event)

    def write_record_file(self, path: Path) -> None:
        """Write every recorded request as a JSON line, with wall-clock arrival times."""
        offset = time.time() - time.monotonic()
        with path.open("w", encoding="utf-8") as out:
            for r in self.requests:
                line = {
                    "verb": r.verb,
                    "call_id": r.call_id,
                    "received_at": r.received_at + offset,
                    "valid": r.valid,
                    "status": r.status,
                    "problems": r.problems,
                }
                out.write(json.dumps(line) + "\n")

    def mock_transport(self) -> httpx.MockTransport:
        """An in-process transport; use with `base_url=MOCK_BASE_URL`.

        A Delay longer than the request's read timeout raises `httpx.ReadTimeout` after
        that timeout, as a real transport would; Drop raises `httpx.RemoteProtocolError`.
        """

        async def handle(request: httpx.Request) -> httpx.Response:
            body = await request.aread()
            # Repeated headers are joined with ", ", as on the loopback path.
            headers = {name: request.headers[name] for name in request.headers}
            outcome = self._handle(request.method, request.url.path, headers, body)
            if outcome.delay > 0:
                timeouts = request.extensions.get("timeout", {})
                read_timeout = timeouts.get("read")
                if read_timeout is not None and read_timeout < outcome.delay:
                    await asyncio.sleep(read_timeout)
                    raise httpx.ReadTimeout("The read operation timed out", request=request)
                await asyncio.sleep(outcome.delay)
            if isinstance(outcome.final, Drop):
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request
                )
            status, response_headers, content = _response_parts(outcome.final, outcome.call_id)
            return httpx.Response(status, headers=response_headers, content=content)

        return httpx.MockTransport(handle)

    @contextlib.contextmanager
    def serve_on_loopback(self, port: int = 0) -> Iterator[str]:
        """Serve on 127.0.0.1 in a background thread; yields the base URL (`.../v1`)."""
        server = _uvicorn_server(self, log_level=None)
        sock = listening_socket("127.0.0.1", port)
        with running_server(server, sock, name="fake-openai") as bound:
            yield f"http://127.0.0.1:{bound}/v1"

    def _handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> _Outcome:
        """Check and record one request, and decide its answer (the shared core)."""
        received_at = time.monotonic()
        api, verb, call_id, routed = _route(method, path)
        auth_problems = _check_auth(headers, self.api_key)
        parsed, body_problems = _check_body(verb, headers, body, api) if routed else (None, [])
        delay = 0.0
        final: Respond | Drop
        with self._lock:
            if auth_problems:
                first = auth_problems[0]
                final = Respond(401, code=first.code, message=first.message)
            elif not routed:
                final = Respond(404, message=f"Invalid URL ({method} {path})")
            elif body_problems:
                first = body_problems[0]
                final = Respond(400, code=first.code, message=first.message, param=first.param)
            else:
                delay, final = self._next_answer_locked(verb, call_id, api)
            problems = [*auth_problems, *body_problems]
            if not routed:
                problems.append(_Problem(None, "no such endpoint", where=f"{method} {path}"))
            self._requests.append(
                RecordedRequest(
                    verb=verb,
                    call_id=call_id,
                    body=parsed,
                    headers=dict(headers),
                    received_at=received_at,
                    valid=not problems,
                    problems=[str(p) for p in problems],
                    status=final.status if isinstance(final, Respond) else None,
                    api=api,
                )
            )
        return _Outcome(delay, final, call_id)

    def _next_answer_locked(
        self, verb: str, call_id: str, api: str = "realtime"
    ) -> tuple[float, Respond | Drop]:
        state = self._calls.get(call_id)
        if state == "gone":
            return 0.0, Respond(404, code="call_id_not_found")
        group = self._group_locked(call_id)
        decides = verb in ("accept", "reject") or (verb == "refer" and state != "active")
        decided_by = self._decided_by.get(group)
        # Another id of the SIP call decided it; a Live session also refuses a second
        # decision through its own id (a Realtime call answers a copy as before).
        if decides and decided_by is not None and (decided_by != call_id or api == "live"):
            return 0.0, Respond(
                ALREADY_DECIDED_STATUS,
                code="decision_already_made",
                message="A decision has already been made for this call.",
            )
        queue = self._scripts.get(call_id)
        if queue:
            behaviour = queue.popleft()
        elif self._any_script:
            behaviour = self._any_script.popleft()
        else:
            behaviour = self.default
        delay, final = (
            (behaviour.seconds, behaviour.then)
            if isinstance(behaviour, Delay)
            else (0.0, behaviour)
        )
        took_effect = final.applied if isinstance(final, Drop) else 200 <= final.status < 300
        if not took_effect:
            return delay, final
        # The effect happens on arrival: a slow or lost answer does not undo the action.
        if decides:
            self._decided_by.setdefault(group, call_id)
        if verb == "hangup":
            if state != "active":
                # A dropped hangup of a call that is not up had no effect either way.
                not_found = Respond(404, code="call_id_not_found")
                return delay, not_found if isinstance(final, Respond) else final
            self._set_call_state_locked(call_id, "ended")
        elif verb == "accept":
            self._set_call_state_locked(call_id, "active", unless_known=True)
        elif verb == "reject":
            self._set_call_state_locked(call_id, "ended", unless_known=True)
        elif verb == "refer":
            self._set_call_state_locked(call_id, "ended")
        return delay, final


def _route(method: str, path: str) -> tuple[str, str, str, bool]:
    """(api, verb, call_id, whether this is one of the eight endpoints)."""
    if path.startswith(ROUTE_PREFIX):
        api, rest = "realtime", path[len(ROUTE_PREFIX) :]
    elif path.startswith(LIVE_SESSIONS_PREFIX):
        api, rest = "live", path[len(LIVE_SESSIONS_PREFIX) :]
    else:
        return "", "", "", False
    parts = rest.split("/")
    if len(parts) != 2:
        return "", "", "", False
    call_id, verb = parts
    return api, verb, call_id, bool(call_id) and verb in VERBS and method == "POST"


def _check_auth(headers: Mapping[str, str], api_key: str) -> list[_Problem]:
    value = headers.get("authorization")
    if value is None:
        return [
            _Problem(
                None,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                where="authorization",
            )
        ]
    if value != f"Bearer {api_key}":
        return [
            _Problem(None, "Incorrect API key provided.", "invalid_api_key", where="authorization")
        ]
    return []


def _check_body(
    verb: str, headers: Mapping[str, str], body: bytes, api: str = "realtime"
) -> tuple[dict[str, Any] | None, list[_Problem]]:
    """Parse and validate a request body; returns (parsed object or None, problems)."""
    live = api == "live"
    if not body:
        if verb in (_LIVE_BODY_REQUIRED if live else _BODY_REQUIRED):
            return None, _schema_problems(verb, {}, live=live)
        return None, []
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return None, [
            _Problem(
                None,
                f"Unsupported content type: {content_type or 'none'!r}; "
                "expected 'application/json'.",
                where="content-type",
            )
        ]
    try:
        parsed = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_object_without_duplicate_keys,
            parse_constant=_reject_non_json_constant,
        )
    except ValueError as exc:
        return None, [
            _Problem(
                None,
                "We could not parse the JSON body of your request. The OpenAI API expects "
                f"a JSON payload, but what was sent was not valid JSON ({exc}).",
            )
        ]
    if not isinstance(parsed, dict):
        return None, [_Problem(None, "The request body must be a JSON object.")]
    if live:
        return parsed, _schema_problems(verb, parsed, live=True)
    return parsed, [*_schema_problems(verb, parsed), *_semantic_problems(verb, parsed)]


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


def _reject_non_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _schema_problems(verb: str, body: dict[str, Any], *, live: bool = False) -> list[_Problem]:
    validator = (_LIVE_VALIDATORS if live else _VALIDATORS)[verb]
    errors = sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.path)))
    return [_problem_from_error(_most_specific(e)) for e in errors]


def _most_specific(error: jsonschema.exceptions.ValidationError) -> Any:
    """Descend anyOf/oneOf failures into the branch the value was evidently meant for.

    That is the branch whose `type` discriminator and JSON type matched, with the fewest
    errors, so an unknown key in a function tool is reported as such rather than as
    "not an MCP tool".
    """
    while error.context:
        branches: dict[Any, list[jsonschema.exceptions.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)

        def mismatch(errors: list[jsonschema.exceptions.ValidationError]) -> tuple[bool, bool, int]:
            wrong_kind = any(
                e.validator in ("enum", "const") and list(e.relative_path) == ["type"]
                for e in errors
            )
            wrong_type = any(e.validator == "type" and not e.relative_path for e in errors)
            return wrong_kind, wrong_type, len(errors)

        error = min(branches.values(), key=mismatch)[0]
    return error


def _problem_from_error(error: jsonschema.exceptions.ValidationError) -> _Problem:
    """An OpenAI-style message, param and code for one schema violation."""
    path = _dotted(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = next(key for key in instance if key not in known)
        param = _join(path, extra)
        return _Problem(param, f"Unknown parameter: '{param}'.", "unknown_parameter")
    if error.validator == "required" and isinstance(instance, dict):
        missing = next(key for key in error.validator_value if key not in instance)
        param = _join(path, missing)
        return _Problem(
            param, f"Missing required parameter: '{param}'.", "missing_required_parameter"
        )
    if error.validator == "type":
        return _Problem(
            path,
            f"Invalid type for '{path}': expected {error.validator_value}, "
            f"but got {_json_type(instance)} instead.",
            "invalid_type",
        )
    if error.validator in ("maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"):
        above = "aximum" in str(error.validator)
        integer = isinstance(error.schema, dict) and error.schema.get("type") == "integer"
        kind = "integer" if integer else "decimal"
        code = f"{kind}_{'above_max' if above else 'below_min'}_value"
        bound = "<=" if above else ">="
        return _Problem(
            path,
            f"Invalid '{path}': expected a value {bound} {error.validator_value}, "
            f"but got {instance} instead.",
            code,
        )
    return _Problem(path or None, f"Invalid value for '{path}': {error.message}", "invalid_value")


def _semantic_problems(verb: str, body: dict[str, Any]) -> list[_Problem]:
    """Checks beyond the schema: what a SIP call must not or cannot carry."""
    problems: list[_Problem] = []
    if verb == "accept" and isinstance(body.get("audio"), dict):
        for side in ("input", "output"):
            config = body["audio"].get(side)
            if isinstance(config, dict) and "format" in config:
                problems.append(
                    _Problem(
                        f"audio.{side}.format",
                        "must not be set when accepting a SIP call: the codec is "
                        "negotiated on the SIP leg.",
                        "invalid_value",
                    )
                )
    status_code = body.get("status_code")
    if verb == "reject" and type(status_code) is int and not 400 <= status_code <= 699:
        problems.append(
            _Problem(
                "status_code",
                f"{status_code} is not a SIP final failure status (400-699).",
                "invalid_value",
            )
        )
    target_uri = body.get("target_uri")
    if verb == "refer" and isinstance(target_uri, str):
        scheme = next((s for s in _SIP_SCHEMES if target_uri.lower().startswith(s)), None)
        if scheme is None or len(target_uri) == len(scheme):
            problems.append(
                _Problem(
                    "target_uri",
                    f"{target_uri!r} is not a tel:, sip: or sips: URI.",
                    "invalid_value",
                )
            )
    return problems


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", None),
    404: ("invalid_request_error", "Not found.", None),
    408: ("invalid_request_error", "Request timed out.", None),
    409: ("invalid_request_error", "Conflict.", None),
    429: ("requests", "Rate limit reached for requests.", "rate_limit_exceeded"),
    500: (
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
        None,
    ),
    502: ("server_error", "Bad gateway.", None),
    503: ("server_error", "The server is overloaded or not ready yet.", None),
}


def _response_parts(answer: Respond, call_id: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"x-request-id": f"req_{secrets.token_hex(16)}"}
    if 200 <= answer.status < 300:
        headers.update(answer.headers)
        return answer.status, headers, b""
    default_type, default_message, default_code = _DEFAULT_ERRORS.get(
        answer.status,
        ("server_error", "Server error.", None)
        if answer.status >= 500
        else ("invalid_request_error", "Invalid request.", None),
    )
    code = answer.code if answer.code is not None else default_code
    message = answer.message
    if message is None:
        message = f"Call '{call_id}' not found." if code == "call_id_not_found" else default_message
    error = {
        "message": message,
        "type": answer.error_type or default_type,
        "param": answer.param,
        "code": code,
    }
    headers["content-type"] = "application/json"
    headers.update(answer.headers)
    return answer.status, headers, json.dumps({"error": error}).encode()


# --- loopback server -------------------------------------------------------------------

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_Peer = tuple[str, int]


class _AsgiApp:
    """The fake as an ASGI app; `transports` maps client addresses to their connection."""

    def __init__(self, fake: FakeOpenAI, transports: dict[_Peer, asyncio.BaseTransport]) -> None:
        self._fake = fake
        self._transports = transports

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            sideband = (
                _FakeLiveSideband
                if str(scope["path"]).startswith(LIVE_SESSIONS_PREFIX)
                else _FakeSideband
            )
            await sideband(self._fake, self._transports, scope, receive, send).serve()
            return
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more_body = message.get("more_body", False)
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        outcome = self._fake._handle(scope["method"], scope["path"], headers, b"".join(chunks))
        if outcome.delay > 0 and await _disconnected_within(receive, outcome.delay):
            return
        if isinstance(outcome.final, Drop):
            transport = self._transports.get(tuple(scope["client"]))
            if transport is None:
                raise RuntimeError("Drop needs the connection registry of serve_on_loopback")
            transport.close()
            # Returning only once the server saw the disconnect keeps it from answering 500.
            await _until_disconnect(receive)
            return
        status, response_headers, content = _response_parts(outcome.final, outcome.call_id)
        raw_headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()
        ]
        raw_headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _disconnected_within(receive: Receive, seconds: float) -> bool:
    """Sleep `seconds`, returning early (True) if the client went away meanwhile."""
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        return watcher in done
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


# --- the sideband WebSocket ------------------------------------------------------------

SIDEBAND_PATH = "/v1/realtime"
EVENTS_SCHEMA_FILE = Path(__file__).parent / "data" / "openai-realtime-events.json"


def _closed_objects(node: Any) -> Any:
    """Objects that list their properties refuse any other key (a misspelt key is an error)."""
    if isinstance(node, list):
        return [_closed_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _closed_objects(value) for key, value in node.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


def _client_event_validators() -> dict[str, jsonschema.Draft202012Validator]:
    """One validator per client event type, from OpenAI's published event schemas."""
    defs = _closed_objects(json.loads(EVENTS_SCHEMA_FILE.read_text(encoding="utf-8"))["$defs"])
    validators: dict[str, jsonschema.Draft202012Validator] = {}
    for branch in defs["RealtimeClientEvent"]["anyOf"]:
        name = branch["$ref"].rsplit("/", 1)[1]
        event_type = defs[name]["properties"]["type"]["enum"][0]
        validators[event_type] = jsonschema.Draft202012Validator(
            {"$defs": defs, "$ref": f"#/$defs/{name}"}
        )
    return validators


_CLIENT_EVENT_VALIDATORS = _client_event_validators()


def client_event_problems(text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The event parsed from `text` and why it is not a valid client event (empty: valid)."""
    return _event_problems(text, _CLIENT_EVENT_VALIDATORS, "client event")


def _event_problems(
    text: str, validators: Mapping[str, jsonschema.Draft202012Validator], kind: str
) -> tuple[dict[str, Any] | None, list[str]]:
    """The event parsed from `text` and why `validators` refuse it (empty: valid)."""
    try:
        event = json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
    except ValueError as exc:
        return None, [f"not JSON: {exc}"]
    if not isinstance(event, dict):
        return None, ["not a JSON object"]
    validator = validators.get(event.get("type"))  # type: ignore[arg-type]
    if validator is None:
        return event, [f"unknown {kind} type {event.get('type')!r}"]
    problems = [
        f"{_dotted(list(error.absolute_path)) or '(event)'}: {error.message}"
        for error in validator.iter_errors(event)
    ]
    return event, problems


class _FakeSideband:
    """One sideband connection: checks the handshake, then plays the agent."""

    def __init__(
        self,
        fake: FakeOpenAI,
        transports: dict[_Peer, asyncio.BaseTransport],
        scope: MutableMapping[str, Any],
        receive: Receive,
        send: Send,
    ) -> None:
        self._fake = fake
        self._transports = transports
        self._scope = scope
        self._receive = receive
        self._send_raw = send
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._background: set[asyncio.Future[None]] = set()
        self.call_id = ""

    async def serve(self) -> None:
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._scope["headers"]
        }
        query = dict(
            part.split("=", 1)
            for part in self._scope.get("query_string", b"").decode().split("&")
            if "=" in part
        )
        self.call_id = call_id = self._call_id_of(self._scope["path"], query)
        authorization = headers.get("authorization")
        status = 101
        if not call_id:
            status = 404
        elif authorization != f"Bearer {self._fake.api_key}":
            status = 401
        elif self._fake.call_state(call_id) != "active":
            status = 404
        message = await self._receive()
        if message["type"] != "websocket.connect":
            return
        self._fake._record_attempt(SidebandAttempt(call_id, status, authorization))
        if status != 101:
            await self._deny(status)
            return
        await self._send_raw({"type": "websocket.accept"})
        connection = len(self._fake.sideband_attempts_for(call_id))
        await self._opened()
        script = self._fake._next_sideband_script(call_id)
        tasks = [
            asyncio.ensure_future(self._read(connection)),
            asyncio.ensure_future(self._play(script)),
            asyncio.ensure_future(self._watch_call_end()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks += self._background
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _call_id_of(self, path: str, query: Mapping[str, str]) -> str:
        """The call a handshake is for ("" for a path that is no sideband)."""
        return query.get("call_id", "") if path == SIDEBAND_PATH else ""

    async def _opened(self) -> None:
        await self._emit({"type": "session.created", "event_id": _event_id(), "session": {}})

    def _problems(self, text: str) -> tuple[dict[str, Any] | None, list[str]]:
        return client_event_problems(text)

    async def _deny(self, status: int) -> None:
        code = "call_id_not_found" if status == 404 else "invalid_api_key"
        body = json.dumps({"error": {"type": "invalid_request_error", "code": code}}).encode()
        await self._send_raw(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await self._send_raw({"type": "websocket.http.response.body", "body": body})

    async def _read(self, connection: int) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                self._closed = True
                return
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", "replace")
            event, problems = self._problems(text)
            self._fake._record_client_event(
                ClientEvent(self.call_id, connection, text, event, problems, time.monotonic())
            )
            if problems:
                # What OpenAI does with an invalid event: an error event, the session goes on.
                await self._emit(self._error_event(event, problems))
            elif event is not None:
                await self._answer(event)

    # How the API's error event names its code and the client event it refuses.
    ERROR_CODE = "invalid_event"
    ERROR_EVENT_ID_KEY = "event_id"

    def _error_event(self, event: dict[str, Any] | None, problems: list[str]) -> dict[str, Any]:
        return {
            "type": "error",
            "event_id": _event_id(),
            "error": {
                "type": "invalid_request_error",
                "code": self.ERROR_CODE,
                "message": "; ".join(problems)[:500],
                "param": None,
                self.ERROR_EVENT_ID_KEY: (event or {}).get("event_id"),
            },
        }

    async def _answer(self, event: dict[str, Any]) -> None:
        """What the agent does about a valid client event."""
        if event["type"] == "response.create":
            self._in_background(self._respond(event))

    def _in_background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _respond(self, event: dict[str, Any]) -> None:
        """Answer a response.create like the agent: created, audio started, then stopped."""
        response_id = f"resp_{secrets.token_hex(6)}"
        metadata = (event.get("response") or {}).get("metadata")
        response = {
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "output": [],
            "metadata": metadata,
        }
        await self._emit(
            {"type": "response.created", "event_id": _event_id(), "response": response}
        )
        await self._emit(
            {
                "type": "output_audio_buffer.started",
                "event_id": _event_id(),
                "response_id": response_id,
            }
        )
        await asyncio.sleep(self._fake.audio_s)
        done = {**response, "status": "completed"}
        await self._emit({"type": "response.done", "event_id": _event_id(), "response": done})
        await self._emit(
            {
                "type": "output_audio_buffer.stopped",
                "event_id": _event_id(),
                "response_id": response_id,
            }
        )

    async def _play(self, script: Sequence[AgentStep]) -> None:
        try:
            await self._play_steps(script)
        except Exception as exc:
            self._fake._record_script_error(f"{self.call_id}: script failed: {exc}")
            raise

    async def _play_steps(self, script: Sequence[AgentStep]) -> None:
        for step in script:
            if isinstance(step, Emit):
                await self._emit(step.event)
            elif isinstance(step, AgentCallsFunction):
                await self._function_call(step)
            elif isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, AwaitClient):
                await self._await_client(step)
            elif isinstance(step, HangUp | CloseSession):
                with self._fake._lock:
                    self._fake._set_call_state_locked(self.call_id, "ended")
                await self._hang_up(step)
                return
            elif isinstance(step, DropConnection):
                transport = self._transports.get(tuple(self._scope["client"]))
                if transport is None:
                    raise RuntimeError("DropConnection needs serve_on_loopback's registry")
                transport.abort()
                self._closed = True
                return
        # Out of script: keep answering until the client or the call ends the connection.
        await asyncio.Event().wait()

    async def _function_call(self, step: AgentCallsFunction) -> None:
        response_id = f"resp_{secrets.token_hex(6)}"
        arguments = (
            step.arguments if isinstance(step.arguments, str) else json.dumps(step.arguments)
        )
        item = {
            "id": f"item_{secrets.token_hex(6)}",
            "object": "realtime.item",
            "type": "function_call",
            "status": "completed",
            "call_id": step.call_id,
            "name": step.name,
            "arguments": arguments,
        }
        await self._emit(
            {
                "type": "response.function_call_arguments.done",
                "event_id": _event_id(),
                "response_id": response_id,
                "item_id": item["id"],
                "output_index": 0,
                "call_id": step.call_id,
                "name": step.name,
                "arguments": arguments,
            }
        )
        response = {
            "id": response_id,
            "object": "realtime.response",
            "status": "completed",
            "output": [item],
        }
        await self._emit({"type": "response.done", "event_id": _event_id(), "response": response})

    async def _hang_up(self, step: HangUp | CloseSession) -> None:
        await self._close(1000)

    async def _await_client(self, step: AwaitClient) -> None:
        deadline = time.monotonic() + step.timeout_s
        while time.monotonic() < deadline:
            seen = [
                e for e in self._fake.client_events_for(self.call_id) if e.get("type") == step.type
            ]
            if len(seen) >= step.count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the client did not send {step.count} {step.type} in time")

    async def _watch_call_end(self) -> None:
        """A refer or hangup that took effect ends the call: the server closes the socket."""
        await self._fake.until_not_active(self.call_id)
        await self._call_ended()

    async def _call_ended(self) -> None:
        await self._close(1000)

    async def _emit(self, event: dict[str, Any] | str) -> None:
        text = event if isinstance(event, str) else json.dumps(event)
        async with self._send_lock:
            if self._closed:
                return
            with contextlib.suppress(Exception):
                await self._send_raw({"type": "websocket.send", "text": text})

    async def _close(self, code: int) -> None:
        async with self._send_lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                await self._send_raw({"type": "websocket.close", "code": code})


# --- the GPT-Live sideband WebSocket -------------------------------------------------------
#
# `/v1/live/sessions/{session_id}/attach` (reference/gpt-live-sip.md section 5): the same
# bearer token, no first message, and another set of client events, checked here against
# the shapes of OpenAI's sideband reference (no published schema file exists for them).

LIVE_SESSIONS_PREFIX = "/v1/live/sessions/"
LIVE_ATTACH_SUFFIX = "/attach"
# How the agent's words arrive on a GPT-Live sideband while it "speaks".
LIVE_SPEECH_CHUNKS = 4
_OPTIONAL_EVENT_ID = {"event_id": {"type": "string", "minLength": 1}}


def _live_event(event_type: str, properties: Mapping[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"type": {"const": event_type}, **_OPTIONAL_EVENT_ID, **properties},
        "required": ["type", *required],
        "additionalProperties": False,
    }


_LIVE_APPEND = {
    "delegation_id": {"type": ["string", "null"]},
    "content": {"type": "string", "minLength": 1},
}
_LIVE_ITEM = {
    "type": "object",
    "properties": {"type": {"type": "string"}},
    "required": ["type"],
    # A function call's output is the item sip-router sends: exactly its three keys.
    "if": {"properties": {"type": {"const": "function_call_output"}}},
    "then": {
        "properties": {
            "type": {"const": "function_call_output"},
            "call_id": {"type": "string", "minLength": 1},
            "output": {"type": "string"},
        },
        "required": ["type", "call_id", "output"],
        "additionalProperties": False,
    },
}
_LIVE_SESSION_UPDATE = {
    "type": "object",
    "properties": {
        "delegation": {
            "type": "object",
            "properties": {"type": {"const": "responses"}, "responses": {"type": "object"}},
            "required": ["type", "responses"],
            "additionalProperties": False,
        }
    },
    "required": ["delegation"],
    "additionalProperties": False,
}
LIVE_CLIENT_EVENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "session.update": _live_event("session.update", {"session": _LIVE_SESSION_UPDATE}, "session"),
    "session.input_audio.mute": _live_event("session.input_audio.mute", {}),
    "session.input_audio.unmute": _live_event("session.input_audio.unmute", {}),
    **{
        name: _live_event(name, _LIVE_APPEND, "delegation_id", "content")
        for name in (
            "session.instructions.append",
            "session.thinking.append",
            "session.commentary.append",
        )
    },
    "response.item.create": _live_event("response.item.create", {"item": _LIVE_ITEM}, "item"),
    "response.create": _live_event("response.create", {}),
    "session.output_audio.fixture.play": _live_event(
        "session.output_audio.fixture.play", {"audio": {"type": "string", "minLength": 1}}, "audio"
    ),
    "session.close": _live_event("session.close", {}),
}
_LIVE_CLIENT_EVENT_VALIDATORS = {
    name: jsonschema.Draft202012Validator(schema)
    for name, schema in LIVE_CLIENT_EVENT_SCHEMAS.items()
}


def live_client_event_problems(text: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The event parsed from `text` and why it is not a valid GPT-Live sideband client event."""
    return _event_problems(text, _LIVE_CLIENT_EVENT_VALIDATORS, "GPT-Live client event")


@dataclass(frozen=True)
class ServerEvent:
    """One event a GPT-Live sideband of the fake sent, and when."""

    call_id: str
    event: dict[str, Any]
    sent_at: float


class _FakeLiveSideband(_FakeSideband):
    """One GPT-Live sideband connection: the same handshake checks, the Live protocol.

    The agent "speaks" (`session.output_transcript.delta` then `session.output_audio.delta`
    in chunks over `audio_s`) when told to begin (`session.commentary.append`) and when its
    delegation goes on (`response.create`); `session.close` and a hangup or refer that took
    effect end the session with `session.closed`.
    """

    def _call_id_of(self, path: str, query: Mapping[str, str]) -> str:
        if not path.startswith(LIVE_SESSIONS_PREFIX) or not path.endswith(LIVE_ATTACH_SUFFIX):
            return ""
        session_id = path[len(LIVE_SESSIONS_PREFIX) : -len(LIVE_ATTACH_SUFFIX)]
        return session_id if session_id and "/" not in session_id else ""

    async def _opened(self) -> None:
        """Attaching creates nothing and sends nothing first (no `session.started`)."""

    def _problems(self, text: str) -> tuple[dict[str, Any] | None, list[str]]:
        return live_client_event_problems(text)

    ERROR_CODE = "unknown_parameter"
    ERROR_EVENT_ID_KEY = "client_event_id"

    async def _answer(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind.endswith(".append"):
            now_ms = int(time.monotonic() * 1000)
            await self._emit(
                {
                    "type": kind[: -len("append")] + "appended",
                    "event_id": _event_id(),
                    "client_event_id": event.get("event_id"),
                    "start_ms": now_ms,
                    "end_ms": now_ms,
                }
            )
        if kind in ("session.commentary.append", "response.create"):
            self._in_background(self._speak())
        elif kind == "session.close":
            await self._end_session("close_requested")

    async def _speak(self) -> None:
        for index in range(LIVE_SPEECH_CHUNKS):
            start_ms = int(time.monotonic() * 1000)
            await self._emit(
                {
                    "type": "session.output_transcript.delta",
                    "event_id": _event_id(),
                    "delta": f"word{index} ",
                    "start_ms": start_ms,
                    "end_ms": start_ms + 10,
                }
            )
            await self._emit(
                {
                    "type": "session.output_audio.delta",
                    "event_id": _event_id(),
                    "delta": "AAAA",
                    "start_ms": start_ms,
                    "end_ms": start_ms + 10,
                }
            )
            await asyncio.sleep(self._fake.audio_s / LIVE_SPEECH_CHUNKS)

    async def _function_call(self, step: AgentCallsFunction) -> None:
        """The delegated Responses run calls a function: `response.event` wrapping
        `response.output_item.done` with the function call item."""
        arguments = (
            step.arguments if isinstance(step.arguments, str) else json.dumps(step.arguments)
        )
        item = {
            "id": f"fc_{secrets.token_hex(6)}",
            "type": "function_call",
            "status": "completed",
            "call_id": step.call_id,
            "name": step.name,
            "arguments": arguments,
        }
        await self._emit(
            {
                "type": "response.event",
                "event_id": _event_id(),
                "delegation_id": f"del_{secrets.token_hex(6)}",
                "event": {
                    "type": "response.output_item.done",
                    "output_index": 0,
                    "sequence_number": 1,
                    "item": item,
                },
            }
        )

    async def _hang_up(self, step: HangUp | CloseSession) -> None:
        await self._end_session(step.reason if isinstance(step, CloseSession) else "remote_hangup")

    async def _call_ended(self) -> None:
        verbs = self._fake.verbs_for(self.call_id)
        await self._end_session("close_requested" if verbs[-1:] == ["hangup"] else "remote_hangup")

    _session_ended = False

    async def _end_session(self, reason: str) -> None:
        if self._session_ended:
            return
        self._session_ended = True
        with self._fake._lock:
            self._fake._set_call_state_locked(self.call_id, "ended")
        await self._emit(
            {
                "type": "session.closed",
                "event_id": _event_id(),
                "reason": reason,
                "session": {"id": self.call_id, "status": "closed"},
                "usage": {"seconds": 1.0},
            }
        )
        await self._close(1000)

    async def _emit(self, event: dict[str, Any] | str) -> None:
        if isinstance(event, dict) and not self._closed:
            self._fake._record_server_event(ServerEvent(self.call_id, event, time.monotonic()))
        await super()._emit(event)


def _event_id() -> str:
    return f"event_{secrets.token_hex(8)}"


def _tracking_protocol(transports: dict[_Peer, asyncio.BaseTransport]) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, registering each connection so a Drop can close it.

    uvicorn gives an ASGI app no way to close a connection without answering (raising
    makes it answer 500), so the app finds the transport by the client's address.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - httptools is optional for uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class TrackingProtocol(base):
        _peer: _Peer | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            if peer is not None:
                self._peer = (str(peer[0]), int(peer[1]))
                transports[self._peer] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self._peer is not None:
                transports.pop(self._peer, None)
            super().connection_lost(exc)

    return TrackingProtocol


def _uvicorn_server(fake: FakeOpenAI, *, log_level: str | None) -> uvicorn.Server:
    transports: dict[_Peer, asyncio.BaseTransport] = {}
    config = uvicorn.Config(
        _AsgiApp(fake, transports),
        http=_tracking_protocol(transports),
        lifespan="off",
        log_config=None,
        log_level=log_level,
        access_log=False,
        # A Delay still sleeping when the server stops must not hold the stop up for long.
        timeout_graceful_shutdown=1,
    )
    return uvicorn.Server(config)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the fake on loopback until SIGTERM/SIGINT, then write the record file."""
    parser = argparse.ArgumentParser(prog="python -m tests.fake_openai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001, help="0 picks a free port")
    parser.add_argument("--api-key", default="sk-test", help="the bearer token to require")
    parser.add_argument("--record-file", type=Path, help="JSON lines of every request, on exit")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds before each default answer"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    fake = FakeOpenAI(args.api_key, default=Delay(args.latency) if args.latency > 0 else None)
    sock = listening_socket(args.host, args.port)
    server = _uvicorn_server(fake, log_level="warning")
    # uvicorn re-raises the signal that stopped it once it has shut down; with these
    # handlers in place that no longer kills the process before the record file is written.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    host, port = sock.getsockname()[:2]
    print(f"fake-openai serving http://{host}:{port}/v1", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if args.record_file is not None:
            fake.write_record_file(args.record_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
