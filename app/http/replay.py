"""`POST /admin/replay`: decide the recorded calls again with uploaded candidate rules.

The uploaded files stay in memory: they are handed to a separate loading process (the
same time and memory limits as a reload, app.rules_reloading) and never written to disk
nor put into service. One replay runs at a time per process.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from app.call_replay import replay_calls
from app.http.admin import AdminDep
from app.rules.problems import RuleFileError
from app.rules_reloading import load_in_process
from app.store import CALL_LOG_SIZE, StoreUnavailable

MAX_REPLAY_BODY_BYTES = 4 * 1024 * 1024
MAX_REPLAY_FILES = 64
_FILE_NAME = r"^[^\x00]{1,255}$"

router = APIRouter(prefix="/admin")


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: Annotated[
        dict[Annotated[str, Field(pattern=_FILE_NAME)], str],
        Field(min_length=1, max_length=MAX_REPLAY_FILES),
    ]
    main: Annotated[str, Field(pattern=_FILE_NAME)]
    limit: Annotated[int, Field(ge=1, le=CALL_LOG_SIZE)] = CALL_LOG_SIZE


class _TooLarge(Exception):
    pass


async def _read_capped(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REPLAY_BODY_BYTES:
        raise _TooLarge
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REPLAY_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/replay")
async def replay(request: Request, services: AdminDep) -> JSONResponse:
    if not services.settings.keep_call_inputs:
        return JSONResponse(
            {"error": "replay is unavailable: SIP_ROUTER_KEEP_CALL_INPUTS is false"},
            status_code=409,
        )
    try:
        body = await _read_capped(request)
    except _TooLarge:
        return JSONResponse({"error": "the body is larger than 4 MiB"}, status_code=413)
    except ClientDisconnect:
        return JSONResponse({"error": "the body did not arrive"}, status_code=400)
    try:
        payload = ReplayRequest.model_validate(json.loads(body))
    except (ValueError, ValidationError, RecursionError):
        return JSONResponse(
            {"error": 'expected {"files": {name: text}, "main": name, "limit"?: 1-1000}'},
            status_code=422,
        )
    if payload.main not in payload.files:
        return JSONResponse({"errors": [f"{payload.main}: not among the files"]}, status_code=422)
    settings = services.settings
    async with services.replay_lock:
        try:
            candidate = await asyncio.to_thread(
                load_in_process,
                Path(payload.main),
                datetime.now(tz=UTC),
                timeout_s=settings.reload_timeout_s,
                memory_bytes=settings.reload_memory_mb * 1024**2,
                files=payload.files,
            )
        except RuleFileError as exc:
            return JSONResponse({"errors": [str(p) for p in exc.problems]}, status_code=422)
        try:
            records = await services.store.call_records(payload.limit)
        except StoreUnavailable:
            return JSONResponse({"error": "the shared store does not answer"}, status_code=503)
        report = await asyncio.to_thread(replay_calls, candidate, records)
    return JSONResponse(report.as_json())
