"""Delivery semantics over real sockets, for each upstream transport.

A raw-socket server on 127.0.0.1 plays OpenAI badly, one script per test; the outcome of
`OpenAICallsClient.perform` and the requests the server read prove what counts as "not
sent" (retried freely, `failed` allows an on_error action) and what "may have been
applied" (`unknown`, never a contradicting action) with httpx's default transport
(httpcore) and with the service's (aiohttp, app/upstream_transport.py).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey

from app.app_factory import create_app
from app.openai_calls import (
    _NOT_SENT,
    MAX_ATTEMPTS_PER_ACTION,
    MAX_REQUESTS_PER_ACTION,
    ActionResult,
    OpenAICallsClient,
)
from app.settings import Settings
from app.upstream_transport import UPSTREAM_LIMITS, transport_failure, upstream_http_client
from app.webhook_signing import signed_test_call
from tests.conftest import DEFAULT_RULES, deliver, running

CALL_ID = "rtc_0123456789abcdef"
ACCEPT = {"type": "realtime", "model": "gpt-realtime"}
ANSWER_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
KEY = ConnectionKey("api.openai.com", 443, True, True, None, None, None)
ANSWER_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


class ScriptedServer:
    """Accepts connections on loopback and runs `script(server, reader, writer)` on each."""

    def __init__(self, script: Callable[[ScriptedServer, Reader, Writer], Awaitable[None]]):
        self.script = script
        self.connections = 0
        self.requests = 0  # requests read in full
        self.paths: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accepted(self, reader: Reader, writer: Writer) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def read_request(self, reader: Reader) -> bool:
        """Read one whole request (head and content-length body); False at end of stream."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        self.requests += 1
        self.paths.append(head.split(b" ", 2)[1].decode())
        return True


Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


