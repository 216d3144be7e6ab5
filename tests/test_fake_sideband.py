"""The fake OpenAI's sideband WebSocket: authenticated, strict about client events, scriptable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.fake_openai import (
    AgentCallsFunction,
    AwaitClient,
    Emit,
    FakeOpenAI,
    HangUp,
    client_event_problems,
)


@pytest.fixture
def served() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    fake.audio_s = 0.01
    with fake.serve_on_loopback() as base_url:
        yield fake, base_url.replace("http://", "ws://") + "/realtime?call_id="


def test_client_events_are_checked_against_the_published_schemas() -> None:
    ok = {"type": "response.create", "response": {"instructions": "Say hello."}}
    assert client_event_problems(json.dumps(ok))[1] == []
    output = {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "c", "output": "{}"},
    }
    assert client_event_problems(json.dumps(output))[1] == []
    for bad in (
        {"type": "response.create", "respons": {}},
        {"type": "response.create", "response": {"instructions": 5}},
        {"type": "conversation.item.create", "item": {"type": "function_call_output"}},
        {"type": "call.hangup"},
    ):
        assert client_event_problems(json.dumps(bad))[1] != [], bad
    assert client_event_problems("{nope")[1] != []


async def test_the_sideband_needs_the_bearer_token_and_an_active_call(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    with pytest.raises(InvalidStatus) as unknown:
        await connect(url + "rtc_x", additional_headers={"Authorization": "Bearer sk-test"})
    assert unknown.value.response.status_code == 404
    fake.activate("rtc_x")
    with pytest.raises(InvalidStatus) as wrong_key:
        await connect(url + "rtc_x", additional_headers={"Authorization": "Bearer sk-nope"})
    assert wrong_key.value.response.status_code == 401
    assert [a.status for a in fake.sideband_attempts_for("rtc_x")] == [404, 401]


async def test_an_invalid_client_event_is_recorded_and_answered_with_an_error(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    fake.activate("rtc_bad")
    headers = {"Authorization": "Bearer sk-test"}
    async with connect(url + "rtc_bad", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "response.create", "respons": {}}))
        error = json.loads(await ws.recv())
    assert error["type"] == "error"
    assert error["error"]["code"] == "invalid_event"
    assert len(fake.sideband_problems) == 1
    fake.reset()


async def test_the_agent_plays_its_script_and_answers_response_create(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    fake.activate("rtc_s")
    fake.script_sideband(
        "rtc_s",
        [
            Emit("{garbage"),
            AgentCallsFunction("end_call", {}, "call_1"),
            # The caller hangs up only after the client spoke: no race with its send.
            AwaitClient("response.create"),
            HangUp(),
        ],
    )
    received: list[str] = []
    async with connect(url + "rtc_s", additional_headers={"Authorization": "Bearer sk-test"}) as ws:
        await ws.send(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(5):
            received += [str(message) async for message in ws]
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1000
    assert "{garbage" in received
    types = [json.loads(m)["type"] for m in received if m.startswith('{"')]
    assert types[0] == "session.created"
    assert "response.function_call_arguments.done" in types
    assert fake.call_state("rtc_s") == "ended"
    assert fake.sideband_problems == []
