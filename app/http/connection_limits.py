"""Limits on what one HTTP client may hold: uvicorn's httptools protocol with a cap on the
request head (line and headers, bytes and count), a deadline for receiving each complete
request, and a cap on open connections.

uvicorn has no request-receipt deadline and httptools buffers a header of any size, so an
unauthenticated client could hold memory and descriptors for as long as it liked. Here:

- the request line and headers of one request may take `max_head_bytes` and
  `max_headers`; beyond, 431 and the connection is closed. Bytes are handed to the parser
  in slices, so no more than the cap is ever buffered for an unfinished head;
- a request must arrive complete (head and body) within `request_deadline_s` of the
  connection opening, or of the previous response on a kept-alive connection; otherwise
  408 (when part of a request came) and the connection is closed;
- at most `max_connections` connections are open in the process. When a new one would
  exceed that, the connection that has waited longest for its request makes room (a
  client that sends its request promptly is never the one waiting longest); when every
  connection has a complete request being answered, the new one is answered 503.

Everything a connection holds (its timer, its place in the waiting order) is released
when it closes.
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("sip_router.http")

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
REQUEST_DEADLINE_S = 10.0
MAX_CONNECTIONS = 2000
REFUSAL_REPORT_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The numbers; the defaults are the service's."""

    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    request_deadline_s: float = REQUEST_DEADLINE_S
    max_connections: int = MAX_CONNECTIONS


class WaitingConnections:
    """The process's connections still waiting for (the rest of) a request, longest first;
    and the count of connections refused, reported in the log at most every 10 s."""

    def __init__(self) -> None:
        self.order: dict[LimitedHttpToolsProtocol, None] = {}
        self.refused = 0
        self.refused_reported_at = -REFUSAL_REPORT_INTERVAL_S

    def __getstate__(self) -> dict[str, Any]:
        # Sent to worker processes before any connection exists: each starts empty.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def count_refusal(self, now: float, open_connections: int) -> None:
        self.refused += 1
        if now - self.refused_reported_at >= REFUSAL_REPORT_INTERVAL_S:
            log.warning(
                "connections refused: all %d open connections are answering requests",
                open_connections,
                extra={"fields": {"refused": self.refused}},
            )
            self.refused = 0
            self.refused_reported_at = now

    def add(self, connection: LimitedHttpToolsProtocol) -> None:
        self.order.pop(connection, None)
        self.order[connection] = None

    def discard(self, connection: LimitedHttpToolsProtocol) -> None:
        self.order.pop(connection, None)

    def longest(self) -> LimitedHttpToolsProtocol | None:
        return next(iter(self.order), None)

    def __len__(self) -> int:
        return len(self.order)


class _HeadTooLarge(Exception):
    """Raised inside a parser callback; the parser hands it back as a callback error."""


def _plain_response(status: int, *, close: bool = True) -> bytes:
    phrase = http.HTTPStatus(status).phrase
    body = phrase.encode()
    return b"".join(
        [
            f"HTTP/1.1 {status} {phrase}\r\n".encode(),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n" if close else b"\r\n",
            body,
        ]
    )


REQUEST_TIMEOUT = _plain_response(408)
HEAD_TOO_LARGE = _plain_response(431)
SERVICE_UNAVAILABLE = _plain_response(503)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with the limits of this module.

    Passed to uvicorn as `http=functools.partial(LimitedHttpToolsProtocol, limits=...,
    waiting=WaitingConnections())`: the partial travels to worker processes by pickle.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
        waiting: WaitingConnections,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.waiting = waiting
        self.request_deadline: asyncio.TimerHandle | None = None
        self.in_message = False  # between the first byte of a request and its last
        self.in_head = True  # the current request's line and headers are not complete
        self.head_fed = 0  # bytes given to the parser while in_head
        self.head_bytes = 0  # request line and header bytes, as parsed
        self.header_count = 0

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            self.connections.discard(self)
            self.waiting.count_refusal(self.loop.time(), len(self.connections))
            transport.write(SERVICE_UNAVAILABLE)
            transport.close()
            return
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Close the connection waiting longest for its request; False if none waits."""
        oldest = self.waiting.longest()
        if oldest is None:
            return False
        oldest.close_waiting()
        return True

    def close_waiting(self) -> None:
        """Close this connection to make room for a newer one."""
        self._disarm_deadline()
        self.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.close()

    # The request deadline

    def _arm_deadline(self) -> None:
        if self.request_deadline is None and not self.transport.is_closing():
            self.request_deadline = self.loop.call_later(
                self.limits.request_deadline_s, self._deadline_passed
            )
            self.waiting.add(self)

    def _disarm_deadline(self) -> None:
        if self.request_deadline is not None:
            self.request_deadline.cancel()
            self.request_deadline = None
        self.waiting.discard(self)

    def _deadline_passed(self) -> None:
        self.request_deadline = None
        self.waiting.discard(self)
        if self.transport.is_closing():
            return
        answering = (
            self.cycle is not None
            and self.cycle.response_started
            and not self.cycle.response_complete
        )
        if self.in_message and not answering:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

    # Bytes in: the head is fed to the parser in slices no larger than what is left of its cap

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        while data and not self.transport.is_closing():
            # Bodies go in slices too: a pipelined request's head may start inside one.
            room = self.limits.max_head_bytes - (self.head_fed if self.in_head else 0)
            if room <= 0:
                self._refuse(HEAD_TOO_LARGE)
                return
            chunk, data = data[:room], data[room:]
            if self.in_head:
                self.head_fed += len(chunk)
            if not self._feed(chunk):
                return

    def _feed(self, chunk: bytes) -> bool:
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(HEAD_TOO_LARGE)
                return False
            raise
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def _refuse(self, response: bytes) -> None:
        self._disarm_deadline()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_message = True
        self.head_bytes = 0
        self.header_count = 0
        self._arm_deadline()

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > self.limits.max_head_bytes:
            raise _HeadTooLarge
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if (
            self.header_count > self.limits.max_headers
            or self.head_bytes > self.limits.max_head_bytes
        ):
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_message = False
        self.in_head = True
        self.head_fed = 0
        self._disarm_deadline()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.in_message:
            # The connection now waits for its next request: the deadline runs again.
            self._arm_deadline()
