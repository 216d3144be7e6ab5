"""Staying with the call, end to end: a signed webhook in, the accept, the sideband attached.

The service runs in process with its lifespan; everything it sends goes over real loopback
sockets to the fake OpenAI (call endpoints and the call's sideband WebSocket, where every
client event is checked against OpenAI's published schemas) and to a company function.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from redis.exceptions import ConnectionError as RedisConnectionError
from standardwebhooks import Webhook

from app.app_factory import create_app
from app.calls.call_attendant import CallAttendant
from app.calls.call_control import CallControl
from app.calls.call_ownership import LEASE_TTL_S, CallTicket, LeaseKeeper, RedisCallOwnership
from app.recorded_decisions import decision_record
from app.rules.ruleset import Decision
from app.settings import Settings
from app.store import RedisStore
from app.webhook_signing import signed_test_call
from tests.conftest import API_KEY, WEBHOOK_PATH, new_webhook_secret, running
from tests.fake_openai import (
    AgentCallsFunction,
    AwaitClient,
    Emit,
    FakeOpenAI,
    HangUp,
    Pause,
    Respond,
)
from tests.function_service import FunctionService, function_services, json_answer
from tests.redis_server import delete_prefix

CALLER = "+14155550123"
MAIN_LINE = "+14155550100"
SALES_LINE = "+14155550111"
OLD_TRUNK_LINE = "+14155550113"
FRONT_DESK = "sip:frontdesk@pbx.clinic.example"
OUTBOUND_SECRET = "whsec_" + "c2lwLXJvdXRlci1vdXRib3VuZC10ZXN0"

RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk:
    model: gpt-realtime
    instructions: "You answer the phone for Lakeside Clinic."
    audio: {input: {transcription: {model: gpt-4o-mini-transcribe}}}
    greeting: "Lakeside Clinic, how can I help?"
    transfer: [front_desk]
    end_call: true
    functions: [lookup_appointment]
    transcript: true
  message_taker:
    model: gpt-realtime
    instructions: "The line is busy. Take a message."
transfer_targets:
  front_desk: {target_uri: "sip:frontdesk@pbx.clinic.example", description: the front desk}
functions:
  lookup_appointment:
    description: Find the caller's next appointment.
    parameters: {type: object, properties: {date_of_birth: {type: string}}}
    url: FUNCTION_URL
    timeout_s: 3
rules:
  - name: sales
    when: {called: "+14155550111"}
    refer: {target_uri: "tel:+14155550150", announce: "Connecting you to sales now."}
  - name: old-trunk
    when: {called: "+14155550113"}
    refer: {target_uri: "tel:+14155550150", before_accept: true}
default: {accept: {profile: desk}}
on_error: ON_ERROR
"""


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(API_KEY)
    fake.audio_s = 0.2
    with fake.serve_on_loopback() as base_url:
        fake.base_url = base_url  # type: ignore[attr-defined]
        yield fake
    assert fake.sideband_problems == []


@pytest.fixture
async def function_service() -> AsyncIterator[FunctionService]:
    async with function_services() as start:
        yield await start(json_answer({"next": "Tuesday 9:00"}))


def settings_for(
    tmp_path: Path,
    fake: FakeOpenAI,
    service: FunctionService,
    *,
    on_error: str = "{reject: {status_code: 503}}",
    **fields: Any,
) -> Settings:
    rules = tmp_path / "rules.yaml"
    text = RULES.replace("FUNCTION_URL", service.url).replace("ON_ERROR", on_error)
    rules.write_text(text, encoding="utf-8")
    values: dict[str, Any] = {
        "openai_api_key": API_KEY,
        "openai_webhook_secret": new_webhook_secret(),
        "openai_base_url": fake.base_url,  # type: ignore[attr-defined]
        "rules": rules,
        "outbound_secret": OUTBOUND_SECRET,
        "transcripts": True,
        "admin_token": "admin-token",
        **fields,
    }
    return Settings(_env_file=None, **values)


