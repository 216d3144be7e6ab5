"""The shape of a rule file, as frozen pydantic models (README "Routing rules").

Shorthands (`caller: "+1415*"`, `expect: rule-name`, `vip: [..]`) are expanded by
`mode="before"` validators into one canonical form, so the compiler sees no unions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from app.calls.call_control import DEFAULT_FUNCTION_TIMEOUT_S, MAX_FUNCTION_TIMEOUT_S
from app.rules.schedule import ScheduleSpec

_FROZEN = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]


def _as_text(value: Any) -> Any:
    # Unquoted numbers arrive as ints from YAML; rule files mean the digits.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class NumberTermSpec(BaseModel):
    """Exactly one of the keys of a number condition."""

    model_config = _FROZEN

    exact: str | None = None
    prefix: str | None = None
    pattern: str | None = None
    regex: str | None = None
    in_: Name | None = Field(default=None, alias="in")
    country: tuple[str, ...] | None = None
    anonymous: StrictBool | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        value = _as_text(value)
        if isinstance(value, str):
            if value == "anonymous":
                return {"anonymous": True}
            if value.endswith("*"):
                return {"prefix": value}
            return {"exact": value}
        if isinstance(value, dict):
            value = {k: _as_text(v) for k, v in value.items()}
            if isinstance(value.get("country"), str):
                value["country"] = (value["country"],)
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> NumberTermSpec:
        # Counted by value: `{in: null}` names no condition at all.
        if sum(getattr(self, name) is not None for name in type(self).model_fields) != 1:
            raise ValueError(
                "a number condition takes exactly one of exact, prefix, pattern, regex, in,"
                " country, anonymous"
            )
        return self


def _as_tuple(value: Any) -> Any:
    return value if isinstance(value, list | tuple) else [value]


NumberConditionSpec = Annotated[tuple[NumberTermSpec, ...], Field(min_length=1)]


class HeaderTestSpec(BaseModel):
    """`"exact value"`, `{regex: ...}` or `{present: true|false}`."""

    model_config = _FROZEN

    equals: str | None = None
    regex: str | None = None
    present: StrictBool | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        value = _as_text(value)
        return {"equals": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _exactly_one(self) -> HeaderTestSpec:
        if sum(getattr(self, name) is not None for name in type(self).model_fields) != 1:
            raise ValueError("a header test takes exactly one of a value, regex, present")
        return self


class WhenSpec(BaseModel):
    """A mapping of conditions, ANDed."""

    model_config = _FROZEN

    caller: NumberConditionSpec | None = None
    called: NumberConditionSpec | None = None
    header: dict[str, HeaderTestSpec] | None = None
    schedule: Name | None = None
    # Which API announced the call, and its media protection.
    api: Literal["realtime", "live"] | None = None
    media_security: Literal["srtp", "rtp"] | None = None
    all: tuple[WhenSpec, ...] | None = None
    any: tuple[WhenSpec, ...] | None = None
    not_: WhenSpec | None = Field(default=None, alias="not")

    @model_validator(mode="before")
    @classmethod
    def _wrap_single_terms(cls, value: Any) -> Any:
        if isinstance(value, dict):
            value = dict(value)
            for key in ("caller", "called"):
                if key in value and value[key] is not None:
                    value[key] = _as_tuple(value[key])
        return value


class SplitChoiceSpec(BaseModel):
    """One profile of a split and its share of the calls."""

    model_config = _FROZEN

    profile: Name
    weight: StrictInt = Field(ge=1, le=1_000_000)


class AcceptSpec(BaseModel):
    """`{profile, overrides?}`, or `{split: [{profile, weight}, ...]}` (A/B by call_id)."""

    model_config = _FROZEN

    profile: Name | None = None
    overrides: dict[str, Any] | None = None
    split: Annotated[tuple[SplitChoiceSpec, ...], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _profile_or_split(self) -> AcceptSpec:
        if (self.profile is None) == (self.split is None):
            raise ValueError("accept takes either a profile or a split")
        if self.split is not None and self.overrides is not None:
            raise ValueError(
                "a split takes no overrides: give each variant its own profile (extends helps)"
            )
        return self


class ReferSpec(BaseModel):
    """A refer: by default carried out after an accept with `profile`."""

    model_config = _FROZEN

    target_uri: str = Field(min_length=1, max_length=2048)
    profile: Name | None = None
    announce: str | None = Field(default=None, min_length=1, max_length=4000)
    before_accept: StrictBool = False

    @model_validator(mode="after")
    def _nothing_to_say_before_accept(self) -> ReferSpec:
        if self.before_accept and (self.profile is not None or self.announce is not None):
            raise ValueError(
                "a refer sent before the accept has no session: profile and announce"
                " need before_accept: false"
            )
        return self


class RejectSpec(BaseModel):
    model_config = _FROZEN

    status_code: StrictInt = Field(default=603, ge=400, le=699)


class ActionSpec(BaseModel):
    """Exactly one of accept, refer, reject."""

    model_config = _FROZEN
    choices: ClassVar[tuple[str, ...]] = ("accept", "refer", "reject")

    accept: AcceptSpec | None = None
    refer: ReferSpec | None = None
    reject: RejectSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ActionSpec:
        chosen = [k for k in self.choices if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(f"takes exactly one of {', '.join(self.choices)}")
        return self

    @property
    def kind(self) -> Literal["accept", "refer", "reject"]:
        if self.accept is not None:
            return "accept"
        return "refer" if self.refer is not None else "reject"


class RuleSpec(ActionSpec):
    """One rule: a name, a `when`, and its action (or `consult: SERVICE`, which asks for one)."""

    choices: ClassVar[tuple[str, ...]] = ("accept", "refer", "reject", "consult")

    name: Name
    when: WhenSpec | None = None
    consult: Name | None = None


class ExpectSpec(BaseModel):
    model_config = _FROZEN

    rule: Name | None = None
    action: Literal["accept", "refer", "reject"] | None = None
    status_code: StrictInt | None = None
    target_uri: str | None = None
    profile: Name | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return {"rule": value} if isinstance(value, str) else value


class TestCaseSpec(BaseModel):
    model_config = _FROZEN

    from_: str = Field(alias="from")
    to: str
    headers: dict[str, str] | None = None
    at: datetime | None = None
    # The API that announces the call, and its media protection.
    api: Literal["realtime", "live"] = "realtime"
    media_security: str | None = Field(default=None, min_length=1, max_length=32)
    # Stubbed answers of `services`, by service name: the JSON a service would answer.
    consult: dict[Name, dict[str, Any]] | None = None
    expect: ExpectSpec

    @model_validator(mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            value = dict(value)
            for key in ("from", "to"):
                if key in value:
                    value[key] = _as_text(value[key])
        return value


class ListSpec(BaseModel):
    """A named number list: inline entries, or a file of one entry a line."""

    model_config = _FROZEN

    numbers: tuple[str, ...] | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {"numbers": [_as_text(v) for v in value]}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ListSpec:
        if (self.numbers is None) == (self.file is None):
            raise ValueError("a list is either a YAML list of numbers or {file: path}")
        return self


class ServiceSpec(BaseModel):
    """One of your own services that `consult` rules ask."""

    model_config = _FROZEN

    url: str = Field(min_length=1, max_length=2048)
    timeout_s: float = Field(default=1.5, gt=0, le=5)


class TransferTargetSpec(BaseModel):
    """One of the top-level `transfer_targets`: where `transfer_call` may send the caller."""

    model_config = _FROZEN

    target_uri: str = Field(min_length=1, max_length=2048)
    description: str = Field(default="", max_length=1000)


class FunctionSpec(BaseModel):
    """One of the top-level `functions`: a tool the company's service answers (section 13)."""

    model_config = _FROZEN

    description: str = Field(default="", max_length=4000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str = Field(min_length=1, max_length=2048)
    timeout_s: float = Field(default=DEFAULT_FUNCTION_TIMEOUT_S, gt=0, le=MAX_FUNCTION_TIMEOUT_S)


class DefaultsSpec(BaseModel):
    model_config = _FROZEN

    timezone: str = "UTC"
    region: str | None = Field(default=None, min_length=2, max_length=2)


class RuleFileSpec(BaseModel):
    """A whole rule file. Profiles stay raw here: they are merged (`extends`) first."""

    model_config = _FROZEN

    version: Literal[1]
    defaults: DefaultsSpec = DefaultsSpec()
    profiles: dict[Name, dict[str, Any]] = Field(default_factory=dict)
    lists: dict[Name, ListSpec] = Field(default_factory=dict)
    schedules: dict[Name, ScheduleSpec] = Field(default_factory=dict)
    services: dict[Name, ServiceSpec] = Field(default_factory=dict)
    transfer_targets: dict[Name, TransferTargetSpec] = Field(default_factory=dict)
    functions: dict[Name, FunctionSpec] = Field(default_factory=dict)
    rules: tuple[RuleSpec, ...] = ()
    default: ActionSpec
    on_error: ActionSpec | None = None
    tests: tuple[TestCaseSpec, ...] = ()
