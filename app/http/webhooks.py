"""`POST /webhooks/openai`: the raw body, capped at 64 KiB, handed to the call processor."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from app.errors import PayloadTooLarge
from app.http.services import Services

MAX_BODY_BYTES = 64 * 1024

router = APIRouter()


async def _read_capped(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge("the body is larger than 64 KiB")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge("the body is larger than 64 KiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_webhook(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        body = await _read_capped(request)
    except ClientDisconnect:
        # Gone before its body was complete (or closed at the request deadline): nothing
        # was received to act on, and nobody is left to answer.
        return Response(status_code=400)
    except PayloadTooLarge as exc:
        answer = await services.processor.refuse(exc)
    else:
        answer = await services.processor.handle(body, request.headers)
    return JSONResponse(answer.body, status_code=answer.status_code)


# A plain Starlette route: FastAPI's request handling (dependencies, parameter checks,
# answer serialization) has nothing to do here and costs a noticeable share of a webhook's
# CPU. The endpoint is not in an OpenAPI schema either way (the app serves none).
router.add_route("/webhooks/openai", receive_webhook, methods=["POST"])
