"""Staying with a GPT-Live call, end to end over real sockets.

The service runs in process with its lifespan; the accepted call is handed to its call
attendant with a Decision for `api: live` (as the webhook does after a Live accept), and
everything it sends goes over loopback to the fake OpenAI: the Live sideband
(`/v1/live/sessions/{id}/attach`, where every client event is checked against the Live
event shapes) and the Live call endpoints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI

from app.app_factory import create_app
from app.calls.call_attendant import CallAttendant
from app.calls.call_control import CallControl, ReferAfterAccept, ReferFailure
from app.calls.function_requests import CallFacts, FunctionRequester
from app.calls.live_session import QUIET_S
from app.calls.sideband_connection import SidebandDriver, sideband_url
from app.openai_calls import OpenAICallsClient
from app.rules.ruleset import Decision
from app.rules.simulation import simulated_context
from app.settings import Settings
from app.store import RedisStore
from tests.conftest import API_KEY, new_webhook_secret, running
from tests.fake_openai import (
    AgentCallsFunction,
    AgentStep,
    AwaitClient,
    CloseSession,
    DropConnection,
    Emit,
    FakeOpenAI,
    Pause,
    Respond,
)
from tests.redis_server import delete_prefix

RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "You answer the phone."}
default: {accept: {profile: desk}}
"""
GREETING = "Lakeside Clinic, how can I help?"
SALES = "tel:+14155550150"
DESK = CallControl(greeting=GREETING, end_call=True, transcript=True)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(API_KEY)
    fake.audio_s = 0.2
    with fake.serve_on_loopback() as base_url:
        fake.base_url = base_url  # type: ignore[attr-defined]
        yield fake
    assert fake.sideband_problems == []


def settings_for(tmp_path: Path, fake: FakeOpenAI, **fields: Any) -> Settings:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    values: dict[str, Any] = {
        "openai_api_key": API_KEY,
        "openai_webhook_secret": new_webhook_secret(),
        "openai_base_url": fake.base_url,  # type: ignore[attr-defined]
        "rules": rules,
        "transcripts": True,
        "admin_token": "admin-token",
        **fields,
    }
    return Settings(_env_file=None, **values)


def live_decision(control: CallControl = DESK, **fields: Any) -> Decision:
    values: dict[str, Any] = {
        "action": "accept",
        "body": {"type": "live", "model": "gpt-live-1"},
        "rule": "clinic",
        "profile": "live_desk",
        "max_duration_s": None,
        "ruleset": "1",
        "control": control,
        "api": "live",
        **fields,
    }
    return Decision(**values)


