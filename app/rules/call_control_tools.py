"""The function tools a profile's call-control keys add to the accept body.

Pure: built from `CallControl` with the accept body's own models, so they are validated
like any tool a profile lists itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.calls.call_control import END_CALL, TRANSFER_CALL, CallControl
from app.rules.accept_body import FunctionTool, SessionConfig

_TRANSFER_DESCRIPTION = (
    "Transfer the caller to another destination. Tell the caller first that you are"
    " transferring them; the call leaves you once your words have been said."
)
_END_CALL_DESCRIPTION = (
    "End the call. Say goodbye to the caller first; the call is hung up once your words"
    " have been said."
)


def call_control_tools(control: CallControl) -> list[FunctionTool]:
    """The tools `transfer_call`, `end_call` and the company functions, in that order."""
    tools: list[FunctionTool] = []
    if control.transfer:
        tools.append(
            _tool(TRANSFER_CALL, _transfer_description(control), _transfer_parameters(control))
        )
    if control.end_call:
        tools.append(_tool(END_CALL, _END_CALL_DESCRIPTION, {"type": "object", "properties": {}}))
    for function in control.functions.values():
        tools.append(_tool(function.name, function.description, dict(function.parameters)))
    return tools


def with_call_control_tools(config: SessionConfig, control: CallControl) -> SessionConfig:
    """`config` with the call-control tools appended; ValueError on a name the profile has."""
    added = call_control_tools(control)
    if not added:
        return config
    existing = list(config.tools or ())
    refuse_taken_names(existing, added)
    return config.model_copy(update={"tools": [*existing, *added]})


def refuse_taken_names(existing: Iterable[object], added: Iterable[FunctionTool]) -> None:
    """ValueError on an added tool whose name a tool the profile lists already has."""
    taken = {getattr(tool, "name", None) for tool in existing}
    for tool in added:
        if tool.name in taken:
            raise ValueError(f"the profile already has a tool named {tool.name!r}")


def _tool(name: str, description: str, parameters: dict[str, Any]) -> FunctionTool:
    return FunctionTool.model_validate(
        {"type": "function", "name": name, "description": description, "parameters": parameters}
    )


def _transfer_description(control: CallControl) -> str:
    lines = [_TRANSFER_DESCRIPTION, "Targets:"]
    for name, target in control.transfer_targets.items():
        lines.append(f"- {name}: {target.description}" if target.description else f"- {name}")
    return "\n".join(lines)


def _transfer_parameters(control: CallControl) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "target": {
                "type": "string",
                "enum": list(control.transfer_targets),
                "description": "Who to transfer the caller to.",
            }
        },
        "required": ["target"],
        "additionalProperties": False,
    }
