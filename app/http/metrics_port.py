"""The metrics port (`serve --metrics-port N`): GET /metrics there and nothing else.

uvicorn listens on both ports with the same app; the port a request arrived on is the
local address of its connection (`scope["server"]`), which no client header can change.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.metrics import Metrics


class MetricsPortMiddleware:
    """Answer requests that arrived on `port` from the metrics; pass every other on."""

    def __init__(self, app: ASGIApp, *, port: int, metrics: Metrics) -> None:
        self.app = app
        self.port = port
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "http" or server is None or server[1] != self.port:
            await self.app(scope, receive, send)
            return
        response: Response
        if scope["path"] != "/metrics":
            response = PlainTextResponse("Not Found", status_code=404)
        elif scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("Method Not Allowed", status_code=405)
        else:
            response = Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)
        await response(scope, receive, send)
