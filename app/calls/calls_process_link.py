"""What the service's process and its calls process (app/calls/calls_process.py) say to
each other: one JSON object a line over a socket pair, and what the calls process is told
at start.

The service sends `start` (with the CallsConfig), then `ticket` for each call accepted to
stay with, `added` answering an `add_to_call`, and `stop`. The calls process sends `ready`,
`taken` once a ticket's call is driven (or owned elsewhere), `add_to_call` (a call's later
life for the call log) and, once every call is handed over, `stopped`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("sip_router.sideband")

# The longest line either side reads: a call's later life with its transcript fits.
LINE_LIMIT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CallsConfig:
    """The settings the calls process needs (secrets in clear: sent over the socket pair
    only)."""

    openai_base_url: str
    openai_api_key: str
    outbound_secret: str | None
    keep_transcripts: bool
    redis_url: str | None
    action_deadline_s: float
    log_format: str
    log_level: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallsConfig:
        return cls(**data)


def encode(message: dict[str, Any]) -> bytes:
    """One message as its line (JSON escapes every newline inside it)."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The message of one line; ValueError if it is not a JSON object with a `type`."""
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("not a message")
    return message


async def read_messages(reader: asyncio.StreamReader, sender: str) -> AsyncIterator[dict[str, Any]]:
    """The messages `sender` sends until it closes the link; a line that is not a message
    is logged and skipped, a line over LINE_LIMIT_BYTES or a broken socket ends them."""
    while True:
        try:
            line = await reader.readline()
        except (ValueError, ConnectionError) as exc:  # ValueError: a line over the limit
            log.error(f"the link to {sender} broke", extra={"fields": {"error": str(exc)}})
            return
        if not line:
            return
        try:
            message = decode(line)
        except ValueError:
            log.error(f"{sender} sent a line that is not a message")
            continue
        yield message
