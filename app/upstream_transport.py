"""The HTTP client of OpenAI's endpoints: httpx's API over aiohttp's connection pool.
(Requests to the company's own services use the same transport, in a pool of their own.)

httpcore's pool scans every connection on each request and response and costs several
times aiohttp's CPU per request; `httpx-aiohttp` keeps the httpx API (timeouts per request,
`MockTransport` in tests) over aiohttp. Its own exception mapping is not used: it turns
every `aiohttp.ClientConnectionError`, including a server that disconnected or reset the
connection after the request was written, into `httpx.ConnectTimeout`, which
`OpenAICallsClient` must read as "nothing sent". Here an error means "not sent" only when
aiohttp raised it while connecting, before any byte of the request could be written:

    not sent (httpx.ConnectError, ConnectTimeout, UnsupportedProtocol)
        ClientConnectorError and its kinds: refused, DNS, TLS handshake, certificate
        ConnectionTimeoutError: no pooled or new connection in time
        InvalidURL, NonHttpUrlClientError
    may have been applied (httpx.ReadTimeout, RemoteProtocolError, ReadError)
        SocketTimeoutError, any other timeout: no answer in time
        ServerDisconnectedError: also a pooled keep-alive connection closed under the
            request, which cannot be told apart from a close after the server read it
        ClientResponseError: an answer that is not valid HTTP
        everything else: resets, payload errors, write failures
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

UPSTREAM_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=50)


def upstream_http_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The shared client of OpenAI's endpoints; `transport` replaces the network (tests)."""
    return UpstreamClient(
        transport=transport if transport is not None else UpstreamTransport(),
        limits=UPSTREAM_LIMITS,
        follow_redirects=False,
    )


class AnswerCookies(httpx.Cookies):
    """httpx's cookies, which read an answer only when it sets a cookie.

    httpx hands every answer to `http.cookiejar` through urllib request and response views,
    which cost more CPU than the rest of the client's own work on an answer; the jar takes
    cookies from `Set-Cookie` and `Set-Cookie2` only, so an answer without them changes
    nothing and is skipped.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class UpstreamClient(httpx.AsyncClient):
    """`httpx.AsyncClient` whose cookies are `AnswerCookies` (the same jar, read lazily)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._answer_cookies = AnswerCookies(super().cookies.jar)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._answer_cookies

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        self._answer_cookies = AnswerCookies(httpx.Cookies(cookies).jar)


class UpstreamTransport(AiohttpTransport):
    """`AiohttpTransport` whose errors say whether the request may have been sent."""

    def __init__(self, limits: httpx.Limits = UPSTREAM_LIMITS) -> None:
        super().__init__(limits=limits)

    def get_client(self) -> aiohttp.ClientSession:
        # aiohttp keeps every idle connection up to `limit`: max_keepalive_connections has
        # no counterpart. Cookies stay with httpx, as over httpcore.
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _classified_failures():
            response = await super().handle_async_request(request)
        response.stream = _AnswerBody(response.stream)
        return response


class _AnswerBody(httpx.AsyncByteStream):
    """The answer's body: a failure here comes after the request was answered."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _classified_failures():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        with _classified_failures():
            await self._stream.aclose()


@contextmanager
def _classified_failures() -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as exc:  # httpx-aiohttp's mapping: classify its cause again
        raise transport_failure(exc.__cause__ or exc) from exc
    except (aiohttp.ClientError, OSError) as exc:  # left unmapped by httpx-aiohttp
        raise transport_failure(exc) from exc


def transport_failure(exc: BaseException) -> httpx.TransportError:
    """The httpx error for an aiohttp failure: "not sent" only when proven (module doc)."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message)
    return httpx.ReadError(message)
