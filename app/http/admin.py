"""`/admin/*`: rules, reload, simulate, call log, hangup; behind SIP_ROUTER_ADMIN_TOKEN.

Without a configured token every admin path answers 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.call_api import CallApi
from app.call_replay import export_json
from app.http.services import Services, ServicesDep
from app.recorded_calls import call_json
from app.rules.file_reading import FileRefused, RuleFolder
from app.rules.problems import RuleFileError
from app.rules.simulation import decision_json, simulated_context
from app.simulated_numbers import simulated_number_problem
from app.store import StoreUnavailable
from app.webhook_event import MAX_MEDIA_SECURITY_CHARS, SessionId

audit = logging.getLogger("sip_router.audit")
MAX_SHOWN_FILE_BYTES = 256 * 1024


async def require_admin(request: Request, services: ServicesDep) -> Services:
    token = services.settings.admin_token
    if token is None:
        raise HTTPException(status_code=404, detail="Not Found")
    given = request.headers.get("authorization", "")
    expected = f"Bearer {token.get_secret_value()}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=401, detail="admin token required", headers={"WWW-Authenticate": "Bearer"}
        )
    return services


AdminDep = Annotated[Services, Depends(require_admin)]

router = APIRouter(prefix="/admin")


class SimulateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", min_length=1, max_length=64)
    to: str = Field(min_length=1, max_length=64)
    headers: dict[str, Annotated[str, Field(max_length=1024)]] | None = None
    at: datetime | None = None
    api: CallApi = "realtime"
    media_security: str | None = Field(
        default=None, min_length=1, max_length=MAX_MEDIA_SECURITY_CHARS
    )


@router.get("/rules")
async def rules(services: AdminDep, contents: bool = False) -> dict[str, Any]:
    status = services.rules.status()
    ruleset = services.rules.current
    # Every rule in service is listed, 0 when it never decided; `default` counts the calls
    # no rule matched. The counts are this process's since it started (not shared).
    hits = dict.fromkeys([r.name for r in ruleset.rules] if ruleset else [], 0)
    hits["default"] = 0
    hits.update(services.metrics.rule_hits)
    return {
        "version": status.version,
        "files": list(status.files),
        "loaded_at": status.loaded_at,
        "last_error": status.last_error,
        "warnings": list(ruleset.warnings) if ruleset else [],
        "rule_hits": hits,
        **(
            {
                "contents": await asyncio.to_thread(
                    rule_file_texts, services.rules.path, status.files
                )
            }
            if contents
            else {}
        ),
    }


def rule_file_texts(main: Path, files: Sequence[str]) -> list[dict[str, Any]]:
    """The rule files as they are on disk now (which may be newer than the rules in
    service), read with the loader's containment; files over 256 KiB are not shown."""
    folder = RuleFolder(main)
    texts: list[dict[str, Any]] = []
    for name in files:
        relative = os.path.relpath(name, main.parent)
        # `name`: the file as the rules name it, relative to the main file's folder.
        shown: dict[str, Any] = {"file": name, "name": relative}
        try:
            if Path(name) == main:
                shown["text"] = folder.read_main()
            else:
                shown["text"] = folder.read_named(relative, MAX_SHOWN_FILE_BYTES)
        except FileRefused as exc:
            shown["error"] = f"not shown: {exc}"
        texts.append(shown)
    return texts


@router.post("/reload")
async def reload(services: AdminDep) -> JSONResponse:
    try:
        ruleset = await services.rules.reload("admin request")
    except RuleFileError as exc:
        return JSONResponse(
            {"status": "error", "errors": [str(p) for p in exc.problems]}, status_code=422
        )
    return JSONResponse(
        {"status": "ok", "version": ruleset.version, "warnings": list(ruleset.warnings)}
    )


