"""The upstream client's cookies: kept from answers that set them, skipped otherwise."""

from __future__ import annotations

from http.cookiejar import CookieJar
from typing import Any

import httpx
import pytest

from app.upstream_transport import AnswerCookies, upstream_http_client


def _answers(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/accept"):
            return httpx.Response(200, headers={"Set-Cookie": "__cf_bm=abc; Path=/"}, json={})
        return httpx.Response(200, json={})

    return httpx.MockTransport(answer)


async def test_a_cookie_an_answer_sets_goes_with_later_requests() -> None:
    seen: list[httpx.Request] = []
    async with upstream_http_client(_answers(seen)) as client:
        await client.post("https://api.openai.com/v1/realtime/calls/rtc_1/accept", json={})
        await client.post("https://api.openai.com/v1/realtime/calls/rtc_1/hangup")
        assert client.cookies.get("__cf_bm") == "abc"
    assert "cookie" not in seen[0].headers
    assert seen[1].headers["cookie"] == "__cf_bm=abc"


async def test_an_answer_without_set_cookie_is_not_handed_to_the_jar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed: list[Any] = []
    original = CookieJar.extract_cookies

    def spy(jar: CookieJar, response: Any, request: Any) -> None:
        handed.append(response)
        original(jar, response, request)

    monkeypatch.setattr(CookieJar, "extract_cookies", spy)
    async with upstream_http_client(_answers([])) as client:
        await client.post("https://api.openai.com/v1/realtime/calls/rtc_1/hangup")
        assert handed == []
        await client.post("https://api.openai.com/v1/realtime/calls/rtc_1/accept", json={})
        assert len(handed) == 1


async def test_cookies_set_on_the_client_stay_lazy_and_are_sent() -> None:
    seen: list[httpx.Request] = []
    async with upstream_http_client(_answers(seen)) as client:
        client.cookies = {"session": "s1"}
        assert isinstance(client.cookies, AnswerCookies)
        await client.post("https://api.openai.com/v1/realtime/calls/rtc_1/hangup")
    assert seen[0].headers["cookie"] == "session=s1"
