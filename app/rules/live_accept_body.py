"""The session of a GPT-Live accept, validated against the API reference.

A profile with `api: live` is checked with these models when rules load; its accept body
is `{"session": {"type": "live", ...}}`. The fields are those of the Live accept session
(`LiveCallAcceptSession`): `model`, `instructions`, `audio.output.voice`, `delegation`,
`store`, `input`; anything else is refused, as the API refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, NoReturn, get_args

from pydantic import (
    Field,
    SerializeAsAny,
    TypeAdapter,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from app.calls.call_control import CallControl
from app.rules.accept_body import (
    FORMAT_REFUSED,
    BodyPath,
    JsonObject,
    VoiceId,
    _by_key,
    _by_shape,
    _literal,
    _Model,
    misspelt_voice_warnings,
)
from app.rules.call_control_tools import call_control_tools, refuse_taken_names

__all__ = [
    "LIVE_ANNOUNCER_SESSION",
    "LIVE_DEFAULT_MODEL",
    "LIVE_VOICES",
    "LiveSessionConfig",
    "build_live_accept_body",
    "live_function_tool_warnings",
    "live_session_json_schema",
    "live_templated_fields",
    "live_voice_warnings",
    "responses_delegation",
    "validate_live_session",
    "with_live_call_control_tools",
]

LiveVoiceName = Literal[
    "alloy",
    "ash",
    "ballad",
    "beacon",
    "bossa",
    "cedar",
    "cinder",
    "coral",
    "delta",
    "echo",
    "gleam",
    "marin",
    "meridian",
    "quartz",
    "ripple",
    "sage",
    "shimmer",
    "stone",
    "tempo",
    "verse",
    "vesper",
    "willow",
]
LIVE_VOICES: tuple[str, ...] = get_args(LiveVoiceName)

# The model of sip-router's built-in Live sessions (the refer announcer); profiles name theirs.
LIVE_DEFAULT_MODEL = "gpt-live-1"
MODEL_REQUIRED = (
    f"a GPT-Live profile must name its model: there is no default (for example"
    f" {LIVE_DEFAULT_MODEL})"
)
LIVE_TYPE_REFUSED = 'type is always "live" and is added by sip-router'
LIVE_FUNCTION_TOOL_WARNING = (
    "delegation.responses.tools: tool '{name}' is a function tool: GPT-Live's backend calls it"
    " through the delegation protocol, which sip-router does not answer (it offers end_call"
    " only); make sure a program on the session's sideband answers it"
)

# The session of a refer rule on a Live call without an `api: live` profile.
LIVE_ANNOUNCER_SESSION: Mapping[str, Any] = MappingProxyType(
    {
        "type": "live",
        "model": LIVE_DEFAULT_MODEL,
        "instructions": (
            "You are connecting a phone call. Speak only the announcements you are given,"
            " exactly, and nothing else."
        ),
    }
)


def _format_refused() -> NoReturn:
    raise PydanticCustomError(
        "format_not_allowed", FORMAT_REFUSED.replace("audio.{side}.format", "the audio format")
    )


# --- audio -----------------------------------------------------------------------------------


def _voice_name(value: str) -> str:
    if not value:
        raise PydanticCustomError("voice_name", "a voice name must not be empty")
    return value


LiveVoice = Annotated[
    LiveVoiceName | str | VoiceId,
    _by_shape(
        f"a voice name (built in: {', '.join(LIVE_VOICES)}; or a custom voice's) or a mapping"
        " with an id",
        LiveVoiceName | Annotated[str, Field(min_length=1)] | VoiceId,
        text=_voice_name,
        mapping=TypeAdapter(VoiceId).validate_python,
    ),
    SerializeAsAny(),
]


class LiveAudioOutput(_Model):
    format: SkipJsonSchema[object] = Field(default=None, exclude=True)
    voice: LiveVoice | None = None

    @field_validator("format", mode="plain")
    @classmethod
    def _refuse_format(cls, value: object) -> NoReturn:
        _format_refused()


class LiveAudio(_Model):
    format: SkipJsonSchema[object] = Field(default=None, exclude=True)
    output: LiveAudioOutput | None = None

    @field_validator("format", mode="plain")
    @classmethod
    def _refuse_format(cls, value: object) -> NoReturn:
        _format_refused()


# --- delegation ------------------------------------------------------------------------------

ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]


class ClientDelegation(_Model):
    type: Literal["client"]


class ResponsesReasoning(_Model):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["concise", "detailed", "auto"] | None = None


class ResponsesText(_Model):
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesFunctionTool(_Model):
    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None


class WebSearchTool(_Model):
    type: Literal["web_search"]


class ResponsesToolChoiceFunction(_Model):
    type: Literal["function"]
    name: ToolName


class ResponsesToolChoiceMcp(_Model):
    type: Literal["mcp"]
    server_label: Annotated[str, Field(min_length=1)]
    name: ToolName


ResponsesTool = Annotated[
    ResponsesFunctionTool | WebSearchTool,
    _by_shape(
        "a mapping with type function or web_search",
        ResponsesFunctionTool | WebSearchTool,
        mapping=_by_key(
            "type",
            "tool",
            {
                "function": TypeAdapter(ResponsesFunctionTool),
                "web_search": TypeAdapter(WebSearchTool),
            },
        ),
    ),
    SerializeAsAny(),
]
ResponsesToolChoice = Annotated[
    Literal["auto", "none", "required"] | ResponsesToolChoiceFunction | ResponsesToolChoiceMcp,
    _by_shape(
        '"auto", "none", "required" or a mapping with type function or mcp',
        Literal["auto", "none", "required"] | ResponsesToolChoiceFunction | ResponsesToolChoiceMcp,
        text=_literal("auto", "none", "required"),
        mapping=_by_key(
            "type",
            "tool_choice",
            {
                "function": TypeAdapter(ResponsesToolChoiceFunction),
                "mcp": TypeAdapter(ResponsesToolChoiceMcp),
            },
        ),
    ),
    SerializeAsAny(),
]


class ResponsesConfig(_Model):
    """The backend (Responses) side of a `responses` delegation."""

    model: Annotated[str, Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=16)] | None = None
    service_tier: (
        Literal["auto", "default", "fast_tier_temp_pilot", "flex", "priority", "ultrafast"] | None
    ) = None
    reasoning: ResponsesReasoning | None = None
    text: ResponsesText | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None


class ResponsesDelegation(_Model):
    type: Literal["responses"]
    responses: ResponsesConfig


Delegation = Annotated[
    ClientDelegation | ResponsesDelegation,
    _by_shape(
        "a mapping with type client or responses",
        ClientDelegation | ResponsesDelegation,
        mapping=_by_key(
            "type",
            "delegation",
            {
                "client": TypeAdapter(ClientDelegation),
                "responses": TypeAdapter(ResponsesDelegation),
            },
        ),
    ),
    SerializeAsAny(),
]


# --- input (text-only history) ---------------------------------------------------------------


class InputTextPart(_Model):
    type: Literal["input_text"]
    text: str


class OutputTextPart(_Model):
    type: Literal["text", "output_text"]
    text: str


class UserMessage(_Model):
    type: Literal["message"] | None = None
    role: Literal["developer", "user"]
    content: Annotated[list[InputTextPart], Field(min_length=1, max_length=1)]
    id: str | None = None
    status: Literal["incomplete", "completed"] | None = None


class AssistantMessage(_Model):
    type: Literal["message"] | None = None
    role: Literal["assistant"]
    content: Annotated[list[OutputTextPart], Field(min_length=1, max_length=1)]
    id: str | None = None
    status: Literal["incomplete", "completed"] | None = None


_USER_MESSAGE = TypeAdapter(UserMessage)
InputMessage = Annotated[
    UserMessage | AssistantMessage,
    _by_shape(
        "a message mapping with role developer, user or assistant",
        UserMessage | AssistantMessage,
        mapping=_by_key(
            "role",
            "message",
            {
                "developer": _USER_MESSAGE,
                "user": _USER_MESSAGE,
                "assistant": TypeAdapter(AssistantMessage),
            },
        ),
    ),
    SerializeAsAny(),
]


# --- the session -----------------------------------------------------------------------------


class LiveSessionConfig(_Model):
    """The Live accept session without `type`: what an `api: live` profile may configure."""

    type: SkipJsonSchema[object] = Field(default=None, exclude=True)
    model: Annotated[str, Field(min_length=1)]
    instructions: str | None = None
    audio: LiveAudio | None = None
    delegation: Delegation | None = None
    store: bool | None = None
    input: Annotated[list[InputMessage], Field(max_length=128)] | None = None

    @field_validator("type", mode="plain")
    @classmethod
    def _refuse_type(cls, value: object) -> NoReturn:
        raise PydanticCustomError("type_not_allowed", LIVE_TYPE_REFUSED)


def validate_live_session(data: Mapping[str, Any]) -> LiveSessionConfig:
    """Validate a Live profile's session fields; raises pydantic.ValidationError."""
    return LiveSessionConfig.model_validate(dict(data))


