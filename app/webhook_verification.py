"""Standard Webhooks signature verification of a delivery's raw bytes (no I/O, no clock).

`standardwebhooks` computes the HMAC; the header parsing and the timestamp window are
checked here, so malformed input is a clear domain error rather than the library's
`ValueError`/`binascii.Error` surfacing as a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks import Webhook

from app.errors import MalformedDelivery, SignatureMismatch

MAX_WEBHOOK_ID_CHARS = 256
_WEBHOOK_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_WEBHOOK_ID_CHARS}}}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_DIGEST_BYTES = 32


@dataclass(frozen=True, slots=True)
class VerifiedDelivery:
    """A delivery whose signature verified: its id, timestamp and body text."""

    webhook_id: str
    timestamp: int
    body: str


class WebhookVerifier:
    """Verifies deliveries against one or more secrets (rotation: any may match)."""

    def __init__(self, secrets: Sequence[str], tolerance_s: float) -> None:
        if not secrets:
            raise ValueError("at least one webhook secret is required")
        self._webhooks = tuple(Webhook(secret) for secret in secrets)
        self._tolerance_s = tolerance_s

    def verify(self, body: bytes, headers: Mapping[str, str], now: float) -> VerifiedDelivery:
        """Return the verified delivery or raise MalformedDelivery / SignatureMismatch."""
        webhook_id = _required(headers, "webhook-id")
        timestamp_text = _required(headers, "webhook-timestamp")
        signature_header = _required(headers, "webhook-signature")
        if not _WEBHOOK_ID.fullmatch(webhook_id):
            raise MalformedDelivery("webhook-id is not a printable ASCII id of at most 256 chars")
        if not _TIMESTAMP.fullmatch(timestamp_text):
            raise MalformedDelivery("webhook-timestamp is not a Unix time in seconds")
        signatures = _well_formed_signatures(signature_header)
        if not signatures:
            raise MalformedDelivery("webhook-signature has no well-formed v1,<base64> entry")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedDelivery("the body is not UTF-8") from None
        timestamp = int(timestamp_text)
        if abs(now - timestamp) > self._tolerance_s:
            raise SignatureMismatch("webhook-timestamp is outside the allowed window")
        try:
            signed_at = datetime.fromtimestamp(timestamp, tz=UTC)
        except (ValueError, OverflowError, OSError):
            raise MalformedDelivery("webhook-timestamp is not a Unix time in seconds") from None
        for webhook in self._webhooks:
            try:
                expected = webhook.sign(webhook_id, signed_at, text).split(",", 1)[1]
                digest = base64.b64decode(expected)
            except (ValueError, binascii.Error, UnicodeError):
                raise MalformedDelivery("the delivery cannot be signed as received") from None
            if any(hmac.compare_digest(digest, candidate) for candidate in signatures):
                return VerifiedDelivery(webhook_id, timestamp, text)
        raise SignatureMismatch("no signature matches a configured secret")


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise MalformedDelivery(f"missing {name} header")
    return value.strip()


def _well_formed_signatures(header: str) -> list[bytes]:
    """The digests of the `v1,<base64>` entries; other entries are ignored."""
    digests = []
    for entry in header.split(" ")[:16]:
        version, comma, encoded = entry.partition(",")
        if version != "v1" or not comma or "," in encoded:
            continue
        try:
            digest = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(digest) == _DIGEST_BYTES:
            digests.append(digest)
    return digests
