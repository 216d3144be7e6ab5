"""OpenAICallsClient against the fake OpenAI: outcomes, retries, deadlines, requests."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from app.openai_calls import ActionResult, OpenAICallsClient, Verb
from tests.conftest import API_KEY
from tests.fake_openai import MOCK_BASE_URL, Delay, Drop, FakeOpenAI, Respond

CALL_ID = "rtc_0123456789abcdef"
ACCEPT = {"type": "realtime", "model": "gpt-realtime", "instructions": "Hello."}


class FakeTime:
    """A clock that only moves when the client sleeps, so retries take no real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def widest(low: float, high: float) -> float:
    """Jitter that always takes the whole backoff window (deterministic attempt counts)."""
    return high


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def http(fake_openai: FakeOpenAI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=fake_openai.mock_transport()) as client:
        yield client


def client(
    http: httpx.AsyncClient,
    fake_time: FakeTime | None = None,
    *,
    deadline_s: float = 5.0,
    base_url: str = MOCK_BASE_URL,
    api_key: str = API_KEY,
    answered: list[tuple[Verb, int | None]] | None = None,
) -> OpenAICallsClient:
    timing: dict[str, Any] = {}
    if fake_time is not None:
        timing = {"sleep": fake_time.sleep, "clock": fake_time.clock, "jitter": widest}
    return OpenAICallsClient(
        http,
        base_url=base_url,
        api_key=api_key,
        deadline_s=deadline_s,
        on_response=None if answered is None else lambda verb, s: answered.append((verb, s)),
        **timing,
    )


@pytest.mark.parametrize(
    ("verb", "body"),
    [
        ("accept", ACCEPT),
        ("refer", {"target_uri": "tel:+14155550100"}),
        ("reject", {"status_code": 486}),
    ],
)
async def test_a_2xx_is_ok_and_the_exact_body_is_sent(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, verb: Verb, body: dict[str, Any]
) -> None:
    answered: list[tuple[Verb, int | None]] = []

    result = await client(http, answered=answered).perform(verb, CALL_ID, body)

    assert result == ActionResult("ok", 200, 1, "ok", sent=1)
    [request] = fake_openai.requests
    assert (request.verb, request.call_id, request.body, request.valid) == (
        verb,
        CALL_ID,
        body,
        True,
    )
    assert request.headers["content-type"] == "application/json"
    assert answered == [(verb, 200)]


