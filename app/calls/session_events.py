"""What a call's state machine after the accept takes in and gives out, whatever its API.

Events in: what the sideband, the call endpoints, the company's functions and the timers
say, each with its time (`at`, seconds on the driver's clock). Commands out: what the
driver (`sideband_connection.py`) is asked to do. Realtime's `CallSession` and GPT-Live's
`LiveCallSession` both speak this, so one driver runs either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# --- events in -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SidebandOpened:
    """The sideband WebSocket is open (the first time, or again after a reconnect)."""

    at: float


@dataclass(frozen=True, slots=True)
class SidebandMessage:
    """One message from the sideband, as received (it may not be JSON at all)."""

    data: str | bytes
    at: float


@dataclass(frozen=True, slots=True)
class SidebandClosed:
    """The sideband is gone for good; `reason` says why (the driver's view)."""

    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class FunctionAnswered:
    """A company function's answer: `output` on success, else `error` (text for the agent)."""

    call_id: str
    at: float
    output: str | None = None
    error: str | None = None


ActionOutcome = Literal["ok", "gone", "failed", "unknown"]
# What sip-router does to a call on its own after the accept.
ActionVerb = Literal["refer", "hangup"]


@dataclass(frozen=True, slots=True)
class ActionFinished:
    """A refer or hangup sent on the call's endpoint ended with `outcome`."""

    verb: ActionVerb
    outcome: ActionOutcome
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TimerFired:
    key: str
    at: float


Event = (
    SidebandOpened
    | SidebandMessage
    | SidebandClosed
    | FunctionAnswered
    | ActionFinished
    | TimerFired
)

# --- commands out ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendEvent:
    """Send this client event on the sideband (JSON)."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PerformAction:
    """POST `verb` on the call's endpoint with `body`."""

    verb: ActionVerb
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CallFunction:
    """Ask the company's function `name` with `arguments`; answer with FunctionAnswered."""

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Fire TimerFired(key) at `at` (replacing a timer with the same key)."""

    key: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a log line and a metric; `what` names it, `fields` say the rest."""

    what: str
    level: Literal["debug", "info", "warning"] = "info"
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finish:
    """The call is over for sip-router: close the sideband and record `end_reason`."""

    end_reason: str
    at: float


Command = SendEvent | PerformAction | CallFunction | SetTimer | CancelTimer | Note | Finish

# --- state -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """One transcribed turn: `caller` or `agent`, its text, and when it arrived."""

    role: Literal["caller", "agent"]
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """The transfer's result for the call log: `status` is the refer's outcome."""

    target_uri: str
    status: str
    at: float