class Replica:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def attendant(self) -> CallAttendant:
        keeper = self.app.state.services.processor._keeper
        assert isinstance(keeper, CallAttendant)
        return keeper

    async def accepted(
        self,
        fake: FakeOpenAI,
        decision: Decision | None = None,
        *scripts: Sequence[AgentStep],
        session_id: str | None = None,
    ) -> str:
        """A GPT-Live call just accepted for `decision` (the agent acting as `scripts` say,
        one per connection), in the call log, and stayed with."""
        session_id = session_id or "live_" + uuid4().hex
        fake.script_sideband(session_id, *scripts)
        fake.activate(session_id)
        entry = {"time": time.time(), "call_id": session_id, "api": "live", "action": "accept"}
        await self.app.state.services.store.append(entry, {"call_id": session_id})
        await self.attendant.stay_with(session_id, decision or live_decision(), {}, {})
        return session_id

    async def ended(self, call_id: str, timeout_s: float = 20) -> dict[str, Any]:
        """The call's call log entry once its end is recorded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = await self.client.get(
                "/admin/calls", headers={"Authorization": "Bearer admin-token"}
            )
            for entry in answer.json()["calls"]:
                if entry["call_id"] == call_id and "end_reason" in entry:
                    return dict(entry)
            await asyncio.sleep(0.05)
        raise AssertionError(f"the end of {call_id} was not recorded")

    def metric(self, name: str, **labels: str) -> float:
        value = self.app.state.services.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)


@asynccontextmanager
async def replica(settings: Settings, **options: Any) -> AsyncIterator[Replica]:
    app = create_app(settings, watch_interval_s=None, **options)
    async with running(app) as client:
        yield Replica(app, client)


def sent_types(fake: FakeOpenAI, call_id: str) -> list[str]:
    return [event["type"] for event in fake.client_events_for(call_id)]


def last_speech_at(fake: FakeOpenAI, call_id: str) -> float:
    return max(
        e.sent_at
        for e in fake.server_events_for(call_id)
        if e.event["type"] in ("session.output_transcript.delta", "session.output_audio.delta")
    )


def caller_says(text: str) -> Emit:
    return Emit({"type": "session.input_transcript.delta", "event_id": uuid4().hex, "delta": text})


async def test_end_call_on_a_live_call_greets_first_and_hangs_up_once_when_quiet(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    script = [
        AwaitClient("session.commentary.append"),
        Pause(0.3),
        caller_says("I'd like to "),
        caller_says("cancel, bye."),
        AgentCallsFunction("end_call", {}, call_id="call_bye"),
        # The same function call delivered again is not answered twice.
        AgentCallsFunction("end_call", {}, call_id="call_bye"),
    ]
    async with replica(settings_for(tmp_path, fake)) as service:
        session_id = await service.accepted(fake, live_decision(), script)
        while not fake.client_events_for(session_id):
            await asyncio.sleep(0.02)
        assert service.metric("sip_router_active_calls", api="live") == 1
        entry = await service.ended(session_id)
        assert service.metric("sip_router_active_calls", api="live") == 0
        assert (
            service.metric("sip_router_sideband_connections_total", api="live", outcome="connected")
            == 1
        )
        assert (
            service.metric("sip_router_function_calls_total", function="end_call", outcome="ok")
            == 1
        )

    assert [a.authorization for a in fake.sideband_attempts_for(session_id)] == [
        f"Bearer {API_KEY}"
    ]
    assert sent_types(fake, session_id) == [
        "session.instructions.append",
        "session.commentary.append",
        "response.item.create",
        "response.create",
    ]
    greeting = fake.client_events_for(session_id)[0]
    assert GREETING in greeting["content"]
    assert greeting["delegation_id"] is None
    assert fake.client_events_for(session_id)[2]["item"]["call_id"] == "call_bye"
    [hangup] = fake.requests_for(session_id)
    assert (hangup.verb, hangup.valid, hangup.status) == ("hangup", True, 200)
    # Hung up only once the agent's goodbye had been quiet for QUIET_S.
    assert hangup.received_at - last_speech_at(fake, session_id) >= QUIET_S
    assert entry["end_reason"] == "close_requested"
    assert entry["duration_s"] > QUIET_S
    assert "ended_at" in entry
    roles = [(turn["role"], turn["text"]) for turn in entry["transcript"]]
    assert roles == [
        ("agent", "word0 word1 word2 word3"),
        ("caller", "I'd like to cancel, bye."),
        ("agent", "word0 word1 word2 word3"),
    ]
    assert [e["event"] for e in entry["events"]] == ["greeting", "function_call"]


async def test_session_closed_ends_the_call_with_its_reason(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    async with replica(settings_for(tmp_path, fake, transcripts=False)) as service:
        session_id = await service.accepted(
            fake,
            live_decision(),
            [AwaitClient("session.commentary.append"), CloseSession("expired")],
        )
        entry = await service.ended(session_id)
    assert entry["end_reason"] == "expired"
    assert entry["duration_s"] >= 0
    assert "transcript" not in entry
    assert fake.requests_for(session_id) == []


async def test_a_refer_rule_on_a_live_call_announces_then_refers_when_quiet(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    control = CallControl(refer=ReferAfterAccept(SALES, "Connecting you to sales now."))
    async with replica(settings_for(tmp_path, fake)) as service:
        session_id = await service.accepted(fake, live_decision(control))
        entry = await service.ended(session_id)
        assert service.metric("sip_router_transfers_total", outcome="ok") == 1
    instruction, nudge = fake.client_events_for(session_id)
    assert "Connecting you to sales now." in instruction["content"]
    assert nudge["type"] == "session.commentary.append"
    [refer] = fake.requests_for(session_id)
    assert (refer.verb, refer.body, refer.valid) == ("refer", {"target_uri": SALES}, True)
    assert refer.received_at - last_speech_at(fake, session_id) >= QUIET_S
    assert entry["transfer"]["target_uri"] == SALES
    assert entry["transfer"]["status"] == "ok"
    # The fake ends a transferred session as the caller leaving it.
    assert entry["end_reason"] == "remote_hangup"


async def test_a_failed_refer_on_a_live_call_tells_the_agent_and_keeps_the_call(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    on_error = ReferFailure("session", {"type": "live", "model": "gpt-live-1"}, control=DESK)
    control = CallControl(refer=ReferAfterAccept(SALES, "One moment.", on_error))
    async with replica(settings_for(tmp_path, fake)) as service:
        session_id = "live_" + uuid4().hex
        fake.script(session_id, Respond(400, code="invalid_target", message="refused"))
        await service.accepted(
            fake,
            live_decision(control),
            [AwaitClient("session.commentary.append", count=2), CloseSession("remote_hangup")],
            session_id=session_id,
        )
        entry = await service.ended(session_id)
    told = [e for e in fake.client_events_for(session_id) if e["type"].endswith(".append")]
    assert [e["type"] for e in told] == [
        "session.instructions.append",
        "session.commentary.append",
        "session.instructions.append",
        "session.commentary.append",
    ]
    assert "transfer" in told[2]["content"]
    assert fake.verbs_for(session_id) == ["refer"]
    assert entry["transfer"]["status"] == "failed"
    assert entry["end_reason"] == "remote_hangup"


def fast_reconnects() -> Generator[float]:
    while True:
        yield 0.05


async def test_a_dropped_live_sideband_reattaches_without_greeting_twice(
    fake: FakeOpenAI,
) -> None:
    session_id = "live_" + uuid4().hex
    fake.activate(session_id)
    fake.script_sideband(
        session_id,
        [AwaitClient("session.commentary.append"), DropConnection()],
        [AgentCallsFunction("end_call", {}, call_id="call_bye")],
    )
    async with httpx.AsyncClient() as http:
        calls = OpenAICallsClient(http, base_url=fake.base_url, api_key=API_KEY, deadline_s=2.0)  # type: ignore[attr-defined]
        driver = SidebandDriver(
            facts=CallFacts(session_id, {}, {}, "clinic", "live_desk"),
            control=DESK,
            url=sideband_url(fake.base_url, session_id, "live"),  # type: ignore[attr-defined]
            api_key=API_KEY,
            actions=calls,
            functions=FunctionRequester(http, secret=None),
            api="live",
            reconnect_delays=fast_reconnects,
        )
        async with asyncio.timeout(20):
            outcome = await driver.run()
    assert [a.status for a in fake.sideband_attempts_for(session_id)] == [101, 101]
    assert sent_types(fake, session_id).count("session.instructions.append") == 1
    assert fake.verbs_for(session_id) == ["hangup"]
    assert outcome.end_reason == "close_requested"
    assert outcome.answered == {"call_bye"}


def test_the_live_sideband_url_is_derived_from_the_base_url() -> None:
    assert (
        sideband_url("https://api.openai.com/v1", "live_u0_1", "live")
        == "wss://api.openai.com/v1/live/sessions/live_u0_1/attach"
    )
    assert (
        sideband_url("http://127.0.0.1:9001/v1/", "live_a/b", "live")
        == "ws://127.0.0.1:9001/v1/live/sessions/live_a%2Fb/attach"
    )
    assert sideband_url("https://api.openai.com/v1", "rtc_1") == (
        "wss://api.openai.com/v1/realtime?call_id=rtc_1"
    )


@pytest.mark.redis
async def test_a_live_call_handed_to_another_replica_attaches_the_live_way(
    tmp_path: Path, fake: FakeOpenAI, redis_url: str
) -> None:
    prefix = f"sip-router-test:{uuid4().hex}:"
    stores = [RedisStore.from_url(redis_url, prefix=prefix) for _ in range(2)]
    settings = settings_for(tmp_path, fake)
    async with replica(settings, store=stores[1]) as second:
        async with replica(settings, store=stores[0]) as first:
            session_id = await first.accepted(
                fake,
                live_decision(),
                [AwaitClient("session.commentary.append"), Pause(60)],
                # The second replica attaches again; the agent then ends the call.
                [AgentCallsFunction("end_call", {}, "call_bye")],
            )
            while not fake.client_events_for(session_id):
                await asyncio.sleep(0.02)
            assert first.metric("sip_router_active_calls", api="live") == 1
            assert first.metric("sip_router_active_calls", api="realtime") == 0
        # The first replica stopped (what SIGTERM does): its lease is released at once.
        entry = await second.ended(session_id)
    assert [a.status for a in fake.sideband_attempts_for(session_id)] == [101, 101]
    assert sent_types(fake, session_id).count("session.instructions.append") == 1
    assert fake.verbs_for(session_id) == ["hangup"]
    assert entry["end_reason"] == "close_requested"
    await delete_prefix(redis_url, prefix)


LIVE_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  voice:
    api: live
    model: gpt-live-1
    instructions: "You answer for Lakeside Clinic."
    delegation: {type: responses, responses: {model: gpt-5-mini}}
    greeting: "Lakeside Clinic, hello."
    end_call: true
    transcript: true
  desk: {model: gpt-realtime}
rules:
  - name: live-calls
    when: {api: live}
    accept: {profile: voice}
default: {accept: {profile: desk}}
"""


