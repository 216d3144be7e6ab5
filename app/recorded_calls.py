"""What the call log keeps of one call beyond its masked list entry.

Each call log entry has a side record keyed by its call id, kept as long as the entry: the
entry itself, the decision with a compact trace, every upstream request with its status
and latency and, with SIP_ROUTER_KEEP_CALL_INPUTS, the decision's inputs as received (the
SIP headers, unmasked, and `created_at`) so `replay` can decide the call again. The inputs
are capped: at most MAX_KEPT_HEADERS headers and MAX_KEPT_HEADER_BYTES in all, each value
cut where decisions cut it (app.sip_identity), so one record stays within a few KiB.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.call_api import CallApi
from app.phone_numbers import mask_number
from app.rules.call_context import CallContext
from app.rules.ruleset import Decision, Ruleset
from app.sip_identity import SipHeaders, parse_parties

# The call's later life when sip-router stays with it (section 10), joined to its record
# when the call ends: shown as they are by `GET /admin/calls/{call_id}`, absent otherwise.
from app.store.call_log import LIFECYCLE_KEYS

MAX_KEPT_HEADERS = 64
MAX_KEPT_HEADER_BYTES = 16 * 1024
MAX_HEADER_VALUE_CHARS = 256
# Trace steps kept per decision: the rules tried before the one that matched, then it.
MAX_TRACE_STEPS = 20


def kept_inputs(
    created_at: int,
    sip_headers: Iterable[tuple[str, str]],
    *,
    api: CallApi = "realtime",
    media_security: str | None = None,
) -> dict[str, Any]:
    """The decision inputs of one delivery, capped; `truncated` when headers were left out.

    `api` (always) and `media_security` (when the delivery gave one) are kept too: rules
    may read them.
    """
    kept: list[list[str]] = []
    size = 0
    truncated = False
    for name, value in sip_headers:
        pair = [name[:MAX_HEADER_VALUE_CHARS], value[:MAX_HEADER_VALUE_CHARS]]
        pair_size = len(pair[0].encode()) + len(pair[1].encode())
        if len(kept) >= MAX_KEPT_HEADERS or size + pair_size > MAX_KEPT_HEADER_BYTES:
            truncated = True
            break
        kept.append(pair)
        size += pair_size
    inputs: dict[str, Any] = {"created_at": created_at, "sip_headers": kept, "api": api}
    if media_security is not None:
        inputs["media_security"] = media_security
    if truncated:
        inputs["truncated"] = True
    return inputs


def context_from_inputs(inputs: Mapping[str, Any], call_id: str, ruleset: Ruleset) -> CallContext:
    """The CallContext the recorded inputs describe, read with `ruleset`'s region.

    `api` and `media_security` are those recorded with the call; a
    record without `api` was a Realtime call.

    ValueError when `inputs` is not what `kept_inputs` writes.
    """
    created_at = inputs.get("created_at")
    pairs = inputs.get("sip_headers")
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        raise ValueError("recorded inputs lack created_at")
    if not isinstance(pairs, list) or not all(
        isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in pairs
    ):
        raise ValueError("recorded inputs lack sip_headers")
    headers = SipHeaders.from_pairs((str(n), str(v)) for n, v in pairs)
    try:
        at = datetime.fromtimestamp(created_at, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("recorded created_at is out of range") from None
    api = inputs.get("api", "realtime")
    if api not in ("realtime", "live"):
        raise ValueError("recorded api is neither realtime nor live")
    media_security = inputs.get("media_security")
    if media_security is not None and not isinstance(media_security, str):
        raise ValueError("recorded media_security is not a string")
    parties = parse_parties(headers, ruleset.region or "ZZ")
    return CallContext(
        call_id=call_id,
        parties=parties,
        headers=headers,
        at=at,
        api="live" if api == "live" else "realtime",
        media_security=media_security,
    )


def compact_trace(
    ruleset: Ruleset, ctx: CallContext, rule: str | None, *, mask: bool = True
) -> dict[str, Any]:
    """Why the decision went to `rule`: the rules tried (through the rule index) until it.

    Rules the index ruled out for this call's numbers and headers are not explained, only
    counted, so recording a trace costs what deciding costs, whatever the file's size.
    With `mask`, the caller's and called numbers are masked in the reasons, as in the log.
    """
    numbers = [p.e164 for p in (ctx.parties.caller, ctx.parties.called) if p.e164] if mask else []
    masks = [(number, mask_number(number)) for number in numbers]
    steps: list[list[Any]] = []
    tried = 0
    for position in ruleset.index.candidates(ctx):
        compiled = ruleset.rules[position]
        tried += 1
        if compiled.name != rule and len(steps) >= MAX_TRACE_STEPS - 1:
            continue
        matched, reason = compiled.when.explain(ctx)
        for number, masked in masks:
            reason = reason.replace(number, masked).replace(number[1:], masked[1:])
        steps.append([compiled.name, matched, reason])
        if compiled.name == rule:
            break
    return {"steps": steps, "rules": len(ruleset.rules), "tried": tried}


def trace_json(compact: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The recorded trace in the shape of `simulate --json`'s `trace`."""
    steps = compact.get("steps")
    if not isinstance(steps, list):
        return []
    return [
        {"rule": s[0], "matched": bool(s[1]), "reason": s[2]}
        for s in steps
        if isinstance(s, list) and len(s) == 3
    ]


def decision_fields(decision: Decision, chosen_action: str) -> dict[str, Any]:
    """What the record keeps of a decision besides its trace."""
    fields: dict[str, Any] = {
        "rule": decision.rule or "default",
        "action": chosen_action,
        "sent_action": decision.action,
        "ruleset": decision.ruleset,
        "profile": decision.profile,
        "error": decision.error,
    }
    return {k: v for k, v in fields.items() if v is not None}


def call_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as `GET /admin/calls/{call_id}` shows it: the call log entry's keys, then
    `decision` (with `trace`), `requests` and `inputs_kept`; never the unmasked inputs."""
    entry = record.get("entry")
    shown: dict[str, Any] = dict(entry) if isinstance(entry, Mapping) else {}
    shown["call_id"] = record.get("call_id")
    decided = record.get("decision")
    if isinstance(decided, Mapping):
        trace = decided.get("trace")
        decision = {k: v for k, v in decided.items() if k != "trace"}
        if isinstance(trace, Mapping):
            decision["trace"] = trace_json(trace)
            decision["rules_tried"] = trace.get("tried")
            decision["rules_total"] = trace.get("rules")
        shown["decision"] = decision
    requests = record.get("requests")
    shown["requests"] = list(requests) if isinstance(requests, list) else []
    shown["inputs_kept"] = isinstance(record.get("inputs"), Mapping)
    for key in LIFECYCLE_KEYS:
        if key in record:
            shown[key] = record[key]
    return shown


def newest_per_call(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per call id (the first seen: records come newest first)."""
    seen: set[str] = set()
    unique = []
    for record in records:
        call_id = record.get("call_id")
        if not isinstance(call_id, str) or call_id in seen:
            continue
        seen.add(call_id)
        unique.append(record)
    return unique
