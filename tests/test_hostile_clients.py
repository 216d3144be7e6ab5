"""Hostile HTTP clients against the server `serve` runs: uvicorn with the limits of
app/http/connection_limits.py, in process on a loopback port, driven with raw sockets.

Deadlines are short (1 s) so the tests are quick; what is asserted is that the server
closes what it must, never how precisely it keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from app.http.connection_limits import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    ConnectionLimits,
    LimitedHttpToolsProtocol,
    WaitingConnections,
)
from app.http_server import bind_listener
from app.webhook_signing import signed_test_call
from tests.conftest import OPS_RULES, app_settings, build_app, write_rules_file
from tests.fake_openai import FakeOpenAI

HOST = "127.0.0.1"
DEADLINE_S = 1.0
WAIT_S = 10.0  # upper bound of every wait below; a correct server needs ~DEADLINE_S
CALLER, CALLED = "+14155550123", "+14155550100"


@dataclass
class Served:
    port: int
    server: uvicorn.Server
    waiting: WaitingConnections

    def connect(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=WAIT_S)

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)


@contextlib.contextmanager
def serving(app: Any, limits: ConnectionLimits) -> Iterator[Served]:
    """`app` behind the limited protocol in a uvicorn server on a thread of this process."""
    listener = bind_listener(HOST, 0)
    waiting = WaitingConnections()
    protocol = functools.partial(LimitedHttpToolsProtocol, limits=limits, waiting=waiting)
    config = uvicorn.Config(app, http=protocol, ws="none", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "the server to start")
        yield Served(listener.getsockname()[1], server, waiting)
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        listener.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT_S} s for {what}")
        time.sleep(0.02)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    sock.settimeout(WAIT_S)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 once the whole request body has arrived."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def limits(**values: Any) -> ConnectionLimits:
    return ConnectionLimits(**{"request_deadline_s": DEADLINE_S, **values})


def get(path: str = "/", *headers: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(headers) + b"\r\n"


# ---------------------------------------------------------------- the request head


def test_a_head_over_16_kib_is_answered_431_and_closed() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(get("/", b"X-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n"))
        answer = read_until_closed(sock)
    assert status_of(answer) == 431


def test_a_request_line_over_16_kib_is_answered_431() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(get("/" + "a" * MAX_HEAD_BYTES))
        assert status_of(read_until_closed(sock)) == 431


def test_ten_thousand_headers_are_refused() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(get("/", *(b"a: b\r\n" for _ in range(10_000))))
        assert status_of(read_until_closed(sock)) == 431


def test_more_than_100_small_headers_are_refused() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(get("/", *(b"h%d: v\r\n" % i for i in range(MAX_HEADERS + 1))))
        assert status_of(read_until_closed(sock)) == 431


def test_a_head_just_within_both_caps_is_answered() -> None:
    headers = [b"h%d: v\r\n" % i for i in range(MAX_HEADERS - 3)]  # + Host, X-Fill, Connection
    used = len(get("/", *headers)) + len(b"X-Fill: \r\n")
    filler = b"X-Fill: " + b"f" * (MAX_HEAD_BYTES - used - 64) + b"\r\n"
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(get("/", *headers, filler, b"Connection: close\r\n"))
        assert status_of(read_until_closed(sock)) == 200


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def stream_header(sock: socket.socket, total: int) -> int:
    """Send one header of up to `total` bytes; the bytes sent before the server closed."""
    sent = 0
    chunk = b"a" * 65536
    with contextlib.suppress(OSError):
        sock.sendall(b"GET / HTTP/1.1\r\nX-Huge: ")
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    return sent


def test_streaming_huge_headers_does_not_grow_memory() -> None:
    total = 8 * 1024 * 1024
    with serving(plain_app, limits()) as served:
        before = rss_bytes()
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(served.connect()) for _ in range(8)]
            sent = [stream_header(sock, total) for sock in socks]
            grown = rss_bytes() - before
    assert all(s < total for s in sent), "the server kept reading a header past its cap"
    assert grown < 16 * 1024 * 1024, f"RSS grew {grown} bytes for 8 refused headers"


# ---------------------------------------------------------------- the request deadline


def test_a_silent_connection_is_closed_after_the_deadline() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        assert read_until_closed(sock) == b""


def test_slowloris_headers_are_answered_408_and_closed() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed = False
        for _ in range(int(WAIT_S / 0.1)):  # one header byte every 0.1 s, never finishing
            try:
                sock.sendall(b"a")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        answer = read_until_closed(sock)
    assert closed or answer, "the trickling connection was never closed"
    assert answer == b"" or status_of(answer) == 408


def test_a_body_stalling_before_its_end_is_closed() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 99)
        assert status_of(read_until_closed(sock)) == 408
        wait_until(lambda: served.open_connections() == 0, "the connection to be released")


def test_the_deadline_runs_again_for_the_next_request_on_a_kept_alive_connection() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        sock.sendall(get("/"))
        assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        # Blank lines are not a request: they must not keep the connection open either.
        for _ in range(int(WAIT_S / 0.2)):
            try:
                sock.sendall(b"\r\n")
            except OSError:
                break
            time.sleep(0.2)
        assert read_until_closed(sock) == b""


def test_a_prompt_request_is_answered_and_the_connection_kept() -> None:
    with serving(plain_app, limits()) as served, served.connect() as sock:
        for _ in range(3):
            sock.sendall(get("/"))
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------- the connection cap


class HoldingApp:
    """Holds every request to /hold until `release` is set; answers others at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.holding = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            self.holding += 1
            for _ in range(int(WAIT_S / 0.01)):
                if self.release.is_set():
                    break
                await asyncio.sleep(0.01)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


