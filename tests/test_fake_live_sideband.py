"""The fake OpenAI's GPT-Live sideband: authenticated, strict about client events, scriptable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.fake_openai import (
    AgentCallsFunction,
    AwaitClient,
    CloseSession,
    Emit,
    FakeOpenAI,
    live_client_event_problems,
)

HEADERS = {"Authorization": "Bearer sk-test"}


@pytest.fixture
def served() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    fake.audio_s = 0.01
    with fake.serve_on_loopback() as base_url:
        yield fake, base_url.replace("http://", "ws://") + "/live/sessions/"


def attach(url: str, session_id: str, headers: dict[str, str] = HEADERS) -> Any:
    return connect(f"{url}{session_id}/attach", additional_headers=headers)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "session.instructions.append", "delegation_id": None, "content": "Greet."},
        {"type": "session.thinking.append", "delegation_id": "del_1", "content": "Working."},
        {
            "type": "session.commentary.append",
            "event_id": "e1",
            "delegation_id": None,
            "content": "Go",
        },
        {
            "type": "response.item.create",
            "item": {"type": "function_call_output", "call_id": "c", "output": "{}"},
        },
        {"type": "response.create"},
        {"type": "response.create", "event_id": "e2"},
        {"type": "session.input_audio.mute"},
        {"type": "session.input_audio.unmute", "event_id": "e3"},
        {"type": "session.output_audio.fixture.play", "audio": "AAAA"},
        {"type": "session.close"},
        {
            "type": "session.update",
            "session": {"delegation": {"type": "responses", "responses": {"model": "gpt-5"}}},
        },
    ],
)
def test_the_live_client_events_are_accepted(event: dict[str, Any]) -> None:
    assert live_client_event_problems(json.dumps(event))[1] == []


@pytest.mark.parametrize(
    "event",
    [
        # Realtime's events are not GPT-Live's.
        {"type": "response.create", "response": {"instructions": "Say hello."}},
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c", "output": "{}"},
        },
        {"type": "session.instructions.append", "content": "no delegation_id"},
        {"type": "session.instructions.append", "delegation_id": None, "content": 5},
        {"type": "session.commentary.append", "delegation_id": None, "content": "x", "role": "x"},
        {"type": "response.item.create", "item": {"type": "function_call_output", "call_id": "c"}},
        {
            "type": "response.item.create",
            "item": {"type": "function_call_output", "call_id": "c", "output": "{}", "x": 1},
        },
        {"type": "response.item.create"},
        {"type": "session.update", "session": {"instructions": "immutable"}},
        {"type": "session.start"},
        {"type": "session.close", "reason": "bye"},
    ],
)
def test_other_client_events_and_shapes_are_problems(event: dict[str, Any]) -> None:
    assert live_client_event_problems(json.dumps(event))[1] != [], event


def test_a_message_that_is_not_a_json_object_is_a_problem() -> None:
    assert live_client_event_problems("{nope")[1] != []
    assert live_client_event_problems("[]")[1] != []


async def test_attaching_needs_the_bearer_token_and_an_active_session(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    with pytest.raises(InvalidStatus) as unknown:
        await attach(url, "live_x")
    assert unknown.value.response.status_code == 404
    fake.activate("live_x")
    with pytest.raises(InvalidStatus) as wrong_key:
        await attach(url, "live_x", {"Authorization": "Bearer sk-nope"})
    assert wrong_key.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as no_attach:
        await connect(url + "live_x", additional_headers=HEADERS)
    assert no_attach.value.response.status_code == 404
    assert [a.status for a in fake.sideband_attempts_for("live_x")] == [404, 401]


async def received_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    async with asyncio.timeout(5):
        return [json.loads(message) async for message in ws]


async def test_an_invalid_client_event_is_recorded_and_answered_with_an_error(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    fake.activate("live_bad")
    async with attach(url, "live_bad") as ws:
        await ws.send(json.dumps({"type": "response.create", "response": {}}))
        error = json.loads(await ws.recv())
    assert error["type"] == "error"
    assert error["error"]["code"] == "unknown_parameter"
    assert len(fake.sideband_problems) == 1
    fake.reset()


async def test_the_agent_speaks_when_told_and_session_close_ends_the_session(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    fake.activate("live_s")
    append = {"type": "session.commentary.append", "event_id": "c1", "delegation_id": None}
    async with attach(url, "live_s") as ws:
        await ws.send(json.dumps({**append, "content": "Begin now."}))
        await asyncio.sleep(0.1)
        await ws.send(json.dumps({"type": "session.close"}))
        received = await received_until_closed(ws)
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 1000
    types = [event["type"] for event in received]
    assert types[0] == "session.commentary.appended"
    assert received[0]["client_event_id"] == "c1"
    assert "session.output_transcript.delta" in types
    assert "session.output_audio.delta" in types
    assert types[-1] == "session.closed"
    assert received[-1]["reason"] == "close_requested"
    assert fake.call_state("live_s") == "ended"
    assert [e.event["type"] for e in fake.server_events_for("live_s")] == types
    assert fake.sideband_problems == []


async def test_the_agent_plays_its_script_with_delegated_function_calls(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    fake.activate("live_f")
    fake.script_sideband(
        "live_f",
        [
            Emit({"type": "session.input_transcript.delta", "event_id": "e1", "delta": "Bye"}),
            AgentCallsFunction("end_call", {}, "call_1"),
            AwaitClient("response.create"),
            CloseSession("expired"),
        ],
    )
    async with attach(url, "live_f") as ws:
        first = json.loads(await ws.recv())
        function = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "response.create"}))
        rest = await received_until_closed(ws)
    assert first["type"] == "session.input_transcript.delta"
    assert function["type"] == "response.event"
    assert function["event"]["type"] == "response.output_item.done"
    assert function["event"]["item"] == {
        "id": function["event"]["item"]["id"],
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "end_call",
        "arguments": "{}",
    }
    closed = [event for event in rest if event["type"] == "session.closed"]
    assert [event["reason"] for event in closed] == ["expired"]
    assert fake.sideband_problems == []


async def test_a_hangup_on_the_live_endpoint_closes_the_session(
    served: tuple[FakeOpenAI, str],
) -> None:
    fake, url = served
    fake.activate("live_h")
    base = url.replace("ws://", "http://")
    async with attach(url, "live_h") as ws:
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{base}live_h/hangup", headers=HEADERS)
        received = await received_until_closed(ws)
    assert answer.status_code == 200
    assert [(e["type"], e["reason"]) for e in received] == [("session.closed", "close_requested")]
    assert fake.verbs_for("live_h") == ["hangup"]
