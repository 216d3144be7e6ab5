"""The session config sent in OpenAI's accept request, validated against the API reference.

Profiles are checked with these models when rules load, and the accept body is built from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal, NoReturn, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "VOICES",
    "Audio",
    "AudioInput",
    "AudioOutput",
    "FunctionTool",
    "InputFile",
    "InputImage",
    "InputText",
    "McpApprovalFilter",
    "McpTool",
    "McpToolFilter",
    "NoiseReduction",
    "Prompt",
    "RetentionRatioTruncation",
    "SemanticVad",
    "ServerVad",
    "SessionConfig",
    "TokenLimits",
    "ToolChoiceFunction",
    "ToolChoiceMcp",
    "TracingConfig",
    "Transcription",
    "VoiceId",
    "accept_body_json_schema",
    "build_accept_body",
    "function_tool_warnings",
    "validate_session_config",
]

VoiceName = Literal[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
]
VOICES: tuple[str, ...] = get_args(VoiceName)

ConnectorId = Literal[
    "connector_dropbox",
    "connector_gmail",
    "connector_googlecalendar",
    "connector_googledrive",
    "connector_microsoftteams",
    "connector_outlookcalendar",
    "connector_outlookemail",
    "connector_sharepoint",
]

FORMAT_REFUSED = (
    "audio.{side}.format must not be set: on SIP calls the codec is negotiated by the trunk"
)
TYPE_REFUSED = 'type is always "realtime" and is added by sip-router'
FUNCTION_TOOL_WARNING = (
    "tool {label} is a function tool: OpenAI cannot run it and sip-router does not answer"
    " function calls (it needs a program on the call's sideband WebSocket); use an MCP tool"
    " or make sure such a program is connected"
)

_T = TypeVar("_T")


class _NullableMark:
    """Marks an optional key whose value may also be an explicit null."""


_NULLABLE = _NullableMark()
# The reference allows null only for some keys; every other optional key must be left out.
Nullable = Annotated[_T | None, _NULLABLE]


def _refuse_nulls_in_schema(schema: dict[str, Any], model_class: type[BaseModel]) -> None:
    refusing: frozenset[str] = getattr(model_class, "_null_refused", frozenset())
    for name, prop in schema.get("properties", {}).items():
        if name not in refusing or "anyOf" not in prop:
            continue
        branches = [branch for branch in prop["anyOf"] if branch != {"type": "null"}]
        prop.pop("default", None)
        if len(branches) == 1:
            del prop["anyOf"]
            prop.update(branches[0])
        else:
            prop["anyOf"] = branches


class _Model(BaseModel):
    # Strict: YAML booleans and quoted numbers are mistakes, not values to coerce.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra=_refuse_nulls_in_schema,
    )

    _null_refused: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._null_refused = frozenset(
            name
            for name, field in cls.model_fields.items()
            if type(None) in get_args(field.annotation) and _NULLABLE not in field.metadata
        )

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_null(cls, value: object, info: ValidationInfo) -> object:
        if value is None and info.field_name in cls._null_refused:
            raise PydanticCustomError(
                "null_not_allowed", "null is not allowed here; leave the key out instead"
            )
        return value


def _error(loc: tuple[str | int, ...], kind: str, message: str, value: object) -> ValidationError:
    detail = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    return ValidationError.from_exception_data("SessionConfig", [detail])


def _by_type(
    name: str, choices: Mapping[str, TypeAdapter[Any]], untyped: TypeAdapter[Any] | None = None
) -> Callable[[dict[str, Any]], Any]:
    """Pick the model for a mapping by its `type` key, so errors name fields, not union members."""

    def validate(value: dict[str, Any]) -> Any:
        if "type" not in value:
            if untyped is not None:
                return untyped.validate_python(value)
            detail = InitErrorDetails(type="missing", loc=("type",), input=value)
            raise ValidationError.from_exception_data("SessionConfig", [detail])
        adapter = choices.get(value["type"]) if isinstance(value["type"], str) else None
        if adapter is None:
            expected = ", ".join(f'"{tag}"' for tag in choices)
            raise _error(
                ("type",), "unknown_type", f"{name} type must be one of {expected}", value["type"]
            )
        return adapter.validate_python(value)

    return validate


def _by_shape(
    expected: str,
    schema: Any,
    *,
    text: Callable[[str], Any] | None = None,
    mapping: Callable[[dict[str, Any]], Any] | None = None,
    sequence: Callable[[list[Any]], Any] | None = None,
    other: Callable[[object], Any] | None = None,
) -> PlainValidator:
    """Validate a union by the shape of its input; the error of the matching shape is kept."""

    def validate(value: object) -> Any:
        if isinstance(value, str) and text is not None:
            return text(value)
        if isinstance(value, dict) and mapping is not None:
            return mapping(value)
        if isinstance(value, list) and sequence is not None:
            return sequence(value)
        if other is not None and not isinstance(value, str | dict | list):
            return other(value)
        raise PydanticCustomError("invalid_shape", f"expected {expected}")

    return PlainValidator(validate, json_schema_input_type=schema)


def _literal(*allowed: str) -> Callable[[str], str]:
    def validate(value: str) -> str:
        if value not in allowed:
            expected = ", ".join(f'"{option}"' for option in allowed)
            raise PydanticCustomError("literal_error", f"expected one of {expected}")
        return value

    return validate


def _json_value(value: object, loc: tuple[str | int, ...]) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _error(loc, "json_value", "must be a finite number", value)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _json_value(item, (*loc, index))
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _error(loc, "json_value", "mapping keys must be strings", key)
            _json_value(item, (*loc, key))
        return
    raise _error(
        loc,
        "json_value",
        "must be a JSON value: string, number, boolean, null, list or mapping",
        value,
    )


def _json_object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "expected a mapping (a JSON object)")
    _json_value(value, ())
    return value


JsonObject = Annotated[
    dict[str, Any], PlainValidator(_json_object, json_schema_input_type=dict[str, Any])
]


# --- audio.input -----------------------------------------------------------------------------


class NoiseReduction(_Model):
    type: Literal["near_field", "far_field"] | None = None


class Transcription(_Model):
    language: str | None = None
    model: str | None = None
    prompt: str | None = None


class ServerVad(_Model):
    type: Literal["server_vad"]
    create_response: bool | None = None
    # The published schema bounds it to 5 to 30 seconds; OpenAI fails such calls after ringing.
    idle_timeout_ms: Nullable[Annotated[int, Field(ge=5000, le=30000)]] = None
    interrupt_response: bool | None = None
    prefix_padding_ms: Annotated[int, Field(ge=0)] | None = None
    silence_duration_ms: Annotated[int, Field(ge=0)] | None = None
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class SemanticVad(_Model):
    type: Literal["semantic_vad"]
    create_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    interrupt_response: bool | None = None


_TURN_DETECTION = _by_type(
    "turn_detection",
    {"server_vad": TypeAdapter(ServerVad), "semantic_vad": TypeAdapter(SemanticVad)},
)
TurnDetection = Annotated[
    ServerVad | SemanticVad,
    _by_shape(
        "a mapping with type server_vad or semantic_vad",
        ServerVad | SemanticVad,
        mapping=_TURN_DETECTION,
    ),
    SerializeAsAny(),
]


class AudioInput(_Model):
    format: SkipJsonSchema[object] = Field(default=None, exclude=True)
    noise_reduction: Nullable[NoiseReduction] = None
    transcription: Nullable[Transcription] = None
    turn_detection: Nullable[TurnDetection] = None

    @field_validator("format", mode="plain")
    @classmethod
    def _refuse_format(cls, value: object) -> NoReturn:
        raise PydanticCustomError("format_not_allowed", FORMAT_REFUSED.format(side="input"))


# --- audio.output ----------------------------------------------------------------------------


class VoiceId(_Model):
    id: Annotated[str, Field(min_length=1)]


_VOICE_ID = TypeAdapter(VoiceId)
Voice = Annotated[
    VoiceName | VoiceId,
    _by_shape(
        f"a built-in voice ({', '.join(VOICES)}) or a mapping with an id",
        VoiceName | VoiceId,
        text=_literal(*VOICES),
        mapping=_VOICE_ID.validate_python,
    ),
    SerializeAsAny(),
]


class AudioOutput(_Model):
    format: SkipJsonSchema[object] = Field(default=None, exclude=True)
    speed: Annotated[float, Field(ge=0.25, le=1.5)] | None = None
    voice: Voice | None = None

    @field_validator("format", mode="plain")
    @classmethod
    def _refuse_format(cls, value: object) -> NoReturn:
        raise PydanticCustomError("format_not_allowed", FORMAT_REFUSED.format(side="output"))


class Audio(_Model):
    input: AudioInput | None = None
    output: AudioOutput | None = None


# --- prompt ----------------------------------------------------------------------------------


class InputText(_Model):
    type: Literal["input_text"]
    text: str


class InputImage(_Model):
    type: Literal["input_image"]
    detail: Literal["low", "high", "auto", "original"]
    file_id: Nullable[str] = None
    image_url: Nullable[str] = None


class InputFile(_Model):
    type: Literal["input_file"]
    file_data: str | None = None
    file_id: Nullable[str] = None
    file_url: str | None = None
    filename: str | None = None


PromptVariable = Annotated[
    str | InputText | InputImage | InputFile,
    _by_shape(
        "a string or a mapping with type input_text, input_image or input_file",
        str | InputText | InputImage | InputFile,
        text=str,
        mapping=_by_type(
            "prompt variable",
            {
                "input_text": TypeAdapter(InputText),
                "input_image": TypeAdapter(InputImage),
                "input_file": TypeAdapter(InputFile),
            },
        ),
    ),
    SerializeAsAny(),
]


class Prompt(_Model):
    id: Annotated[str, Field(min_length=1)]
    variables: Nullable[dict[str, PromptVariable]] = None
    version: Nullable[str] = None


# --- tools -----------------------------------------------------------------------------------


class ToolChoiceFunction(_Model):
    type: Literal["function"]
    name: str


class ToolChoiceMcp(_Model):
    type: Literal["mcp"]
    server_label: str
    name: Nullable[str] = None


ToolChoice = Annotated[
    Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceMcp,
    _by_shape(
        '"none", "auto", "required" or a mapping with type function or mcp',
        Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceMcp,
        text=_literal("none", "auto", "required"),
        mapping=_by_type(
            "tool_choice",
            {"function": TypeAdapter(ToolChoiceFunction), "mcp": TypeAdapter(ToolChoiceMcp)},
        ),
    ),
    SerializeAsAny(),
]


class FunctionTool(_Model):
    type: Literal["function"] | None = None
    name: str | None = None
    description: str | None = None
    parameters: JsonObject | None = None


class McpToolFilter(_Model):
    read_only: bool | None = None
    tool_names: list[str] | None = None


class McpApprovalFilter(_Model):
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


_STRING_LIST = TypeAdapter(list[str])
AllowedTools = Annotated[
    list[str] | McpToolFilter,
    _by_shape(
        "a list of tool names or a mapping with read_only and/or tool_names",
        list[str] | McpToolFilter,
        sequence=_STRING_LIST.validate_python,
        mapping=TypeAdapter(McpToolFilter).validate_python,
    ),
    SerializeAsAny(),
]
RequireApproval = Annotated[
    Literal["always", "never"] | McpApprovalFilter,
    _by_shape(
        '"always", "never" or a mapping with always and/or never',
        Literal["always", "never"] | McpApprovalFilter,
        text=_literal("always", "never"),
        mapping=TypeAdapter(McpApprovalFilter).validate_python,
    ),
    SerializeAsAny(),
]


class McpTool(_Model):
    type: Literal["mcp"]
    server_label: Annotated[str, Field(min_length=1)]
    server_url: str | None = None
    connector_id: ConnectorId | None = None
    allowed_tools: Nullable[AllowedTools] = None
    authorization: str | None = None
    defer_loading: bool | None = None
    headers: Nullable[dict[str, str]] = None
    require_approval: Nullable[RequireApproval] = None
    server_description: str | None = None

    @field_validator("server_url")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PydanticCustomError(
                "url_scheme", "server_url must be an absolute http:// or https:// URL"
            )
        return value

    @model_validator(mode="after")
    def _one_server(self) -> McpTool:
        if (self.server_url is None) == (self.connector_id is None):
            raise PydanticCustomError(
                "mcp_server", "an MCP tool needs exactly one of server_url or connector_id"
            )
        return self


Tool = Annotated[
    FunctionTool | McpTool,
    _by_shape(
        "a mapping with type function or mcp",
        FunctionTool | McpTool,
        mapping=_by_type(
            "tool",
            {"function": TypeAdapter(FunctionTool), "mcp": TypeAdapter(McpTool)},
            untyped=TypeAdapter(FunctionTool),
        ),
    ),
    SerializeAsAny(),
]


# --- tracing, truncation, limits -------------------------------------------------------------


class TracingConfig(_Model):
    group_id: str | None = None
    metadata: JsonObject | None = None
    workflow_name: str | None = None


Tracing = Annotated[
    Literal["auto"] | TracingConfig,
    _by_shape(
        '"auto" or a mapping with group_id, metadata and/or workflow_name',
        Literal["auto"] | TracingConfig,
        text=_literal("auto"),
        mapping=TypeAdapter(TracingConfig).validate_python,
    ),
    SerializeAsAny(),
]


class TokenLimits(_Model):
    post_instructions: Annotated[int, Field(ge=0)] | None = None


class RetentionRatioTruncation(_Model):
    type: Literal["retention_ratio"]
    retention_ratio: Annotated[float, Field(ge=0.0, le=1.0)]
    token_limits: TokenLimits | None = None


Truncation = Annotated[
    Literal["auto", "disabled"] | RetentionRatioTruncation,
    _by_shape(
        '"auto", "disabled" or a mapping with type retention_ratio',
        Literal["auto", "disabled"] | RetentionRatioTruncation,
        text=_literal("auto", "disabled"),
        mapping=TypeAdapter(RetentionRatioTruncation).validate_python,
    ),
    SerializeAsAny(),
]

_TOKEN_COUNT = TypeAdapter(Annotated[int, Field(strict=True, ge=1, le=4096)])


def _max_output_tokens_text(value: str) -> str:
    if value != "inf":
        raise PydanticCustomError(
            "max_output_tokens", 'max_output_tokens must be an integer from 1 to 4096 or "inf"'
        )
    return value


MaxOutputTokens = Annotated[
    Annotated[int, Field(ge=1, le=4096)] | Literal["inf"],
    _by_shape(
        'an integer from 1 to 4096 or "inf"',
        Annotated[int, Field(ge=1, le=4096)] | Literal["inf"],
        text=_max_output_tokens_text,
        other=_TOKEN_COUNT.validate_python,
    ),
    SerializeAsAny(),
]


# --- the session config ----------------------------------------------------------------------


class SessionConfig(_Model):
    """The accept body without `type`: what a profile may configure."""

    type: SkipJsonSchema[object] = Field(default=None, exclude=True)
    audio: Audio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    instructions: str | None = None
    max_output_tokens: MaxOutputTokens | None = None
    model: Annotated[str, Field(min_length=1)] | None = None
    # The reference: "It is not possible to request both text and audio at the same time."
    output_modalities: (
        Annotated[list[Literal["text", "audio"]], Field(min_length=1, max_length=1)] | None
    ) = None
    prompt: Nullable[Prompt] = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None
    tracing: Nullable[Tracing] = None
    truncation: Truncation | None = None

    @field_validator("type", mode="plain")
    @classmethod
    def _refuse_type(cls, value: object) -> NoReturn:
        raise PydanticCustomError("type_not_allowed", TYPE_REFUSED)


def validate_session_config(data: Mapping[str, Any]) -> SessionConfig:
    """Validate a profile's accept fields; raises pydantic.ValidationError with field paths."""
    return SessionConfig.model_validate(dict(data))


def build_accept_body(config: SessionConfig) -> dict[str, Any]:
    """The JSON body of the accept request: `type` first, then only the keys that were set."""
    fields = config.model_dump(mode="json", exclude_unset=True, by_alias=True)
    return {"type": "realtime", **fields}


def function_tool_warnings(config: SessionConfig) -> list[str]:
    """One warning per function tool, which nothing on the call would answer."""
    warnings: list[str] = []
    for index, tool in enumerate(config.tools or ()):
        if isinstance(tool, FunctionTool):
            label = f"'{tool.name}'" if tool.name is not None else f"at tools[{index}]"
            warnings.append(FUNCTION_TOOL_WARNING.format(label=label))
    return warnings


def accept_body_json_schema() -> dict[str, Any]:
    """JSON Schema of a profile's accept fields, for the rule-file schema."""
    return SessionConfig.model_json_schema(mode="validation")
