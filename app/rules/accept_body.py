"""The session config sent in OpenAI's accept request, validated against the API reference.

Profiles are checked with these models when rules load, and the accept body is built from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
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
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.rules.templates import (
    Template,
    TemplateCompileError,
    TemplateRenderError,
    compile_template,
)

__all__ = [
    "VOICES",
    "AcceptTemplates",
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
    "PromptCacheBreakpoint",
    "Reasoning",
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
    "compile_accept_templates",
    "function_tool_warnings",
    "templated_fields",
    "validate_session_config",
    "voice_warnings",
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


class _NullSentMark:
    """Marks an optional key whose explicit null is sent: it means more than leaving it out."""


_NULL_SENT = _NullSentMark()
# `turn_detection: null` turns voice activity detection off; left out, OpenAI's default
# (server VAD) applies. Every other key written as null is left out of the request.
NullSent = Annotated[_T | None, _NULL_SENT]


class _Model(BaseModel):
    # Strict: YAML booleans and quoted numbers are mistakes, not values to coerce.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    _nulls_kept: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Keys that are never sent (`type`, `audio.*.format`) are refused even as null.
        cls._nulls_kept = frozenset(
            name
            for name, field in cls.model_fields.items()
            if _NULL_SENT in field.metadata or field.exclude
        )

    @model_validator(mode="before")
    @classmethod
    def _leave_out_nulls(cls, value: object) -> object:
        # A key written as null is as if it were not written (so it is never sent), which
        # also lets a profile drop a key it inherits with `extends`.
        if isinstance(value, dict) and None in value.values():
            return {k: v for k, v in value.items() if v is not None or k in cls._nulls_kept}
        return value


def _error(loc: tuple[str | int, ...], kind: str, message: str, value: object) -> ValidationError:
    detail = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    return ValidationError.from_exception_data("SessionConfig", [detail])


def _by_key(
    key: str,
    name: str,
    choices: Mapping[str, TypeAdapter[Any]],
    untyped: TypeAdapter[Any] | None = None,
) -> Callable[[dict[str, Any]], Any]:
    """Pick the model for a mapping by one of its keys (`type`, a message's `role`), so
    errors name fields, not union members; `untyped` takes a mapping without the key."""

    def validate(value: dict[str, Any]) -> Any:
        if key not in value:
            if untyped is not None:
                return untyped.validate_python(value)
            detail = InitErrorDetails(type="missing", loc=(key,), input=value)
            raise ValidationError.from_exception_data("SessionConfig", [detail])
        adapter = choices.get(value[key]) if isinstance(value[key], str) else None
        if adapter is None:
            expected = ", ".join(f'"{tag}"' for tag in choices)
            message = f"{name} {key} must be one of {expected}"
            raise _error((key,), f"unknown_{key}", message, value[key])
        return adapter.validate_python(value)

    return validate


def _by_type(
    name: str, choices: Mapping[str, TypeAdapter[Any]], untyped: TypeAdapter[Any] | None = None
) -> Callable[[dict[str, Any]], Any]:
    """`_by_key` on `type`."""
    return _by_key("type", name, choices, untyped)


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
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    keywords: list[str] | None = None
    language: str | None = None
    languages: Annotated[list[str], Field(min_length=1)] | None = None
    model: str | None = None
    prompt: str | None = None


class ServerVad(_Model):
    type: Literal["server_vad"]
    create_response: bool | None = None
    # The published schema bounds it to 5 to 30 seconds; OpenAI fails such calls after ringing.
    idle_timeout_ms: Annotated[int, Field(ge=5000, le=30000)] | None = None
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
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    turn_detection: NullSent[TurnDetection] = None

    @field_validator("format", mode="plain")
    @classmethod
    def _refuse_format(cls, value: object) -> NoReturn:
        raise PydanticCustomError("format_not_allowed", FORMAT_REFUSED.format(side="input"))


# --- audio.output ----------------------------------------------------------------------------


class VoiceId(_Model):
    id: Annotated[str, Field(min_length=1)]


def _voice_name(value: str) -> str:
    # The reference allows any string: the built-in names and the names of custom voices.
    if not value:
        raise PydanticCustomError("voice_name", "a voice name must not be empty")
    return value


_VOICE_ID = TypeAdapter(VoiceId)
Voice = Annotated[
    VoiceName | str | VoiceId,
    _by_shape(
        f"a voice name (built in: {', '.join(VOICES)}; or a custom voice's) or a mapping"
        " with an id",
        VoiceName | Annotated[str, Field(min_length=1)] | VoiceId,
        text=_voice_name,
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


class PromptCacheBreakpoint(_Model):
    mode: Literal["explicit"]


class InputText(_Model):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class InputImage(_Model):
    type: Literal["input_image"]
    detail: Literal["low", "high", "auto", "original"]
    file_id: str | None = None
    image_url: str | None = None
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class InputFile(_Model):
    type: Literal["input_file"]
    detail: Literal["auto", "low", "high"] | None = None
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


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
    variables: dict[str, PromptVariable] | None = None
    version: str | None = None


# --- tools -----------------------------------------------------------------------------------


class ToolChoiceFunction(_Model):
    type: Literal["function"]
    name: str


class ToolChoiceMcp(_Model):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


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
    tunnel_id: Annotated[str, Field(pattern=r"^tunnel_[a-z0-9]{32}$")] | None = None
    allowed_callers: (
        Annotated[list[Literal["direct", "programmatic"]], Field(min_length=1)] | None
    ) = None
    allowed_tools: AllowedTools | None = None
    authorization: str | None = None
    defer_loading: bool | None = None
    headers: dict[str, str] | None = None
    require_approval: RequireApproval | None = None
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
        given = (self.server_url, self.connector_id, self.tunnel_id)
        if sum(server is not None for server in given) != 1:
            raise PydanticCustomError(
                "mcp_server",
                "an MCP tool needs exactly one of server_url, connector_id or tunnel_id",
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


class Reasoning(_Model):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


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
    parallel_tool_calls: bool | None = None
    prompt: Prompt | None = None
    reasoning: Reasoning | None = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None
    tracing: Tracing | None = None
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


def voice_warnings(config: SessionConfig) -> list[str]:
    """A warning when the voice is not a built-in one but its name is close to one.

    Any name is allowed (custom voices), so a misspelt built-in voice would reach OpenAI.
    """
    output = config.audio.output if config.audio is not None else None
    return misspelt_voice_warnings(output.voice if output is not None else None, VOICES, "")


def misspelt_voice_warnings(voice: object, voices: Sequence[str], api_name: str) -> list[str]:
    """A warning when `voice` is not one of `voices` (the API's built-in ones, named with
    `api_name` in the text) but close to one."""
    if not isinstance(voice, str) or voice in voices:
        return []
    close = get_close_matches(voice.lower(), voices, n=1, cutoff=0.75)
    if not close:
        return []
    built_in = f"built-in {api_name} voice" if api_name else "built-in voice"
    return [
        f"voice '{voice}' is not a {built_in} (did you mean '{close[0]}'?); it is sent"
        " as the name of a custom voice"
    ]


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


# --- templates in the accept body ------------------------------------------------------------

BodyPath = tuple[str | int, ...]


def templated_fields(body: Mapping[str, Any]) -> list[tuple[BodyPath, str]]:
    """The strings of an accept body that are templates, by their path in it.

    `instructions`, the string values of `prompt.variables`, `tracing.group_id`, and the
    strings among `tracing.metadata`'s values (at any depth; keys stay as written).
    """
    found: list[tuple[BodyPath, str]] = []
    if isinstance(body.get("instructions"), str):
        found.append((("instructions",), body["instructions"]))
    prompt = body.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, Mapping) else None
    if isinstance(variables, Mapping):
        found.extend(
            (("prompt", "variables", name), value)
            for name, value in variables.items()
            if isinstance(value, str)
        )
    tracing = body.get("tracing")
    if isinstance(tracing, Mapping):
        if isinstance(tracing.get("group_id"), str):
            found.append((("tracing", "group_id"), tracing["group_id"]))
        found.extend(_strings_in(tracing.get("metadata"), ("tracing", "metadata")))
    return found


def _strings_in(value: object, path: BodyPath) -> list[tuple[BodyPath, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [found for key, item in value.items() for found in _strings_in(item, (*path, key))]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in _strings_in(item, (*path, i))]
    return []


class AcceptTemplateError(TemplateCompileError):
    """A templated field of an accept body that does not compile; `path` says which."""

    def __init__(self, path: BodyPath, error: TemplateCompileError) -> None:
        super().__init__(str(error), error.lineno)
        self.path = path


def _dotted(path: BodyPath) -> str:
    return ".".join(str(part) for part in path)


@dataclass(frozen=True, slots=True)
class AcceptTemplates:
    """The templated fields of one accept body, compiled, rendered per call into it."""

    fields: tuple[tuple[BodyPath, Template], ...]

    def render(self, body: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
        """`body` with every templated field rendered; TemplateRenderError names the field."""
        rendered = dict(body)
        for path, template in self.fields:
            try:
                text = template.render(variables)
            except TemplateRenderError as exc:
                raise TemplateRenderError(f"{_dotted(path)} template: {exc}") from None
            _put(rendered, path, text)
        return rendered

    def without_overridden(self, overrides: Mapping[str, Any]) -> AcceptTemplates | None:
        """These templates less the fields `overrides` writes: what overrides say is kept as
        written (a consulted service's text is never a template)."""
        kept = tuple((path, t) for path, t in self.fields if not _reaches(overrides, path))
        return AcceptTemplates(kept) if kept else None


def _reaches(overrides: Mapping[str, Any], path: BodyPath) -> bool:
    """Whether `overrides` writes the value at `path` or a container on the way to it."""
    node: Any = overrides
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return isinstance(node, list)  # a list in overrides replaces the profile's
        node = node[key]
    return True


def _put(body: dict[str, Any], path: BodyPath, value: str) -> None:
    """Place `value` at `path`, copying the containers on the way (the body is shared)."""
    node: Any = body
    for key in path[:-1]:
        child = node[key]
        node[key] = child = dict(child) if isinstance(child, Mapping) else list(child)
        node = child
    node[path[-1]] = value


def compile_accept_templates(
    body: Mapping[str, Any], templated: list[tuple[BodyPath, str]] | None = None
) -> AcceptTemplates | None:
    """Compile the templated fields of an accept body; None when none holds a template.

    `templated` names them when the body is not a Realtime one (`templated_fields`).
    Raises AcceptTemplateError for the first field that does not compile.
    """
    fields: list[tuple[BodyPath, Template]] = []
    for path, source in templated_fields(body) if templated is None else templated:
        try:
            template = compile_template(source)
        except TemplateCompileError as exc:
            raise AcceptTemplateError(path, exc) from None
        if not template.is_static:
            fields.append((path, template))
    return AcceptTemplates(tuple(fields)) if fields else None