def build_live_accept_body(config: LiveSessionConfig) -> dict[str, Any]:
    """The JSON body of a Live accept: `{"session": {"type": "live", ...set keys}}`."""
    fields = config.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return {"session": {"type": "live", **fields}}


def responses_delegation(config: LiveSessionConfig) -> ResponsesConfig | None:
    """The backend of a `responses` delegation, or None (client delegation, or none)."""
    delegation = config.delegation
    return delegation.responses if isinstance(delegation, ResponsesDelegation) else None


def with_live_call_control_tools(
    config: LiveSessionConfig, control: CallControl
) -> LiveSessionConfig:
    """`config` with the call-control tools (end_call) in `delegation.responses.tools`.

    ValueError when there is no responses delegation to carry them, or on a name the
    profile's tools already have.
    """
    added = call_control_tools(control)
    if not added:
        return config
    backend = responses_delegation(config)
    if backend is None:
        raise ValueError("end_call on GPT-Live needs delegation: {type: responses, ...}")
    existing = list(backend.tools or ())
    refuse_taken_names(existing, added)
    tools: list[ResponsesFunctionTool | WebSearchTool] = [
        ResponsesFunctionTool.model_validate(tool.model_dump(mode="json", exclude_none=True))
        for tool in added
    ]
    backend = backend.model_copy(update={"tools": [*existing, *tools]})
    assert isinstance(config.delegation, ResponsesDelegation)
    delegation = config.delegation.model_copy(update={"responses": backend})
    return config.model_copy(update={"delegation": delegation})


