"""What sip-router does on a call after accepting it: the profile's call-control keys.

Filled from the rule file (greeting, transfer targets, end_call, functions, transcript, an
after-accept refer); the call's state machine and its accept-body tools read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

TRANSFER_CALL = "transfer_call"
END_CALL = "end_call"
BUILT_IN_FUNCTIONS = frozenset({TRANSFER_CALL, END_CALL})
# A function's `timeout_s` defaults to 5 and may not exceed 30.
DEFAULT_FUNCTION_TIMEOUT_S = 5.0
MAX_FUNCTION_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class TransferTarget:
    """Where `transfer_call` may send the caller: a rendered SIP/tel URI and what it is for."""

    target_uri: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class CompanyFunction:
    """A function the agent may call, answered by the company's service at `url` (section 13)."""

    name: str
    url: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"type": "object", "properties": {}})
    )
    timeout_s: float = DEFAULT_FUNCTION_TIMEOUT_S

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= MAX_FUNCTION_TIMEOUT_S:
            raise ValueError(
                f"timeout_s of function {self.name!r} must be above 0 and at most"
                f" {MAX_FUNCTION_TIMEOUT_S:g}"
            )
        if self.name in BUILT_IN_FUNCTIONS:
            raise ValueError(f"{self.name!r} is a built-in function name")


@dataclass(frozen=True, slots=True)
class ReferFailure:
    """What the rule file's `on_error` does to a live call whose refer rule failed.

    `session`: a `session.update` with that profile's session (the agent keeps the call,
    under `control`, that profile's call control); `hangup`: hang up (an `on_error`
    reject); `refer`: refer to `target_uri` instead.
    """

    kind: Literal["session", "hangup", "refer"]
    session: Mapping[str, Any] | None = None
    target_uri: str | None = None
    control: CallControl | None = None


HANG_UP = ReferFailure("hangup")


@dataclass(frozen=True, slots=True)
class ReferAfterAccept:
    """A refer rule carried out on the live call: say `announce` (if any), then refer."""

    target_uri: str
    announce: str | None = None
    on_error: ReferFailure = HANG_UP


@dataclass(frozen=True, slots=True)
class CallControl:
    """The call-control keys of one call's profile, already rendered for this call."""

    greeting: str | None = None
    transfer_targets: Mapping[str, TransferTarget] = field(
        default_factory=lambda: MappingProxyType({})
    )
    end_call: bool = False
    functions: Mapping[str, CompanyFunction] = field(default_factory=lambda: MappingProxyType({}))
    transcript: bool = False
    refer: ReferAfterAccept | None = None

    @property
    def transfer(self) -> bool:
        """Whether the agent is offered `transfer_call`."""
        return bool(self.transfer_targets)

    @property
    def needs_sideband(self) -> bool:
        """Whether sip-router must stay with the call after the accept."""
        return bool(
            self.greeting
            or self.transfer
            or self.end_call
            or self.functions
            or self.transcript
            or self.refer is not None
        )


def control_to_json(control: CallControl) -> dict[str, Any]:
    """`control` as JSON data, for a replica that takes the call over (call_ownership.py)."""
    data: dict[str, Any] = {
        "greeting": control.greeting,
        "transfer_targets": {
            name: {"target_uri": t.target_uri, "description": t.description}
            for name, t in control.transfer_targets.items()
        },
        "end_call": control.end_call,
        "functions": {
            name: {
                "url": f.url,
                "description": f.description,
                "parameters": dict(f.parameters),
                "timeout_s": f.timeout_s,
            }
            for name, f in control.functions.items()
        },
        "transcript": control.transcript,
    }
    if control.refer is not None:
        on_error = control.refer.on_error
        data["refer"] = {
            "target_uri": control.refer.target_uri,
            "announce": control.refer.announce,
            "on_error": {
                "kind": on_error.kind,
                "session": dict(on_error.session) if on_error.session is not None else None,
                "target_uri": on_error.target_uri,
                "control": (
                    control_to_json(on_error.control) if on_error.control is not None else None
                ),
            },
        }
    return data


def control_from_json(data: Mapping[str, Any]) -> CallControl:
    """The CallControl `control_to_json` wrote; ValueError/TypeError/KeyError if it is not."""
    refer = None
    if data.get("refer") is not None:
        written = data["refer"]
        on_error = written["on_error"]
        refer = ReferAfterAccept(
            str(written["target_uri"]),
            written.get("announce"),
            ReferFailure(
                on_error["kind"],
                on_error.get("session"),
                on_error.get("target_uri"),
                control_from_json(on_error["control"]) if on_error.get("control") else None,
            ),
        )
    return CallControl(
        greeting=data.get("greeting"),
        transfer_targets=MappingProxyType(
            {
                name: TransferTarget(str(t["target_uri"]), str(t.get("description", "")))
                for name, t in data.get("transfer_targets", {}).items()
            }
        ),
        end_call=bool(data.get("end_call")),
        functions=MappingProxyType(
            {
                name: CompanyFunction(
                    name,
                    str(f["url"]),
                    str(f.get("description", "")),
                    MappingProxyType(dict(f.get("parameters", {}))),
                    float(f.get("timeout_s", DEFAULT_FUNCTION_TIMEOUT_S)),
                )
                for name, f in data.get("functions", {}).items()
            }
        ),
        transcript=bool(data.get("transcript")),
        refer=refer,
    )