async def test_the_api_key_is_sent_as_a_bearer_token(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    await client(http).perform("accept", CALL_ID, ACCEPT)

    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_a_wrong_api_key_fails_without_retry(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    result = await client(http, fake_time, api_key="sk-other").perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts) == ("failed", 401, 1)
    assert "invalid_api_key" in result.detail
    assert fake_time.sleeps == []


async def test_hangup_sends_no_body(http: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    calls = client(http)
    await calls.perform("accept", CALL_ID, ACCEPT)

    result = await calls.perform("hangup", CALL_ID, None)

    assert result == ActionResult("ok", 200, 1, "ok", sent=1)
    request = fake_openai.requests[-1]
    assert (request.verb, request.body, request.valid) == ("hangup", None, True)
    assert request.headers.get("content-length", "0") == "0"
    assert "content-type" not in request.headers


async def test_the_base_url_may_end_with_a_slash(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    await client(http, base_url=MOCK_BASE_URL + "/").perform(
        "reject", CALL_ID, {"status_code": 603}
    )

    assert fake_openai.requests[0].valid


async def test_a_503_then_200_is_ok_after_two_attempts(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.script(CALL_ID, Respond(503))

    result = await client(http, fake_time).perform("accept", CALL_ID, ACCEPT)

    assert result == ActionResult("ok", 200, 2, "ok", sent=2)
    assert [r.status for r in fake_openai.requests] == [503, 200]
    assert fake_time.sleeps == [0.05]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_retryable_statuses_are_retried(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime, status: int
) -> None:
    fake_openai.script(CALL_ID, Respond(status), Respond(status))

    result = await client(http, fake_time).perform("refer", CALL_ID, {"target_uri": "sip:a@b.c"})

    assert (result.outcome, result.attempts) == ("ok", 3)
    assert fake_time.sleeps == [0.05, 0.1]


async def test_5xx_are_retried_up_to_three_requests(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.default = Respond(503)

    result = await client(http, fake_time, deadline_s=5.0).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts, result.sent) == ("failed", 503, 3, 3)
    assert result.detail == "gave up after 3 requests in 3 attempts: HTTP 503"
    assert fake_time.sleeps == [0.05, 0.1]
    assert len(fake_openai.requests) == 3


async def test_5xx_until_the_deadline_fails(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.default = Respond(503, headers={"Retry-After": "1"})

    result = await client(http, fake_time, deadline_s=1.5).perform("accept", CALL_ID, ACCEPT)

    # One Retry-After of 1 s fits in 1.5 s; a second does not.
    assert (result.outcome, result.status, result.attempts) == ("failed", 503, 2)
    assert result.detail == "deadline reached: HTTP 503"
    assert fake_time.sleeps == [1.0]


async def test_retry_after_is_honoured_when_it_fits(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.script(CALL_ID, Respond(429, headers={"Retry-After": "1"}))

    result = await client(http, fake_time, deadline_s=5.0).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.attempts) == ("ok", 2)
    assert fake_time.sleeps == [1.0]


async def test_retry_after_beyond_the_deadline_is_not_waited_for(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.script(CALL_ID, Respond(429, headers={"Retry-After": "1"}))

    result = await client(http, fake_time, deadline_s=0.5).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts) == ("failed", 429, 1)
    assert fake_time.sleeps == []
    assert len(fake_openai.requests) == 1


async def test_404_is_gone_without_retry(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.mark_gone(CALL_ID)

    result = await client(http, fake_time).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts) == ("gone", 404, 1)
    assert result.detail == "HTTP 404 call_id_not_found"
    assert len(fake_openai.requests) == 1
    assert fake_time.sleeps == []


@pytest.mark.parametrize("status", [400, 403, 409, 422])
async def test_other_4xx_fail_without_retry(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime, status: int
) -> None:
    fake_openai.script(CALL_ID, Respond(status, code="invalid_value"))

    result = await client(http, fake_time).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts) == ("failed", status, 1)
    assert result.detail == f"HTTP {status} invalid_value"
    assert len(fake_openai.requests) == 1


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_connection_refused_is_retried_then_failed_not_unknown(
    refusing_port: int, fake_time: FakeTime
) -> None:
    async with httpx.AsyncClient() as real:
        calls = client(
            real, fake_time, deadline_s=1.0, base_url=f"http://127.0.0.1:{refusing_port}/v1"
        )
        result = await calls.perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts) == ("failed", None, 5)
    assert "ConnectError before the request was sent" in result.detail


async def test_a_read_timeout_after_sending_is_unknown(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(CALL_ID, Delay(10.0))

    result = await client(http, deadline_s=0.3).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts) == ("unknown", None, 1)
    assert "ReadTimeout after the request was sent" in result.detail
    # The fake took the accept on arrival: the outcome really is unknown to the client.
    assert fake_openai.call_state(CALL_ID) == "active"


async def test_dropped_connections_are_unknown(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.default = Drop()

    result = await client(http, fake_time, deadline_s=1.0).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status) == ("unknown", None)
    assert result.attempts == len(fake_openai.requests) >= 1
    assert "RemoteProtocolError after the request was sent" in result.detail


async def test_a_4xx_after_a_drop_is_unknown_not_failed(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    # The dropped accept may have been applied; the 400 of the retry does not undo that.
    fake_openai.script(CALL_ID, Drop(), Respond(400, code="call_already_accepted"))

    result = await client(http, fake_time).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts) == ("unknown", 400, 2)


async def test_a_drop_then_200_is_ok(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.script(CALL_ID, Drop())

    result = await client(http, fake_time).perform("reject", CALL_ID, {"status_code": 603})

    assert (result.outcome, result.status, result.attempts) == ("ok", 200, 2)


async def test_an_upstream_that_always_drops_gets_three_requests_then_unknown(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    fake_openai.default = Drop()

    result = await client(http, fake_time, deadline_s=60.0).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.attempts, result.sent) == ("unknown", None, 3, 3)
    assert result.detail == (
        "may have been applied: gave up after 3 requests in 3 attempts: "
        "RemoteProtocolError after the request was sent"
    )
    assert [(r.verb, r.body) for r in fake_openai.requests] == [("accept", ACCEPT)] * 3


async def test_connection_errors_before_sending_stop_after_ten_attempts(
    refusing_port: int, fake_time: FakeTime
) -> None:
    async with httpx.AsyncClient() as real:
        calls = client(
            real, fake_time, deadline_s=60.0, base_url=f"http://127.0.0.1:{refusing_port}/v1"
        )
        result = await calls.perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.attempts, result.sent) == ("failed", 10, 0)
    assert result.detail.startswith("gave up after 0 requests in 10 attempts: ConnectError")


@pytest.mark.parametrize("status", [400, 409])
async def test_decision_already_made_is_duplicate_without_retry(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime, status: int
) -> None:
    fake_openai.script(CALL_ID, Respond(status, code="decision_already_made"))

    result = await client(http, fake_time).perform("reject", CALL_ID, {"status_code": 603})

    assert (result.outcome, result.status, result.attempts) == ("duplicate", status, 1)
    assert result.detail == f"HTTP {status} decision_already_made"
    assert len(fake_openai.requests) == 1


async def test_decision_already_made_after_a_drop_is_duplicate(
    http: httpx.AsyncClient, fake_openai: FakeOpenAI, fake_time: FakeTime
) -> None:
    # The dropped accept was applied; its copy learns so from OpenAI.
    fake_openai.script(CALL_ID, Drop(), Respond(409, code="decision_already_made"))

    result = await client(http, fake_time).perform("accept", CALL_ID, ACCEPT)

    assert (result.outcome, result.status, result.sent) == ("duplicate", 409, 2)
    assert [r.body for r in fake_openai.requests] == [ACCEPT, ACCEPT]
