"""The fake OpenAI call endpoints: checks, recording and scripts, in process and on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest

from tests.fake_openai import (
    MOCK_BASE_URL,
    REQUEST_SCHEMAS,
    Delay,
    Drop,
    FakeOpenAI,
    Respond,
)

KEY = "sk-test-fake-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ERROR_KEYS = {"message", "type", "param", "code"}

FULL_ACCEPT: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "You are the front desk of Example Corp.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "noise_reduction": None,
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {
                "type": "server_vad",
                "silence_duration_ms": 500,
                "idle_timeout_ms": 6000,
            },
        },
        "output": {"voice": "marin", "speed": 1.25},
    },
    "tools": [
        {
            "type": "function",
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
        {
            "type": "mcp",
            "server_label": "crm",
            "server_url": "https://crm.example.com/mcp",
            "require_approval": "never",
        },
    ],
    "tool_choice": "auto",
    "tracing": {"workflow_name": "sip", "metadata": {"free": {"form": True}}},
    "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
    "max_output_tokens": "inf",
    "prompt": {"id": "pmpt_123", "variables": {"city": "Paris"}},
}
OTHER_ACCEPT: dict[str, Any] = {
    "type": "realtime",
    "audio": {
        "input": {
            "noise_reduction": {"type": "near_field"},
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
        },
        "output": {"voice": {"id": "voice_1234"}},
    },
    "tracing": None,
    "truncation": "disabled",
    "max_output_tokens": 1024,
    "tool_choice": {"type": "function", "name": "lookup_order"},
}


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(KEY)


@pytest.fixture(params=["mock", "loopback"])
async def client(
    request: pytest.FixtureRequest, fake: FakeOpenAI
) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "mock":
        async with httpx.AsyncClient(
            base_url=MOCK_BASE_URL, transport=fake.mock_transport()
        ) as mock_client:
            yield mock_client
    else:
        with fake.serve_on_loopback() as base_url:
            async with httpx.AsyncClient(base_url=base_url) as real_client:
                yield real_client


async def post(
    client: httpx.AsyncClient,
    call_id: str,
    verb: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] = AUTH,
    timeout: float | httpx.Timeout = 5.0,
) -> httpx.Response:
    """POST one call endpoint; `body=None` sends no body at all."""
    url = f"/realtime/calls/{call_id}/{verb}"
    if body is None:
        return await client.post(url, headers=headers, timeout=timeout)
    return await client.post(url, json=body, headers=headers, timeout=timeout)


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == ERROR_KEYS
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


# --- valid requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "body"),
    [
        ("accept", {"type": "realtime"}),
        ("accept", FULL_ACCEPT),
        ("accept", OTHER_ACCEPT),
        ("reject", None),
        ("reject", {}),
        ("reject", {"status_code": 486}),
        ("refer", {"target_uri": "tel:+14155550123"}),
        ("refer", {"target_uri": "sip:agent@example.com"}),
    ],
)
async def test_valid_request_is_answered_200_and_recorded(
    client: httpx.AsyncClient, fake: FakeOpenAI, verb: str, body: dict[str, Any] | None
) -> None:
    before = time.monotonic()
    response = await post(client, "rtc_valid", verb, body)
    after = time.monotonic()

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["x-request-id"].startswith("req_")
    [recorded] = fake.requests
    assert (recorded.verb, recorded.call_id, recorded.body) == (verb, "rtc_valid", body)
    assert recorded.valid
    assert recorded.problems == []
    assert recorded.status == 200
    assert recorded.headers["authorization"] == f"Bearer {KEY}"
    assert before <= recorded.received_at <= after


@pytest.mark.parametrize("body", [None, {}])
async def test_hangup_of_an_accepted_call_ends_it(
    client: httpx.AsyncClient, fake: FakeOpenAI, body: dict[str, Any] | None
) -> None:
    assert (await post(client, "rtc_h", "accept", {"type": "realtime"})).status_code == 200
    assert fake.call_state("rtc_h") == "active"

    assert (await post(client, "rtc_h", "hangup", body)).status_code == 200
    assert fake.call_state("rtc_h") == "ended"
    again = await post(client, "rtc_h", "hangup", body)

    assert assert_error_shape(again, 404)["code"] == "call_id_not_found"
    assert fake.verbs_for("rtc_h") == ["accept", "hangup", "hangup"]
    assert all(r.valid for r in fake.requests)


# --- invalid requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "body", "param", "code"),
    [
        ("accept", {"type": "realtime", "foo": 1}, "foo", "unknown_parameter"),
        (
            "accept",
            {"type": "realtime", "audio": {"output": {"voice": "marin", "volume": 2}}},
            "audio.output.volume",
            "unknown_parameter",
        ),
        # The published schema leaves these objects open; OpenAI does not.
        (
            "accept",
            {"type": "realtime", "audio": {"input": {"noise_reduction": {"level": 3}}}},
            "audio.input.noise_reduction.level",
            "unknown_parameter",
        ),
        (
            "accept",
            {"type": "realtime", "tools": [{"type": "function", "name": "x", "strict": True}]},
            "tools[0].strict",
            "unknown_parameter",
        ),
        (
            "accept",
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}},
            },
            "audio.input.turn_detection.threshold",
            "unknown_parameter",
        ),
        ("accept", None, "type", "missing_required_parameter"),
        ("accept", {"instructions": "hi"}, "type", "missing_required_parameter"),
        ("accept", {"type": "transcription"}, "type", "invalid_value"),
        (
            "accept",
            {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}},
            "audio.output.format",
            "invalid_value",
        ),
        (
            "accept",
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcma"}}}},
            "audio.input.format",
            "invalid_value",
        ),
        (
            "accept",
            {"type": "realtime", "audio": {"output": {"speed": 2.0}}},
            "audio.output.speed",
            "decimal_above_max_value",
        ),
        (
            "accept",
            {"type": "realtime", "audio": {"output": {"speed": 0.1}}},
            "audio.output.speed",
            "decimal_below_min_value",
        ),
        (
            "accept",
            {
                "type": "realtime",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 10}}
                },
            },
            "audio.input.turn_detection.idle_timeout_ms",
            "integer_below_min_value",
        ),
        ("accept", {"type": "realtime", "instructions": 42}, "instructions", "invalid_type"),
        (
            "accept",
            {"type": "realtime", "output_modalities": "audio"},
            "output_modalities",
            "invalid_type",
        ),
        (
            "accept",
            {"type": "realtime", "max_output_tokens": "lots"},
            "max_output_tokens",
            "invalid_value",
        ),
        ("reject", {"status_code": "486"}, "status_code", "invalid_type"),
        ("reject", {"status_code": True}, "status_code", "invalid_type"),
        ("reject", {"status_code": 486.5}, "status_code", "invalid_type"),
        ("reject", {"status_code": 200}, "status_code", "invalid_value"),
        ("reject", {"status_code": 486, "reason": "busy"}, "reason", "unknown_parameter"),
        ("refer", None, "target_uri", "missing_required_parameter"),
        ("refer", {}, "target_uri", "missing_required_parameter"),
        ("refer", {"target_uri": 14155550123}, "target_uri", "invalid_type"),
        ("refer", {"target_uri": "https://example.com/agent"}, "target_uri", "invalid_value"),
        ("refer", {"target_uri": "tel:"}, "target_uri", "invalid_value"),
        (
            "refer",
            {"target_uri": "tel:+14155550123", "referred_by": "x"},
            "referred_by",
            "unknown_parameter",
        ),
        ("hangup", {"reason": "done"}, "reason", "unknown_parameter"),
    ],
)
async def test_invalid_body_is_answered_400_and_recorded_invalid(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    verb: str,
    body: dict[str, Any] | None,
    param: str,
    code: str,
) -> None:
    response = await post(client, "rtc_bad", verb, body)

    error = assert_error_shape(response, 400)
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    [recorded] = fake.requests
    assert not recorded.valid
    assert recorded.status == 400
    assert any(problem.startswith(f"{param}: ") for problem in recorded.problems)
    assert fake.call_state("rtc_bad") is None


@pytest.mark.parametrize(
    ("content", "content_type", "problem"),
    [
        (b"{not json", "application/json", "body: We could not parse"),
        (b"\xff\xfe", "application/json", "body: We could not parse"),
        (
            b'{"type": "realtime", "type": "realtime"}',
            "application/json",
            "body: We could not parse",
        ),
        (b'{"type": "realtime", "speed": NaN}', "application/json", "body: We could not parse"),
        (b'["realtime"]', "application/json", "body: The request body must be a JSON object"),
        (b'{"type": "realtime"}', "text/plain", "content-type: Unsupported content type"),
        (b'{"type": "realtime"}', None, "content-type: Unsupported content type"),
    ],
)
async def test_unparsable_body_is_answered_400_and_recorded_invalid(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    content: bytes,
    content_type: str | None,
    problem: str,
) -> None:
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = await client.post("/realtime/calls/rtc_raw/accept", content=content, headers=headers)

    error = assert_error_shape(response, 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", None)
    [recorded] = fake.requests
    assert (recorded.valid, recorded.body) == (False, None)
    assert recorded.problems[0].startswith(problem)


async def test_json_content_type_with_charset_is_accepted(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    headers = {**AUTH, "Content-Type": "application/json; charset=utf-8"}

    response = await client.post(
        "/realtime/calls/rtc_cs/refer", content=b'{"target_uri": "tel:+1415"}', headers=headers
    )

    assert response.status_code == 200
    assert fake.requests[0].valid


async def test_every_problem_of_a_request_is_recorded(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    body = {"model": 7, "audio": {"output": {"format": {"type": "audio/pcmu"}, "speed": 9}}}

    await post(client, "rtc_many", "accept", body)

    [recorded] = fake.requests
    assert [p.split(":")[0] for p in recorded.problems] == [
        "type",
        "audio.output.speed",
        "model",
        "audio.output.format",
    ]


# --- authorization ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, None),
        ({"Authorization": "Bearer sk-wrong"}, "invalid_api_key"),
        ({"Authorization": f"Token {KEY}"}, "invalid_api_key"),
        ({"Authorization": KEY}, "invalid_api_key"),
    ],
)
async def test_missing_or_wrong_key_is_answered_401(
    client: httpx.AsyncClient, fake: FakeOpenAI, headers: dict[str, str], code: str | None
) -> None:
    response = await post(client, "rtc_auth", "accept", {"type": "realtime"}, headers=headers)

    error = assert_error_shape(response, 401)
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    [recorded] = fake.requests
    assert not recorded.valid
    assert recorded.problems[0].startswith("authorization: ")
    assert fake.call_state("rtc_auth") is None


async def test_401_wins_over_a_bad_body_and_both_are_recorded(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    response = await post(client, "rtc_auth", "accept", {"foo": 1}, headers={})

    assert response.status_code == 401
    assert [p.split(":")[0] for p in fake.requests[0].problems] == ["authorization", "type", "foo"]


# --- routing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/realtime/calls/rtc_1/transfer"),
        ("POST", "/realtime/calls/rtc_1/accept/"),
        ("POST", "/realtime/calls//accept"),
        ("GET", "/realtime/calls/rtc_1/accept"),
        ("POST", "/realtime/sessions"),
    ],
)
async def test_unknown_endpoint_is_answered_404_and_recorded_invalid(
    client: httpx.AsyncClient, fake: FakeOpenAI, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=AUTH)

    error = assert_error_shape(response, 404)
    assert error["message"].startswith(f"Invalid URL ({method} /v1")
    [recorded] = fake.requests
    assert not recorded.valid
    assert recorded.problems == [f"{method} /v1{path}: no such endpoint"]


# --- scripted answers -------------------------------------------------------------------


async def test_scripted_503_with_retry_after_then_default(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.script("rtc_s", Respond(503, headers={"Retry-After": "1"}))

    first = await post(client, "rtc_s", "accept", {"type": "realtime"})
    second = await post(client, "rtc_s", "accept", {"type": "realtime"})

    assert assert_error_shape(first, 503)["type"] == "server_error"
    assert first.headers["retry-after"] == "1"
    assert second.status_code == 200
    assert [r.status for r in fake.requests_for("rtc_s")] == [503, 200]
    assert all(r.valid for r in fake.requests)


@pytest.mark.parametrize(
    ("answer", "error_type", "code"),
    [
        (Respond(400), "invalid_request_error", None),
        (Respond(404, code="call_id_not_found"), "invalid_request_error", "call_id_not_found"),
        (Respond(409), "invalid_request_error", None),
        (Respond(429), "requests", "rate_limit_exceeded"),
        (Respond(500), "server_error", None),
        (Respond(502, message="upstream gone", code="bad_gateway"), "server_error", "bad_gateway"),
    ],
)
async def test_scripted_error_has_openai_shape(
    client: httpx.AsyncClient, fake: FakeOpenAI, answer: Respond, error_type: str, code: str | None
) -> None:
    fake.script("rtc_e", answer)

    response = await post(client, "rtc_e", "refer", {"target_uri": "tel:+14155550123"})

    error = assert_error_shape(response, answer.status)
    assert (error["type"], error["code"]) == (error_type, code)
    if answer.message is not None:
        assert error["message"] == answer.message
    assert fake.call_state("rtc_e") is None


async def test_scripts_are_per_call_then_for_any_call(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.script("rtc_a", Respond(500), Respond(502))
    fake.script_any(Respond(503), Respond(429))

    statuses = [
        (await post(client, call_id, "reject", {})).status_code
        for call_id in ["rtc_a", "rtc_b", "rtc_a", "rtc_a", "rtc_b", "rtc_b"]
    ]

    assert statuses == [500, 503, 502, 429, 200, 200]


async def test_invalid_request_does_not_consume_the_script(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.script("rtc_i", Respond(503))

    bad = await post(client, "rtc_i", "reject", {"status_code": "busy"})
    unauthorized = await post(client, "rtc_i", "reject", {}, headers={})
    good = await post(client, "rtc_i", "reject", {})

    assert [bad.status_code, unauthorized.status_code, good.status_code] == [400, 401, 503]


async def test_delay_longer_than_the_read_timeout_times_the_client_out(
    client: httpx.AsyncClient, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script("rtc_slow", Delay(30))
    # Only reading the answer is short: connecting on a busy machine may take longer.
    read_only = httpx.Timeout(5.0, read=0.2)
    started = time.monotonic()

    with pytest.raises(httpx.ReadTimeout):
        await post(client, "rtc_slow", "accept", {"type": "realtime"}, timeout=read_only)

    assert 0.2 <= time.monotonic() - started < 5
    [recorded] = fake.requests
    assert (recorded.valid, recorded.status) == (True, 200)
    # The upstream acted; only the answer was late.
    assert fake.call_state("rtc_slow") == "active"
    assert (await post(client, "rtc_other", "accept", {"type": "realtime"})).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_delay_shorter_than_the_timeout_answers_late(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.script("rtc_late", Delay(0.3, then=Respond(503)))
    started = time.monotonic()

    response = await post(client, "rtc_late", "accept", {"type": "realtime"}, timeout=5)

    assert time.monotonic() - started >= 0.3
    assert response.status_code == 503
    assert fake.call_state("rtc_late") is None


async def test_drop_gives_the_client_a_transport_error_not_an_answer(
    client: httpx.AsyncClient, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script("rtc_drop", Drop())

    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, "rtc_drop", "accept", {"type": "realtime"})

    [recorded] = fake.requests
    assert (recorded.valid, recorded.status) == (True, None)
    assert (await post(client, "rtc_drop", "hangup")).status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("applied", "hangup_status"), [(True, 200), (False, 404)])
async def test_drop_says_whether_the_action_took_effect(
    client: httpx.AsyncClient, fake: FakeOpenAI, applied: bool, hangup_status: int
) -> None:
    fake.script("rtc_amb", Delay(0.05, then=Drop(applied=applied)))

    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, "rtc_amb", "accept", {"type": "realtime"})

    assert (await post(client, "rtc_amb", "hangup")).status_code == hangup_status


# --- call state -------------------------------------------------------------------------


async def test_hangup_of_an_unknown_call_is_404(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    response = await post(client, "rtc_unknown", "hangup")

    error = assert_error_shape(response, 404)
    assert error["code"] == "call_id_not_found"
    assert "rtc_unknown" in error["message"]
    assert fake.requests[0].valid


@pytest.mark.parametrize(
    ("accepted_first", "verb", "body"),
    [
        (False, "reject", {}),
        (False, "refer", {"target_uri": "sip:desk@example.com"}),
        (True, "refer", {"target_uri": "sip:desk@example.com"}),
    ],
)
async def test_a_rejected_or_referred_call_cannot_be_hung_up(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    accepted_first: bool,
    verb: str,
    body: dict[str, Any],
) -> None:
    if accepted_first:
        await post(client, "rtc_x", "accept", {"type": "realtime"})
    assert (await post(client, "rtc_x", verb, body)).status_code == 200

    assert fake.call_state("rtc_x") == "ended"
    assert (await post(client, "rtc_x", "hangup")).status_code == 404


async def test_repeated_actions_are_answered_and_counted(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    for _ in range(2):
        assert (await post(client, "rtc_twice", "accept", {"type": "realtime"})).status_code == 200
    assert (await post(client, "rtc_twice", "reject", {})).status_code == 200

    assert fake.verbs_for("rtc_twice") == ["accept", "accept", "reject"]
    assert fake.verbs_for("rtc_never") == []


async def test_failed_accept_does_not_make_the_call_active(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.script("rtc_f", Respond(503))
    await post(client, "rtc_f", "accept", {"type": "realtime"})

    assert (await post(client, "rtc_f", "hangup")).status_code == 404


async def test_gone_call_answers_404_to_every_verb(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    await post(client, "rtc_gone", "accept", {"type": "realtime"})
    fake.mark_gone("rtc_gone")
    fake.script("rtc_gone", Respond(503))

    for verb, body in [
        ("accept", {"type": "realtime"}),
        ("reject", {}),
        ("refer", {"target_uri": "tel:+14155550123"}),
        ("hangup", None),
    ]:
        error = assert_error_shape(await post(client, "rtc_gone", verb, body), 404)
        assert error["code"] == "call_id_not_found"
    assert fake.call_state("rtc_gone") == "gone"


async def test_reset_forgets_requests_scripts_and_calls(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    await post(client, "rtc_z", "accept", {"type": "realtime"})
    fake.script("rtc_z", Respond(503))
    fake.script_any(Respond(500))
    fake.mark_gone("rtc_y")

    fake.reset()

    assert fake.requests == []
    assert (fake.call_state("rtc_z"), fake.call_state("rtc_y")) == (None, None)
    assert (await post(client, "rtc_y", "reject", {})).status_code == 200
    assert (await post(client, "rtc_z", "hangup")).status_code == 404


# --- loopback specifics -----------------------------------------------------------------


def test_drop_on_loopback_closes_the_socket_without_a_byte() -> None:
    fake = FakeOpenAI(KEY)
    fake.script("rtc_raw", Drop())
    body = b'{"type": "realtime"}'
    request = (
        b"POST /v1/realtime/calls/rtc_raw/accept HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {KEY}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with fake.serve_on_loopback() as base_url:
        address = urlsplit(base_url)
        with socket.create_connection((address.hostname, address.port), timeout=5) as conn:
            conn.sendall(request)
            assert conn.recv(1024) == b""
    assert fake.requests[0].valid


async def test_concurrent_requests_on_loopback_are_all_recorded() -> None:
    fake = FakeOpenAI(KEY, default=Delay(0.02))
    with fake.serve_on_loopback() as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            responses = await asyncio.gather(
                *(post(client, f"rtc_{i}", "accept", {"type": "realtime"}) for i in range(40))
            )

    assert {r.status_code for r in responses} == {200}
    assert sorted(r.call_id for r in fake.requests) == sorted(f"rtc_{i}" for i in range(40))


def test_loopback_server_stops_on_exit() -> None:
    fake = FakeOpenAI(KEY)
    with fake.serve_on_loopback() as base_url:
        assert (
            httpx.post(f"{base_url}/realtime/calls/rtc_1/reject", headers=AUTH).status_code == 200
        )

    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{base_url}/realtime/calls/rtc_1/reject", headers=AUTH)


# --- schemas and the record file --------------------------------------------------------


@pytest.mark.parametrize("verb", sorted(REQUEST_SCHEMAS))
def test_request_schemas_are_valid_json_schema(verb: str) -> None:
    jsonschema.Draft202012Validator.check_schema(REQUEST_SCHEMAS[verb])


async def test_record_file_has_one_json_line_per_request(fake: FakeOpenAI, tmp_path: Path) -> None:
    started = time.time()
    async with httpx.AsyncClient(base_url=MOCK_BASE_URL, transport=fake.mock_transport()) as client:
        await post(client, "rtc_r", "accept", {"type": "realtime"})
        await post(client, "rtc_r", "hangup", headers={})
    record_file = tmp_path / "requests.jsonl"

    fake.write_record_file(record_file)

    lines = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert [(x["verb"], x["call_id"], x["valid"], x["status"]) for x in lines] == [
        ("accept", "rtc_r", True, 200),
        ("hangup", "rtc_r", False, 401),
    ]
    assert started - 1 <= lines[0]["received_at"] <= lines[1]["received_at"] <= time.time() + 1


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_standalone_server_writes_the_record_file_on_signal(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    record_file = tmp_path / "requests.jsonl"
    command = [sys.executable, "-m", "tests.fake_openai", "--port", "0", "--api-key", KEY]
    command += ["--record-file", str(record_file)]
    with subprocess.Popen(
        command, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().split()[-1]
            sent_at = time.time()
            response = httpx.post(
                f"{base_url}/realtime/calls/rtc_cli/accept", json={"type": "realtime"}, headers=AUTH
            )
            assert response.status_code == 200
            process.send_signal(stop_signal)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()

    [line] = [json.loads(x) for x in record_file.read_text().splitlines()]
    assert (line["verb"], line["call_id"], line["valid"]) == ("accept", "rtc_cli", True)
    assert sent_at - 1 <= line["received_at"] <= time.time()