def test_beyond_the_cap_with_every_connection_answering_a_new_one_gets_503() -> None:
    app = HoldingApp()
    with serving(app, limits(max_connections=3)) as served, contextlib.ExitStack() as stack:
        held = [stack.enter_context(served.connect()) for _ in range(3)]
        for sock in held:
            sock.sendall(get("/hold"))
        wait_until(lambda: app.holding == 3, "three requests to be held")
        with served.connect() as extra:
            assert status_of(read_until_closed(extra)) == 503
        app.release.set()
        for sock in held:
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")


def test_at_the_cap_a_new_connection_takes_the_place_of_the_longest_waiting() -> None:
    capped = limits(max_connections=3, request_deadline_s=WAIT_S)
    with serving(plain_app, capped) as served, contextlib.ExitStack() as stack:
        idle = [stack.enter_context(served.connect()) for _ in range(3)]
        wait_until(lambda: len(served.waiting) == 3, "three waiting connections")
        with served.connect() as newcomer:
            newcomer.sendall(get("/", b"Connection: close\r\n"))
            assert status_of(read_until_closed(newcomer)) == 200
        assert read_until_closed(idle[0]) == b"", "the oldest waiting connection stays"
        assert served.open_connections() <= 3


# ---------------------------------------------------------------- the service under attack


@pytest.fixture
def webhook_service(tmp_path: Path, secret: str) -> Iterator[Served]:
    settings = app_settings(write_rules_file(tmp_path, OPS_RULES), secret)
    app = build_app(settings, FakeOpenAI())
    with serving(app, limits(max_connections=200)) as served:
        yield served


def test_a_signed_webhook_is_answered_while_hostile_connections_are_open(
    webhook_service: Served, secret: str
) -> None:
    served = webhook_service
    url = f"http://{HOST}:{served.port}/webhooks/openai"
    with contextlib.ExitStack() as stack:
        silent = [stack.enter_context(served.connect()) for _ in range(40)]
        slow = [stack.enter_context(served.connect()) for _ in range(40)]
        for sock in slow:
            sock.sendall(b"POST /webhooks/openai HTTP/1.1\r\nX-Slow: ")
        stalled = [stack.enter_context(served.connect()) for _ in range(40)]
        for sock in stalled:
            sock.sendall(b"POST /webhooks/openai HTTP/1.1\r\nContent-Length: 900\r\n\r\n{")
        for _ in range(3):
            delivery = signed_test_call(secret, CALLER, CALLED, now=int(time.time()))
            answer = httpx.post(url, content=delivery.body, headers=delivery.headers, timeout=5)
            assert answer.status_code == 200, answer.text
            assert answer.json()["call_id"] == delivery.call_id
        for sock in [*silent, *slow, *stalled]:
            answer = read_until_closed(sock)
            assert answer == b"" or status_of(answer) == 408
    wait_until(lambda: served.open_connections() == 0, "every connection to be released")
    assert len(served.waiting) == 0


def test_nothing_is_held_for_a_connection_after_it_closes() -> None:
    # A deadline far beyond the wait: a timer left pending would keep its connection alive.
    with serving(plain_app, limits(request_deadline_s=6 * WAIT_S)) as served:
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(served.connect()) for _ in range(30)]
            for i, sock in enumerate(socks):
                sock.sendall([b"", b"GET / HT", get("/")][i % 3])
            wait_until(lambda: served.open_connections() == 30, "30 open connections")
            protocols = [weakref.ref(p) for p in list(served.server.server_state.connections)]
        wait_until(lambda: served.open_connections() == 0, "the connections to close")
        assert len(served.waiting) == 0

        def all_collected() -> bool:
            gc.collect()
            return all(ref() is None for ref in protocols)

        wait_until(all_collected, "the closed connections to be freed")
