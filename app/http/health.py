"""Liveness, readiness and metrics (`metrics_router`: on the service port unless a metrics
port is configured, see app/http/metrics_port.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.http.services import ServicesDep
from app.store import StoreUnavailable

router = APIRouter()
metrics_router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    if services.processor.draining:
        return JSONResponse({"status": "unavailable", "reason": "shutting down"}, status_code=503)
    if services.rules.current is None:
        return JSONResponse(
            {"status": "unavailable", "reason": "routing rules are not loaded"}, status_code=503
        )
    try:
        await services.store.ping()
    except StoreUnavailable:
        return JSONResponse(
            {"status": "unavailable", "reason": "redis does not answer"}, status_code=503
        )
    return JSONResponse({"status": "ok", "ruleset": services.rules.current.version})


@metrics_router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
