"""What every request sip-router sends to your own services shares (consult, functions):
Standard Webhooks signature headers, and an answer read up to a size limit."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook


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