class Replica:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, settings: Settings) -> None:
        self.app = app
        self.client = client
        self.settings = settings

    @property
    def attendant(self) -> CallAttendant:
        keeper = self.app.state.services.processor._keeper
        assert isinstance(keeper, CallAttendant)
        return keeper

    async def call(self, called: str = MAIN_LINE, call_id: str | None = None) -> httpx.Response:
        delivery = signed_test_call(
            self.settings.webhook_secrets[0],
            CALLER,
            called,
            now=int(time.time()),
            call_id=call_id or "rtc_" + uuid4().hex,
        )
        return await self.client.post(
            WEBHOOK_PATH, content=delivery.body, headers=dict(delivery.headers)
        )

    async def call_log(self) -> list[dict[str, Any]]:
        answer = await self.client.get(
            "/admin/calls", headers={"Authorization": "Bearer admin-token"}
        )
        calls: list[dict[str, Any]] = answer.json()["calls"]
        return calls

    async def ended(self, call_id: str, timeout_s: float = 15) -> dict[str, Any]:
        """The call's call log entry once its end is recorded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in await self.call_log():
                if entry["call_id"] == call_id and "end_reason" in entry:
                    return entry
            await asyncio.sleep(0.02)
        raise AssertionError(f"the end of {call_id} was not recorded")

    def metric(self, name: str, **labels: str) -> float:
        metrics = self.app.state.services.metrics
        value = metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)


@asynccontextmanager
async def replica(settings: Settings, **options: Any) -> AsyncIterator[Replica]:
    app = create_app(settings, watch_interval_s=None, **options)
    async with running(app) as client:
        yield Replica(app, client, settings)


def sent_types(fake: FakeOpenAI, call_id: str) -> list[str]:
    return [event["type"] for event in fake.client_events_for(call_id)]


def outputs(fake: FakeOpenAI, call_id: str) -> list[tuple[str, Any]]:
    return [
        (event["item"]["call_id"], json.loads(event["item"]["output"]))
        for event in fake.client_events_for(call_id)
        if event["type"] == "conversation.item.create"
    ]


def call_id_of(response: httpx.Response) -> str:
    call_id: str = response.json()["call_id"]
    return call_id


async def test_the_webhook_accepts_with_the_tools_and_the_greeting_comes_first(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(call_id, [AwaitClient("response.create"), HangUp()])
    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        answer = await service.call(call_id=call_id)
        # Answered once the accept is done, not when the call ends.
        assert answer.json() == {"status": "processed", "call_id": call_id, "action": "accept"}
        entry = await service.ended(call_id)
        assert service.metric("sip_router_active_calls", api="realtime") == 0
        assert (
            service.metric(
                "sip_router_sideband_connections_total", api="realtime", outcome="connected"
            )
            == 1
        )

    [accept] = fake.requests_for(call_id)
    assert accept.verb == "accept"
    tools = [tool["name"] for tool in accept.body["tools"]]
    assert tools == ["transfer_call", "end_call", "lookup_appointment"]
    assert "greeting" not in accept.body
    first = fake.client_events_for(call_id)[0]
    assert first["type"] == "response.create"
    assert "Lakeside Clinic, how can I help?" in first["response"]["instructions"]
    assert [a.authorization for a in fake.sideband_attempts_for(call_id)] == [f"Bearer {API_KEY}"]
    assert entry["end_reason"] == "caller_hung_up"
    assert entry["duration_s"] >= 0
    assert "ended_at" in entry


async def test_transfer_call_refers_once_after_the_agents_words(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            AgentCallsFunction("transfer_call", {"target": "front_desk"}, call_id="call_t"),
        ],
    )
    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        await service.call(call_id=call_id)
        entry = await service.ended(call_id)
        assert service.metric("sip_router_transfers_total", outcome="ok") == 1
        assert (
            service.metric(
                "sip_router_function_calls_total", function="transfer_call", outcome="ok"
            )
            == 1
        )

    assert sent_types(fake, call_id) == [
        "response.create",
        "conversation.item.create",
        "response.create",
    ]
    assert outputs(fake, call_id) == [
        ("call_t", {"status": "transferring", "target": "front_desk"})
    ]
    assert fake.verbs_for(call_id) == ["accept", "refer"]
    refer = fake.requests_for(call_id)[1]
    assert refer.body == {"target_uri": FRONT_DESK}
    said = [e for e in fake.client_events if e.call_id == call_id][-1]
    assert refer.received_at - said.received_at >= fake.audio_s
    assert entry["end_reason"] == "transferred"
    assert entry["transfer"]["target_uri"] == FRONT_DESK
    assert entry["transfer"]["status"] == "ok"


async def test_end_call_hangs_up_after_the_goodbye(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            Emit(
                {
                    "type": "response.output_audio_transcript.done",
                    "event_id": "event_2",
                    "response_id": "resp_1",
                    "item_id": "item_2",
                    "output_index": 0,
                    "content_index": 0,
                    "transcript": "Goodbye!",
                }
            ),
            AgentCallsFunction("end_call", {}, "call_e"),
        ],
    )
    # Without SIP_ROUTER_TRANSCRIPTS no transcript is kept, whatever the profile says.
    settings = settings_for(tmp_path, fake, function_service, transcripts=False)
    async with replica(settings) as service:
        await service.call(call_id=call_id)
        entry = await service.ended(call_id)
    assert "transcript" not in entry
    assert fake.verbs_for(call_id) == ["accept", "hangup"]
    hangup = fake.requests_for(call_id)[1]
    said = [e for e in fake.client_events if e.call_id == call_id][-1]
    assert hangup.received_at - said.received_at >= fake.audio_s
    assert entry["end_reason"] == "hangup"


async def test_a_function_is_answered_by_the_company_service_signed(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            Emit(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": "event_1",
                    "item_id": "item_1",
                    "content_index": 0,
                    "transcript": "When is my next appointment?",
                }
            ),
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_f"),
            AwaitClient("response.create", count=2),
            HangUp(),
        ],
    )
    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        await service.call(call_id=call_id)
        entry = await service.ended(call_id)
        shown = await service.client.get(
            f"/admin/calls/{call_id}", headers={"Authorization": "Bearer admin-token"}
        )
        assert (
            service.metric(
                "sip_router_function_calls_total", function="lookup_appointment", outcome="ok"
            )
            == 1
        )
    assert outputs(fake, call_id) == [("call_f", {"next": "Tuesday 9:00"})]
    [(headers, content)] = function_service.requests
    body = json.loads(content)
    assert body["function"] == "lookup_appointment"
    assert body["arguments"] == {"date_of_birth": "1980-02-03"}
    assert body["call_id"] == call_id
    assert body["caller"]["e164"] == CALLER
    # Signed with SIP_ROUTER_OUTBOUND_SECRET, verifiable with any Standard Webhooks library.
    Webhook(OUTBOUND_SECRET).verify(content, headers)
    # The call's record shows its sideband events and (SIP_ROUTER_TRANSCRIPTS) transcript.
    assert [turn["text"] for turn in entry["transcript"]] == ["When is my next appointment?"]
    assert entry["transcript"][0]["role"] == "caller"
    events = shown.json()["events"]
    assert [e["event"] for e in events] == ["greeting", "function_call"]
    assert (events[1]["function"], events[1]["outcome"]) == ("lookup_appointment", "ok")
    assert shown.json()["end_reason"] == "caller_hung_up"


async def test_a_refer_rule_accepts_announces_then_refers(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        answer = await service.call(SALES_LINE)
        call_id = call_id_of(answer)
        assert answer.json()["action"] == "refer"
        entry = await service.ended(call_id)
    assert fake.verbs_for(call_id) == ["accept", "refer"]
    accept, refer = fake.requests_for(call_id)
    assert "tools" not in accept.body
    [announce] = [e for e in fake.client_events_for(call_id) if e["type"] == "response.create"]
    assert "Connecting you to sales now." in announce["response"]["instructions"]
    said = [e for e in fake.client_events if e.call_id == call_id][-1]
    assert refer.received_at - said.received_at >= fake.audio_s
    assert refer.body == {"target_uri": "tel:+14155550150"}
    assert entry["end_reason"] == "transferred"
    assert entry["transfer"]["status"] == "ok"


async def test_before_accept_refers_the_ringing_call_and_stays_away(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        answer = await service.call(OLD_TRUNK_LINE)
        call_id = call_id_of(answer)
        assert len(service.attendant.active) == 0
    assert fake.verbs_for(call_id) == ["refer"]
    assert fake.sideband_attempts_for(call_id) == []


async def test_a_failed_after_accept_refer_applies_on_error_to_the_live_call(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script(call_id, Respond(200), Respond(400, code="invalid_target", message="refused"))
    fake.script_sideband(
        call_id, [AwaitClient("session.update"), AwaitClient("response.create", 2), HangUp()]
    )
    settings = settings_for(
        tmp_path, fake, function_service, on_error="{accept: {profile: message_taker}}"
    )
    async with replica(settings) as service:
        await service.call(SALES_LINE, call_id=call_id)
        entry = await service.ended(call_id)
    assert fake.verbs_for(call_id) == ["accept", "refer"]
    [update] = [e for e in fake.client_events_for(call_id) if e["type"] == "session.update"]
    assert update["session"]["instructions"] == "The line is busy. Take a message."
    assert entry["transfer"]["status"] == "failed"
    assert entry["end_reason"] == "caller_hung_up"


async def test_after_on_error_accepts_the_live_call_its_profiles_tools_are_answered(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script(call_id, Respond(200), Respond(400, code="invalid_target", message="refused"))
    fake.script_sideband(
        call_id,
        [
            AwaitClient("session.update"),
            AwaitClient("response.create", 2),
            # The desk profile (on_error) offers the company function and end_call.
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_f"),
            AwaitClient("response.create", 3),
            AgentCallsFunction("end_call", {}, "call_bye"),
        ],
    )
    settings = settings_for(tmp_path, fake, function_service, on_error="{accept: {profile: desk}}")
    async with replica(settings) as service:
        await service.call(SALES_LINE, call_id=call_id)
        entry = await service.ended(call_id)
    [update] = [e for e in fake.client_events_for(call_id) if e["type"] == "session.update"]
    assert [tool["name"] for tool in update["session"]["tools"]] == [
        "transfer_call",
        "end_call",
        "lookup_appointment",
    ]
    assert outputs(fake, call_id) == [
        ("call_f", {"next": "Tuesday 9:00"}),
        ("call_bye", {"status": "ending the call; say goodbye"}),
    ]
    assert len(function_service.requests) == 1
    assert fake.verbs_for(call_id) == ["accept", "refer", "hangup"]
    assert entry["transfer"]["status"] == "failed"
    assert entry["end_reason"] == "hangup"


async def test_a_call_another_replica_already_owns_is_not_driven_twice(
    tmp_path: Path,
    fake: FakeOpenAI,
    function_service: FunctionService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    call_id = "rtc_" + uuid4().hex
    caplog.set_level(logging.WARNING, logger="sip_router.sideband")
    decision = Decision(
        action="accept",
        body={},
        rule="clinic",
        profile="desk",
        max_duration_s=None,
        ruleset="1",
        control=CallControl(greeting="Lakeside Clinic, how can I help?"),
    )
    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        attendant = service.attendant
        ticket = CallTicket(call_id, "clinic", "desk", {}, {}, active_until=time.time() + 60)
        assert await attendant.ownership.register(ticket, "another-replica", LEASE_TTL_S)
        await attendant.stay_with(call_id, decision, {}, {})
        assert call_id not in attendant.active
    assert fake.sideband_attempts_for(call_id) == []
    [line] = [r for r in caplog.records if r.getMessage() == "the call is owned by another replica"]
    assert line.levelno == logging.WARNING
    assert line.fields == {"call_id": call_id}  # type: ignore[attr-defined]


async def test_a_call_whose_lease_cannot_be_registered_is_still_driven_to_its_end(
    tmp_path: Path,
    fake: FakeOpenAI,
    function_service: FunctionService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(
        call_id,
        # Several lease renewal rounds pass before the agent ends the call.
        [AwaitClient("response.create"), Pause(0.4), AgentCallsFunction("end_call", {}, "bye")],
    )
    caplog.set_level(logging.ERROR, logger="sip_router.sideband")

    async def store_down(*_: Any) -> bool:
        raise RedisConnectionError("Connection refused")

    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        attendant = service.attendant
        attendant.ownership.register = store_down  # type: ignore[method-assign,assignment]
        attendant.leases = LeaseKeeper(attendant.ownership, attendant.owner, renew_every_s=0.05)
        await service.call(call_id=call_id)
        entry = await service.ended(call_id)
    assert entry["end_reason"] == "hangup"
    assert fake.verbs_for(call_id) == ["accept", "hangup"]
    assert [r.getMessage() for r in caplog.records] == ["could not register a call's lease"]


async def test_a_recorded_accept_sent_again_stays_with_the_call_as_first_decided(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(call_id, [AwaitClient("response.create"), HangUp()])
    # Decided by rules since reloaded (another ruleset version): only the record knows
    # what to do after the accept.
    recorded = Decision(
        action="accept",
        body={"type": "realtime", "model": "gpt-realtime", "instructions": "Take a message."},
        rule="clinic",
        profile="desk",
        max_duration_s=None,
        ruleset="an-older-ruleset",
        control=CallControl(greeting="Thanks for calling the old number."),
    )
    async with replica(settings_for(tmp_path, fake, function_service)) as service:
        store = service.app.state.services.store
        earlier = await store.claim("wh_earlier", call_id, 0.05)
        assert await store.record_decision(earlier, decision_record(recorded))
        await asyncio.sleep(0.1)
        answer = await service.call(call_id=call_id)
        entry = await service.ended(call_id)
    assert answer.json()["status"] == "processed"
    [accept] = fake.requests_for(call_id)
    assert accept.body == recorded.body
    first = fake.client_events_for(call_id)[0]
    assert "Thanks for calling the old number." in first["response"]["instructions"]
    assert entry["end_reason"] == "caller_hung_up"


async def test_dry_run_stays_away_but_logs_what_would_happen(
    tmp_path: Path,
    fake: FakeOpenAI,
    function_service: FunctionService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_for(tmp_path, fake, function_service, dry_run=True)
    caplog.set_level(logging.INFO, logger="sip_router.webhook")
    async with replica(settings) as service:
        answer = await service.call()
        assert answer.json()["status"] == "dry_run"
    assert fake.requests == []
    assert fake.sideband_attempts_for(call_id_of(answer)) == []
    [line] = [r for r in caplog.records if r.getMessage() == "webhook"]
    shown = line.fields["after_accept"]  # type: ignore[attr-defined]
    assert shown["tools_added"] == ["transfer_call", "end_call", "lookup_appointment"]
    assert shown["greeting"] == "Lakeside Clinic, how can I help?"
    assert shown["transfer_targets"] == {"front_desk": FRONT_DESK}


@pytest.mark.redis
async def test_a_stopping_replica_hands_its_call_to_another(
    tmp_path: Path,
    fake: FakeOpenAI,
    function_service: FunctionService,
    redis_url: str,
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(
        call_id,
        [AwaitClient("response.create"), Pause(60)],
        # The second replica attaches again; the agent then ends the call.
        [AgentCallsFunction("end_call", {}, "call_bye")],
    )
    prefix = f"sip-router-test:{uuid4().hex}:"
    stores = [RedisStore.from_url(redis_url, prefix=prefix) for _ in range(2)]
    settings = settings_for(tmp_path, fake, function_service)
    async with replica(settings, store=stores[1]) as second:
        async with replica(settings, store=stores[0]) as first:
            await first.call(call_id=call_id)
            while not fake.client_events_for(call_id):
                await asyncio.sleep(0.02)
            assert call_id in first.attendant.active
        # The first replica stopped (what SIGTERM does): its lease is released at once.
        entry = await second.ended(call_id)
        assert isinstance(second.attendant.ownership, RedisCallOwnership)
    assert len(fake.sideband_attempts_for(call_id)) == 2
    greetings = [
        e for e in fake.client_events_for(call_id) if "instructions" in e.get("response", {})
    ]
    assert len(greetings) == 1
    assert fake.verbs_for(call_id) == ["accept", "hangup"]
    assert entry["end_reason"] == "hangup"
    await delete_prefix(redis_url, prefix)


@pytest.mark.redis
async def test_a_call_under_on_errors_control_keeps_it_when_another_replica_takes_over(
    tmp_path: Path,
    fake: FakeOpenAI,
    function_service: FunctionService,
    redis_url: str,
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script(call_id, Respond(200), Respond(400, code="invalid_target", message="refused"))
    fake.script_sideband(
        call_id,
        [AwaitClient("session.update"), AwaitClient("response.create", 2), Pause(60)],
        # On the second replica: the tools of the desk profile (on_error's), not the sales
        # rule's refer, are what the call is under.
        [
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_f"),
            AwaitClient("response.create", 3),
            AgentCallsFunction("end_call", {}, "call_bye"),
        ],
    )
    prefix = f"sip-router-test:{uuid4().hex}:"
    stores = [RedisStore.from_url(redis_url, prefix=prefix) for _ in range(2)]
    settings = settings_for(tmp_path, fake, function_service, on_error="{accept: {profile: desk}}")
    async with replica(settings, store=stores[1]) as second:
        async with replica(settings, store=stores[0]) as first:
            await first.call(SALES_LINE, call_id=call_id)
            while "response.create" not in sent_types(fake, call_id)[1:]:
                await asyncio.sleep(0.02)
        # The first replica stopped: the second takes the call over.
        entry = await second.ended(call_id)
    assert len(fake.sideband_attempts_for(call_id)) == 2
    assert outputs(fake, call_id) == [
        ("call_f", {"next": "Tuesday 9:00"}),
        ("call_bye", {"status": "ending the call; say goodbye"}),
    ]
    assert fake.verbs_for(call_id) == ["accept", "refer", "hangup"]
    assert entry["end_reason"] == "hangup"
    await delete_prefix(redis_url, prefix)
