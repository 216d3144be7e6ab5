"""A company's own decision service on loopback, for `consult` rules.

Served by uvicorn in a background thread like tests/fake_openai.py, so the requests cross
a real socket. It checks each request's Standard Webhooks signature with the
`standardwebhooks` library, records it, and answers as scripted: a JSON answer, any
status and body, or a hold until the test releases it (a slow service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError

from tests.fake_openai import Receive, Send
from tests.loopback_service import listening_socket, running_server


@dataclass(frozen=True)
class Answer:
    """Answer with `status` and `body` (an object is sent as JSON, bytes as they are)."""

    body: Any = field(default_factory=lambda: {"continue": True})
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hold:
    """Answer nothing until the test sets `release` (a service slower than its timeout)."""

    release: threading.Event
    then: Answer = field(default_factory=Answer)


Behaviour = Answer | Hold


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    # None: the service has no secret and checks nothing.
    signature_valid: bool | None


class ConsultService:
    """Records requests; answers per caller number (`script`) or with `default`."""

    def __init__(self, secret: str | None = None, default: Behaviour | None = None) -> None:
        self.secret = secret
        self.default: Behaviour = default or Answer()
        self.by_caller: dict[str, Behaviour] = {}
        self.requests: list[ReceivedRequest] = []
        # Set once a request has arrived (before it is answered).
        self.received = threading.Event()
        self._lock = threading.Lock()

    def script(self, caller: str, behaviour: Behaviour) -> None:
        with self._lock:
            self.by_caller[caller] = behaviour

    def _verify(self, headers: dict[str, str], body: bytes) -> bool | None:
        if self.secret is None:
            return None
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = json.loads(raw)
        request = ReceivedRequest(scope["path"], headers, body, self._verify(headers, raw))
        with self._lock:
            self.requests.append(request)
            caller = (body.get("caller") or {}).get("e164")
            behaviour = self.by_caller.get(caller, self.default)
        self.received.set()
        if isinstance(behaviour, Hold):
            deadline = time.monotonic() + 30
            while not behaviour.release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            behaviour = behaviour.then
        content = (
            behaviour.body
            if isinstance(behaviour.body, bytes)
            else json.dumps(behaviour.body).encode()
        )
        raw_headers = [(b"content-type", b"application/json")]
        raw_headers += [(k.encode(), v.encode()) for k, v in behaviour.headers.items()]
        raw_headers.append((b"content-length", str(len(content)).encode()))
        with contextlib.suppress(OSError):
            await send(
                {"type": "http.response.start", "status": behaviour.status, "headers": raw_headers}
            )
            await send({"type": "http.response.body", "body": content})

    @contextlib.contextmanager
    def serve_on_loopback(self) -> Iterator[str]:
        """Serve on 127.0.0.1 in a background thread; yields the base URL."""
        config = uvicorn.Config(
            self,
            lifespan="off",
            log_config=None,
            log_level=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        with running_server(
            uvicorn.Server(config), listening_socket(), name="consult-service"
        ) as port:
            yield f"http://127.0.0.1:{port}"