def live_voice_warnings(config: LiveSessionConfig) -> list[str]:
    """A warning when the voice is not a built-in Live voice but its name is close to one."""
    output = config.audio.output if config.audio is not None else None
    voice = output.voice if output is not None else None
    return misspelt_voice_warnings(voice, LIVE_VOICES, "GPT-Live")


def live_function_tool_warnings(config: LiveSessionConfig) -> list[str]:
    """One warning per function tool of the backend, which nothing on the call answers."""
    backend = responses_delegation(config)
    tools = (backend.tools or []) if backend is not None else []
    return [
        LIVE_FUNCTION_TOOL_WARNING.format(name=tool.name)
        for tool in tools
        if isinstance(tool, ResponsesFunctionTool)
    ]


def live_templated_fields(session: Mapping[str, Any]) -> list[tuple[BodyPath, str]]:
    """The strings of a Live session that are templates, by their path in it.

    `instructions`, the backend's `delegation.responses.instructions`, and the text of each
    `input` message.
    """
    found: list[tuple[BodyPath, str]] = []
    if isinstance(session.get("instructions"), str):
        found.append((("instructions",), session["instructions"]))
    delegation = session.get("delegation")
    backend = delegation.get("responses") if isinstance(delegation, Mapping) else None
    if isinstance(backend, Mapping) and isinstance(backend.get("instructions"), str):
        found.append((("delegation", "responses", "instructions"), backend["instructions"]))
    messages = session.get("input")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, Mapping) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                found.append((("input", i, "content", j, "text"), part["text"]))
    return found


def live_session_json_schema() -> dict[str, Any]:
    """JSON Schema of a Live profile's session fields, for the rule-file schema."""
    return LiveSessionConfig.model_json_schema(mode="validation")