@router.post("/simulate")
async def simulate(request: Request, services: AdminDep) -> JSONResponse:
    try:
        payload = SimulateRequest.model_validate(json.loads(await request.body()))
    except (ValueError, ValidationError, RecursionError):
        return JSONResponse(
            {
                "error": 'expected {"from", "to", "headers"?, "at"?: ISO-8601,'
                ' "api"?: "realtime"|"live", "media_security"?}'
            },
            status_code=422,
        )
    ruleset = services.rules.current
    if ruleset is None:
        return JSONResponse({"error": "routing rules are not loaded"}, status_code=503)
    for name, number, caller in (("from", payload.from_, True), ("to", payload.to, False)):
        problem = simulated_number_problem(number, ruleset.region, caller=caller)
        if problem is not None:
            return JSONResponse({"error": f"{name}: {problem}"}, status_code=422)
    at = payload.at or datetime.now(tz=UTC)
    ctx = simulated_context(
        ruleset,
        payload.from_,
        payload.to,
        at,
        payload.headers,
        api=payload.api,
        media_security=payload.media_security,
    )
    return JSONResponse(decision_json(ruleset.decide(ctx, explain=True)))


@router.get("/calls")
async def calls(
    services: AdminDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    inputs: bool = False,
) -> JSONResponse:
    """The call log; `inputs=true` exports the calls with their recorded decision inputs
    (unmasked), one per call, for `sip-router replay --calls` (one call a JSONL line)."""
    try:
        if inputs:
            records = await services.store.call_records(limit)
            return JSONResponse({"calls": [export_json(r) for r in records]})
        entries = await services.store.recent(limit)
    except StoreUnavailable:
        return JSONResponse({"error": "the shared store does not answer"}, status_code=503)
    return JSONResponse({"calls": entries})


@router.get("/calls/{call_id}")
async def call(call_id: str, services: AdminDep) -> JSONResponse:
    """One call in full: its call log entry, the decision with its trace, every upstream
    request. The call's later life (sideband events, transcript, end) joins the entry's
    keys when sip-router stays with the call; absent keys mean nothing was recorded."""
    try:
        CallIdModel.model_validate({"call_id": call_id})
    except ValidationError:
        return JSONResponse({"error": "not a call id"}, status_code=400)
    try:
        record = await services.store.call_record(call_id)
    except StoreUnavailable:
        return JSONResponse({"error": "the shared store does not answer"}, status_code=503)
    if record is None:
        return JSONResponse({"error": "no such call in the call log"}, status_code=404)
    return JSONResponse(call_json(record))


@router.post("/calls/{call_id}/hangup")
async def hangup(call_id: str, request: Request, services: AdminDep) -> JSONResponse:
    try:
        CallIdModel.model_validate({"call_id": call_id})
    except ValidationError:
        return JSONResponse({"error": "not a call id"}, status_code=400)
    client = request.client.host if request.client else None
    # Realtime calls and GPT-Live sessions hang up on their own endpoints.
    api = await services.processor.call_api(call_id)
    if services.settings.dry_run:
        _audit_hangup(client, call_id, api, "dry_run", None)
        return JSONResponse({"status": "dry_run", "call_id": call_id})
    result = await services.processor.hangup(call_id, api)
    _audit_hangup(client, call_id, api, result.outcome, result.status)
    if result.outcome == "ok":
        return JSONResponse({"status": "ok", "call_id": call_id})
    if result.outcome == "gone":
        return JSONResponse({"status": "gone", "call_id": call_id}, status_code=404)
    return JSONResponse(
        {"status": result.outcome, "call_id": call_id, "detail": result.detail}, status_code=502
    )


class CallIdModel(BaseModel):
    # A Realtime call id or a GPT-Live session id (the longer of the two bounds).
    call_id: SessionId


def _audit_hangup(
    client: str | None, call_id: str, api: str, outcome: str, status: int | None
) -> None:
    """Who hung up which call, and what OpenAI answered; the token never appears."""
    audit.warning(
        "admin hangup",
        extra={
            "fields": {
                "audit": True,
                "client": client,
                "call_id": call_id,
                "api": api,
                "outcome": outcome,
                "upstream_status": status,
            }
        },
    )
