"""The fake's GPT-Live session endpoints, and one SIP call announced on both APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest

from tests.fake_openai import (
    ALREADY_DECIDED_STATUS,
    LIVE_REQUEST_SCHEMAS,
    MOCK_BASE_URL,
    FakeOpenAI,
    Respond,
)

KEY = "sk-test-fake-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SESSION = "live_u0_479a275623b54bdb9b6fbae2f7cbd408"
CALL = "rtc_u0_479a275623b54bdb9b6fbae2f7cbd408"
LIVE_ACCEPT: dict[str, Any] = {
    "session": {
        "type": "live",
        "model": "gpt-live-1",
        "instructions": "You are answering an inbound support call.",
        "audio": {"output": {"voice": "marin"}},
        "delegation": {"type": "client"},
    }
}
FULL_LIVE_ACCEPT: dict[str, Any] = {
    "session": {
        "type": "live",
        "model": "gpt-live-1",
        "instructions": None,
        "audio": {"output": {"voice": {"id": "voice_123"}}},
        "delegation": {
            "type": "responses",
            "responses": {
                "model": "gpt-5",
                "instructions": "Look things up.",
                "max_output_tokens": 512,
                "service_tier": "auto",
                "reasoning": {"effort": "low", "summary": "auto"},
                "text": {"verbosity": "low"},
                "tools": [
                    {
                        "type": "function",
                        "name": "end_call",
                        "description": "End the call.",
                        "parameters": {"type": "object", "properties": {}},
                        "strict": True,
                    },
                    {"type": "web_search"},
                ],
                "tool_choice": "auto",
                "parallel_tool_calls": False,
            },
        },
        "store": True,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "x"}],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        ],
    }
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


async def live(
    client: httpx.AsyncClient, session_id: str, verb: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    url = f"/live/sessions/{session_id}/{verb}"
    if body is None:
        return await client.post(url, headers=AUTH)
    return await client.post(url, json=body, headers=AUTH)


async def realtime(
    client: httpx.AsyncClient, call_id: str, verb: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.post(f"/realtime/calls/{call_id}/{verb}", json=body, headers=AUTH)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("verb", "body"),
    [
        ("accept", LIVE_ACCEPT),
        ("accept", FULL_LIVE_ACCEPT),
        ("accept", {"session": {"type": "live", "model": "gpt-live-1"}}),
        ("reject", {"status_code": 486}),
        ("reject", {"status_code": 300}),
        ("reject", {"status_code": 699}),
        ("refer", {"target_uri": "tel:+14155550123"}),
    ],
)
async def test_valid_live_requests_are_answered_200_and_recorded_as_live(
    client: httpx.AsyncClient, fake: FakeOpenAI, verb: str, body: dict[str, Any]
) -> None:
    response = await live(client, SESSION, verb, body)

    assert response.status_code == 200, response.text
    [recorded] = fake.requests
    assert (recorded.api, recorded.verb, recorded.call_id, recorded.body) == (
        "live",
        verb,
        SESSION,
        body,
    )
    assert recorded.valid


async def test_a_live_hangup_takes_no_body_and_ends_an_accepted_session(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    assert (await live(client, SESSION, "hangup")).status_code == 404
    assert (await live(client, SESSION, "accept", LIVE_ACCEPT)).status_code == 200

    assert (await live(client, SESSION, "hangup")).status_code == 200
    assert fake.call_state(SESSION) == "ended"


@pytest.mark.parametrize(
    ("verb", "body", "param", "code"),
    [
        # A Realtime accept body sent to the Live endpoint.
        ("accept", {"type": "realtime", "model": "gpt-realtime"}, "type", "unknown_parameter"),
        ("accept", {"session": {"type": "live"}}, "session.model", "missing_required_parameter"),
        ("accept", {"session": {"model": "gpt-live-1"}}, "session.type", None),
        (
            "accept",
            {"session": {"type": "realtime", "model": "gpt-live-1"}},
            "session.type",
            "invalid_value",
        ),
        (
            "accept",
            {"session": {"type": "live", "model": "gpt-live-1", "tools": []}},
            "session.tools",
            "unknown_parameter",
        ),
        (
            "accept",
            {"session": {"type": "live", "model": "m", "audio": {"output": {"format": "pcm"}}}},
            "session.audio.output.format",
            "unknown_parameter",
        ),
        (
            "accept",
            {"session": {"type": "live", "model": "m", "audio": {"input": {}}}},
            "session.audio.input",
            "unknown_parameter",
        ),
        ("accept", {"session": {"type": "live", "model": ""}}, "session.model", None),
        ("accept", None, "session", "missing_required_parameter"),
        ("reject", None, "status_code", "missing_required_parameter"),
        ("reject", {}, "status_code", "missing_required_parameter"),
        ("reject", {"status_code": 299}, "status_code", "integer_below_min_value"),
        ("reject", {"status_code": 700}, "status_code", "integer_above_max_value"),
        ("reject", {"status_code": "486"}, "status_code", "invalid_type"),
        ("reject", {"status_code": 486, "reason": "busy"}, "reason", "unknown_parameter"),
        ("refer", {"target_uri": "   "}, "target_uri", None),
        ("refer", {"target_uri": ""}, "target_uri", None),
        ("refer", {}, "target_uri", "missing_required_parameter"),
        ("hangup", {"reason": "done"}, "reason", "unknown_parameter"),
    ],
)
async def test_a_live_request_off_its_documented_shape_is_400(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    verb: str,
    body: dict[str, Any] | None,
    param: str,
    code: str | None,
) -> None:
    response = await live(client, SESSION, verb, body)

    error = error_of(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    [recorded] = fake.requests
    assert not recorded.valid
    assert fake.call_state(SESSION) is None


async def test_realtime_checks_still_apply_to_realtime_calls_only(
    client: httpx.AsyncClient,
) -> None:
    # 300-399 is a valid Live reject, not a Realtime one; a Live session has no default.
    assert (await live(client, SESSION, "reject", {"status_code": 302})).status_code == 200
    error = error_of(await realtime(client, CALL, "reject", {"status_code": 302}), 400)
    assert error["param"] == "status_code"


@pytest.mark.parametrize("first_api", ["realtime", "live"])
@pytest.mark.parametrize(
    ("second_verb", "second_body"),
    [
        ("accept", None),
        ("reject", {"status_code": 486}),
        ("refer", {"target_uri": "sip:desk@pbx.example.com"}),
    ],
)
async def test_the_second_decision_of_one_sip_call_is_decision_already_made(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    first_api: str,
    second_verb: str,
    second_body: dict[str, Any] | None,
) -> None:
    fake.same_call(CALL, SESSION)
    if first_api == "realtime":
        first = await realtime(client, CALL, "accept", {"type": "realtime"})
        second = await live(client, SESSION, second_verb, second_body or LIVE_ACCEPT)
    else:
        first = await live(client, SESSION, "accept", LIVE_ACCEPT)
        second = await realtime(client, CALL, second_verb, second_body or {"type": "realtime"})

    assert first.status_code == 200
    error = error_of(second, ALREADY_DECIDED_STATUS)
    assert error["code"] == "decision_already_made"
    assert (
        fake.decided_by(CALL)
        == fake.decided_by(SESSION)
        == (CALL if first_api == "realtime" else SESSION)
    )


async def test_a_live_session_refuses_a_second_decision_of_its_own(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    assert (await live(client, SESSION, "reject", {"status_code": 486})).status_code == 200

    error = error_of(await live(client, SESSION, "accept", LIVE_ACCEPT), ALREADY_DECIDED_STATUS)
    assert error["code"] == "decision_already_made"


async def test_after_an_accept_refer_and_hangup_are_no_decisions(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.same_call(CALL, SESSION)
    assert (await live(client, SESSION, "accept", LIVE_ACCEPT)).status_code == 200

    refer = await live(client, SESSION, "refer", {"target_uri": "tel:+14155550123"})

    assert refer.status_code == 200
    assert fake.call_state(SESSION) == "ended"


async def test_a_failed_decision_leaves_the_sip_call_to_the_other_id(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.same_call(CALL, SESSION)
    fake.script(CALL, Respond(500))
    assert (await realtime(client, CALL, "accept", {"type": "realtime"})).status_code == 500

    assert (await live(client, SESSION, "accept", LIVE_ACCEPT)).status_code == 200
    assert fake.decided_by(CALL) == SESSION


async def test_unlinked_ids_are_separate_calls_and_reset_forgets_links(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    assert (await realtime(client, CALL, "accept", {"type": "realtime"})).status_code == 200
    assert (await live(client, SESSION, "accept", LIVE_ACCEPT)).status_code == 200

    fake.reset()
    fake.same_call(CALL, SESSION)
    fake.reset()
    assert (await realtime(client, CALL, "accept", {"type": "realtime"})).status_code == 200
    assert (await live(client, SESSION, "accept", LIVE_ACCEPT)).status_code == 200


async def test_a_realtime_call_still_answers_a_copy_of_its_own_decision(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.same_call(CALL, SESSION)
    for _ in range(2):
        assert (await realtime(client, CALL, "accept", {"type": "realtime"})).status_code == 200


@pytest.mark.parametrize("verb", sorted(LIVE_REQUEST_SCHEMAS))
def test_live_request_schemas_are_valid_json_schema(verb: str) -> None:
    jsonschema.Draft202012Validator.check_schema(LIVE_REQUEST_SCHEMAS[verb])