async def test_a_rule_files_live_profile_greets_and_ends_the_call(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    settings = settings_for(tmp_path, fake)
    settings.rules.write_text(LIVE_RULES, encoding="utf-8")
    async with replica(settings) as service:
        ruleset = service.app.state.services.rules.current
        session_id = "live_" + uuid4().hex
        ctx = simulated_context(
            ruleset,
            "+14155550123",
            "+14155550100",
            datetime.now(UTC),
            call_id=session_id,
            api="live",
        )
        decision = ruleset.decide(ctx)
        assert (decision.api, decision.rule, decision.profile) == ("live", "live-calls", "voice")
        tools = decision.request_body["session"]["delegation"]["responses"]["tools"]
        assert [tool["name"] for tool in tools] == ["end_call"]
        await service.accepted(
            fake,
            decision,
            [
                AwaitClient("session.commentary.append"),
                caller_says("Thanks, goodbye."),
                AgentCallsFunction("end_call", {}, call_id="call_bye"),
            ],
            session_id=session_id,
        )
        entry = await service.ended(session_id)
    greeting = fake.client_events_for(session_id)[0]
    assert greeting["type"] == "session.instructions.append"
    assert "Lakeside Clinic, hello." in greeting["content"]
    assert fake.verbs_for(session_id) == ["hangup"]
    assert entry["end_reason"] == "close_requested"
    assert ("caller", "Thanks, goodbye.") in [(t["role"], t["text"]) for t in entry["transcript"]]
