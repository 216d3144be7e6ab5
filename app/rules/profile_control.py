"""A profile's call-control keys, as written and as compiled.

`greeting`, `transfer`, `end_call`, `functions` and `transcript` are sip-router's own keys
of a profile: never sent upstream as such. The top-level `transfer_targets` and `functions`
define what they name. Compiled, they render per call into the `CallControl` the call's
driver follows, and give the tools added to the accept body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from app.calls.call_control import (
    CallControl,
    CompanyFunction,
    TransferTarget,
)
from app.rules.call_control_tools import call_control_tools
from app.rules.file_model import Name
from app.rules.target_uris import check_target_uri
from app.rules.templates import Template, TemplateRenderError

CONTROL_KEYS = ("greeting", "transfer", "end_call", "functions", "transcript")

# The session of a refer rule without a `profile`: it only speaks the announcement.
ANNOUNCER_SESSION: Mapping[str, Any] = MappingProxyType(
    {
        "instructions": (
            "You are connecting a phone call. Say only what you are told to say, exactly,"
            " and nothing else."
        )
    }
)
ANNOUNCER_PROFILE = "(announcer)"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ProfileControlSpec(BaseModel):
    """The call-control keys of a profile, as written."""

    model_config = _FROZEN

    greeting: str | None = Field(default=None, min_length=1, max_length=4000)
    transfer: tuple[Name, ...] | None = Field(default=None, min_length=1)
    end_call: StrictBool | None = None
    functions: tuple[Name, ...] | None = Field(default=None, min_length=1)
    transcript: StrictBool | None = None


def parameters_problem(parameters: Mapping[str, Any]) -> tuple[tuple[str | int, ...], str] | None:
    """Where and why `parameters` is not a JSON Schema object, or None."""
    try:
        jsonschema.Draft202012Validator.check_schema(dict(parameters))
    except jsonschema.SchemaError as exc:
        return tuple(exc.path), f"parameters is not a valid JSON Schema ({exc.message[:200]})"
    if parameters.get("type") != "object":
        where: tuple[str | int, ...] = ("type",) if "type" in parameters else ()
        return where, 'parameters must be a JSON Schema object ("type": "object")'
    return None


class ControlRenderError(Exception):
    """A call-control template (greeting, a transfer target, an announcement) failed."""


@dataclass(frozen=True, slots=True)
class CompiledTransferTarget:
    target: Template
    description: str


@dataclass(frozen=True, slots=True)
class ProfileControl:
    """A profile's call-control keys with their names resolved, templates compiled."""

    greeting: Template | None = None
    # Plain dicts, never changed: a ruleset is pickled from the process that loads it.
    transfer: Mapping[str, CompiledTransferTarget] = field(default_factory=dict)
    end_call: bool = False
    functions: Mapping[str, CompanyFunction] = field(default_factory=dict)
    transcript: bool = False

    @property
    def is_static(self) -> bool:
        return (self.greeting is None or self.greeting.is_static) and all(
            t.target.is_static for t in self.transfer.values()
        )

    @property
    def added_tools(self) -> tuple[str, ...]:
        """The names of the tools these keys add to the accept body, in order."""
        return tuple(str(tool.name) for tool in call_control_tools(self.tool_control()))

    def tool_control(self) -> CallControl:
        """What the added tools are made from (names and descriptions: no rendering)."""
        return CallControl(
            transfer_targets=MappingProxyType(
                {
                    name: TransferTarget(t.target.source, t.description)
                    for name, t in self.transfer.items()
                }
            ),
            end_call=self.end_call,
            functions=self.functions,
        )

    def render(self, variables: Mapping[str, Any]) -> CallControl:
        """The call's CallControl; ControlRenderError when a template fails."""
        # The rules' own URI check; imported here because the ruleset imports this module.

        greeting = _render(self.greeting, variables, "greeting") if self.greeting else None
        targets: dict[str, TransferTarget] = {}
        for name, target in self.transfer.items():
            uri = _render(target.target, variables, f"transfer target {name}").strip()
            problem = check_target_uri(uri)
            if problem is not None:
                raise ControlRenderError(f"transfer target {name}: rendered {problem}")
            targets[name] = TransferTarget(uri, target.description)
        return CallControl(
            greeting=greeting,
            transfer_targets=MappingProxyType(targets),
            end_call=self.end_call,
            functions=self.functions,
            transcript=self.transcript,
        )


def _render(template: Template, variables: Mapping[str, Any], what: str) -> str:
    try:
        return template.render(variables)
    except TemplateRenderError as exc:
        raise ControlRenderError(f"{what} template: {exc}") from None


def control_summary(control: CallControl, added_tools: tuple[str, ...]) -> dict[str, Any]:
    """What sip-router would do after the accept, for simulate and the dry-run log."""
    summary: dict[str, Any] = {}
    if added_tools:
        summary["tools_added"] = list(added_tools)
    if control.greeting:
        summary["greeting"] = control.greeting
    if control.transfer_targets:
        summary["transfer_targets"] = {
            name: target.target_uri for name, target in control.transfer_targets.items()
        }
    if control.end_call:
        summary["end_call"] = True
    if control.functions:
        summary["functions"] = {name: f.url for name, f in control.functions.items()}
    if control.transcript:
        summary["transcript"] = True
    if control.refer is not None:
        refer: dict[str, Any] = {"target_uri": control.refer.target_uri}
        if control.refer.announce:
            refer["announce"] = control.refer.announce
        refer["on_error"] = control.refer.on_error.kind
        summary["refer_after_accept"] = refer
    return summary