async def no_pause(_seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture(params=["httpcore", "aiohttp"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "httpcore":
        transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(limits=UPSTREAM_LIMITS)
        client = upstream_http_client(transport)
    else:
        client = upstream_http_client()
    async with client:
        yield client


def calls_client(http: httpx.AsyncClient, port: int, deadline_s: float = 5.0) -> OpenAICallsClient:
    return OpenAICallsClient(
        http,
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="sk-test",
        deadline_s=deadline_s,
        sleep=no_pause,
    )


async def accept(http: httpx.AsyncClient, port: int, deadline_s: float = 5.0) -> ActionResult:
    return await calls_client(http, port, deadline_s).perform("accept", CALL_ID, ACCEPT)


async def test_nothing_listening_is_not_sent(http: httpx.AsyncClient) -> None:
    with socket.socket() as bound:  # bound, never listening: every connect is refused
        bound.bind(("127.0.0.1", 0))
        result = await accept(http, bound.getsockname()[1])
    assert result.outcome == "failed"
    assert result.sent == 0
    assert result.attempts == MAX_ATTEMPTS_PER_ACTION
    assert "before the request was sent" in result.detail


async def test_closed_without_reading_may_have_been_applied(http: httpx.AsyncClient) -> None:
    # From the client's side a close before reading looks like a close after reading.
    async def close_at_once(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        writer.close()

    async with ScriptedServer(close_at_once) as server:
        result = await accept(http, server.port)
    assert result.outcome == "unknown"
    assert result.sent == MAX_REQUESTS_PER_ACTION
    assert server.connections == MAX_REQUESTS_PER_ACTION


async def test_read_then_closed_may_have_been_applied(http: httpx.AsyncClient) -> None:
    async def read_then_close(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)

    async with ScriptedServer(read_then_close) as server:
        result = await accept(http, server.port)
    assert result.outcome == "unknown"
    assert result.sent == server.requests == MAX_REQUESTS_PER_ACTION


async def test_no_answer_is_a_read_timeout_that_may_have_been_applied(
    http: httpx.AsyncClient,
) -> None:
    async def never_answer(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await reader.read()  # until the client gives up and closes

    async with ScriptedServer(never_answer) as server:
        result = await accept(http, server.port, deadline_s=0.5)
    assert result.outcome == "unknown"
    assert "ReadTimeout" in result.detail
    assert result.sent == server.requests == 1


async def test_answered_503_twice_then_200(http: httpx.AsyncClient) -> None:
    async def flaky(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        while await server.read_request(reader):
            writer.write(ANSWER_503 if server.requests <= 2 else ANSWER_200)
            await writer.drain()

    async with ScriptedServer(flaky) as server:
        result = await accept(http, server.port)
    assert (result.outcome, result.status) == ("ok", 200)
    assert result.sent == server.requests == 3
    assert server.connections == 1  # kept alive across the answers


async def test_an_error_body_is_read_through_the_transport(http: httpx.AsyncClient) -> None:
    body = b'{"error": {"type": "invalid_request_error", "code": "decision_already_made"}}'
    head = f"HTTP/1.1 409 Conflict\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    async def already_decided(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        while await server.read_request(reader):
            writer.write(head + body)
            await writer.drain()

    async with ScriptedServer(already_decided) as server:
        result = await accept(http, server.port)
    assert (result.outcome, result.detail) == ("duplicate", "HTTP 409 decision_already_made")
    assert result.sent == server.requests == 1


async def test_an_answer_cut_short_may_have_been_applied(http: httpx.AsyncClient) -> None:
    async def cut_short(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        if await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}")
            await writer.drain()

    async with ScriptedServer(cut_short) as server:
        result = await accept(http, server.port)
    assert result.outcome == "unknown"
    assert result.sent == server.requests == MAX_REQUESTS_PER_ACTION


async def test_keep_alive_connection_closed_while_idle_is_not_used(
    http: httpx.AsyncClient,
) -> None:
    closed = asyncio.Event()

    async def answer_once(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        if await server.read_request(reader):
            writer.write(ANSWER_200)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            closed.set()

    async with ScriptedServer(answer_once) as server:
        first = await accept(http, server.port)
        await closed.wait()
        await asyncio.sleep(0.05)  # the client's side of the loop sees the close
        second = await accept(http, server.port)
    assert (first.outcome, second.outcome) == ("ok", "ok")
    # The pool dropped the closed connection before sending: one request, a new connection.
    assert (first.sent, second.sent) == (1, 1)
    assert server.requests == 2
    assert server.connections == 2


async def test_keep_alive_connection_closed_under_a_request_is_sent_again(
    http: httpx.AsyncClient,
) -> None:
    # The second request on each connection is read and left unanswered: it may have been
    # applied, so it is sent again (on a new connection) to learn its fate, never dropped.
    async def answer_first_only(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        if await server.read_request(reader):
            writer.write(ANSWER_200)
            await writer.drain()
            await server.read_request(reader)

    async with ScriptedServer(answer_first_only) as server:
        first = await accept(http, server.port)
        second = await accept(http, server.port)
    assert (first.outcome, second.outcome) == ("ok", "ok")
    assert (first.sent, second.sent) == (1, 2)
    assert server.requests == 3
    assert server.connections == 2


async def test_the_service_never_contradicts_an_accept_that_may_have_been_applied(
    settings_factory: Callable[..., Settings],
    write_rules: Callable[[str], Path],
    webhook_secret: str,
) -> None:
    # The service's own transport (none injected), over a real socket.
    async def read_then_close(server: ScriptedServer, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)

    async with ScriptedServer(read_then_close) as server:
        settings = settings_factory(
            openai_base_url=f"http://127.0.0.1:{server.port}/v1",
            rules=write_rules(DEFAULT_RULES + "on_error: {reject: {status_code: 486}}\n"),
        )
        delivery = signed_test_call(
            webhook_secret, "+14155550123", "+14155550100", now=int(time.time())
        )
        async with running(create_app(settings, watch_interval_s=None)) as client:
            response = await deliver(client, delivery)
    answer: dict[str, Any] = response.json()
    assert answer == {"status": "unknown", "call_id": delivery.call_id, "action": "accept"}
    accept_path = f"/v1/realtime/calls/{delivery.call_id}/accept"
    assert server.paths == [accept_path] * MAX_REQUESTS_PER_ACTION  # and no reject


@pytest.mark.parametrize(
    ("error", "not_sent"),
    [
        (aiohttp.ClientConnectorError(KEY, OSError(111, "refused")), True),
        (aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "unknown host")), True),
        (aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError()), True),
        (aiohttp.ConnectionTimeoutError("connect"), True),
        (aiohttp.NonHttpUrlClientError("ftp://x"), True),
        (aiohttp.ServerDisconnectedError(), False),
        (aiohttp.ClientOSError(104, "reset"), False),
        (aiohttp.ClientConnectionResetError("reset"), False),
        (aiohttp.ClientConnectionError("closed"), False),
        (aiohttp.SocketTimeoutError("read"), False),
        (aiohttp.ServerTimeoutError("timeout"), False),
        (TimeoutError(), False),
        (aiohttp.ClientPayloadError("truncated"), False),
        (ConnectionResetError(104, "reset"), False),
        (httpx.ConnectTimeout("mapped without its cause"), False),
    ],
)
def test_only_connect_failures_count_as_not_sent(error: BaseException, not_sent: bool) -> None:
    assert isinstance(transport_failure(error), _NOT_SENT) is not_sent


async def test_no_connection_in_time_is_not_sent(http: httpx.AsyncClient) -> None:
    # A listener that never accepts, its backlog filled: the client's connect hangs.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        result = await accept(http, listener.getsockname()[1], deadline_s=0.5)
    assert result.outcome == "failed"
    assert result.sent == 0
    assert "ConnectTimeout before the request was sent" in result.detail
