"""What every request sip-router sends to your own services shares (consult, functions):
their own client, Standard Webhooks signature headers, and an answer read up to a size
limit."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from app.upstream_transport import UpstreamClient, UpstreamTransport

# No service may take longer than this (timeout_s at most 5); the per-request bound
# is the service's own timeout_s, enforced around the whole exchange.
MAX_SERVICE_TIMEOUT_S = 5.0


OUTBOUND_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def outbound_http_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client for requests to your own services (consults and functions): its own pool,
    over aiohttp like OpenAI's client (less CPU per request than httpcore's pool, on the
    event loop the webhooks share), no redirects."""
    return UpstreamClient(
        transport=transport if transport is not None else UpstreamTransport(OUTBOUND_LIMITS),
        limits=OUTBOUND_LIMITS,
        timeout=httpx.Timeout(MAX_SERVICE_TIMEOUT_S),
        follow_redirects=False,
        headers={"user-agent": "sip-router"},
    )


def signature_headers(signer: Webhook, content: bytes, now_s: float) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` for `content`, signed as
    OpenAI signs its own webhooks, so any Standard Webhooks library verifies them."""
    message_id = "msg_" + secrets.token_hex(16)
    now = datetime.fromtimestamp(int(now_s), tz=UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(message_id, now, content.decode()),
    }


async def read_at_most(response: httpx.Response, limit: int) -> bytes | None:
    """The response body, or None once it grows past `limit` (the rest is not read)."""
    received = bytearray()
    async for chunk in response.aiter_bytes():
        received += chunk
        if len(received) > limit:
            return None
    return bytes(received)
