"""One action per call when a replica dies mid-action or the final write is lost: the
decision recorded before sending is what any later owner sends again."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest
import redis.asyncio

from app.app_factory import create_app
from app.calls.call_control import (
    CallControl,
    CompanyFunction,
    ReferAfterAccept,
    ReferFailure,
    TransferTarget,
)
from app.recorded_decisions import decision_from_record, decision_record
from app.rules.ruleset import Decision
from app.store import DONE_KEEP_S, Claim, MemoryStore, RedisStore, StoreUnavailable
from app.webhook_signing import signed_test_call
from tests.conftest import ServiceFactory, app_settings, deliver, running
from tests.fake_openai import Delay, FakeOpenAI, Respond
from tests.redis_server import REDIS_SERVER, RedisServer, delete_prefix

CALLER, CALLED = "+14155550123", "+14155550100"
LEASE_S = 0.3

ACCEPT_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Caller {{ caller.e164 }}, first ruleset."}
default: {accept: {profile: desk}}
"""
# What the same call gets from the rules after a reload, or on another replica.
REJECT_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
default: {reject: {status_code: 603}}
"""


class ShortLeases:
    """A RedisStore whose leases last LEASE_S whatever the service asks, so that a lease
    left behind expires within the test."""

    def __init__(self, inner: RedisStore) -> None:
        self.inner = inner

    async def claim(
        self, webhook_id: str, call_id: str, lease_s: float, sip_call: str | None = None
    ) -> Claim:
        return await self.inner.claim(webhook_id, call_id, LEASE_S, sip_call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class PausedDuringFinish(ShortLeases):
    """Redis pauses writes just as the first outcome is written, longer than the store's
    timeouts: the finished record is lost."""

    def __init__(self, inner: RedisStore, admin: redis.asyncio.Redis) -> None:
        super().__init__(inner)
        self.admin = admin
        self.paused = False

    async def finish(
        self, claim: Claim, outcome: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        if not self.paused:
            self.paused = True
            await self.admin.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        return await self.inner.finish(claim, outcome, keep_s)


class FrozenAfterSending(httpx.AsyncBaseTransport):
    """The fake's transport for a replica that stops dead once its request has left:
    OpenAI carries the action out and no answer ever comes back, as with a killed process."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self._inner = fake.mock_transport()
        self.sent = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._inner.handle_async_request(request)
        self.sent.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def new_call_id() -> str:
    return "rtc_" + secrets.token_hex(16)


def sent_requests(fake: FakeOpenAI, call_id: str) -> list[tuple[str, str, int | None]]:
    """(verb, exact body, status answered) of each request about the call."""
    return [
        (r.verb, json.dumps(r.body, sort_keys=True), r.status) for r in fake.requests_for(call_id)
    ]


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    value = f"sip-router-test:{secrets.token_hex(8)}:"
    yield value
    await delete_prefix(redis_url, value)


@pytest.mark.redis
async def test_a_replica_killed_mid_action_is_followed_by_the_same_request_not_a_new_decision(
    redis_url: str,
    prefix: str,
    fake: FakeOpenAI,
    secret: str,
    write_rules: Callable[[str], Path],
) -> None:
    frozen = FrozenAfterSending(fake)
    replica_a = create_app(
        app_settings(write_rules(ACCEPT_RULES), secret, action_deadline_s=1.0),
        transport=frozen,
        store=ShortLeases(RedisStore.from_url(redis_url, prefix=prefix)),
        watch_interval_s=None,
    )
    # The other replica's rules would reject this call.
    replica_b = create_app(
        app_settings(write_rules(REJECT_RULES), secret, action_deadline_s=1.0),
        transport=fake.mock_transport(),
        store=ShortLeases(RedisStore.from_url(redis_url, prefix=prefix)),
        watch_interval_s=None,
    )
    call_id = new_call_id()
    delivery = signed_test_call(secret, CALLER, CALLED, now=int(time.time()), call_id=call_id)
    async with running(replica_a) as a, running(replica_b) as b:
        first = asyncio.create_task(deliver(a, delivery))
        try:
            await asyncio.wait_for(frozen.sent.wait(), 10)
            (accept,) = sent_requests(fake, call_id)
            assert accept[0] == "accept"
            # While A's lease lasts, B leaves the call alone.
            assert (await deliver(b, delivery)).status_code == 409

            await asyncio.sleep(LEASE_S + 0.2)
            again = await deliver(b, delivery)
            later = await deliver(b, delivery)
        finally:
            first.cancel()

    assert again.json() == {"status": "processed", "call_id": call_id, "action": "accept"}
    assert later.json() == {"status": "duplicate", "call_id": call_id, "action": "accept"}
    # Exactly A's request, sent once more: same verb, same body; never B's reject.
    assert sent_requests(fake, call_id) == [accept, accept]


@pytest.mark.redis
@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
async def test_a_lost_finished_record_leads_to_the_same_request_answered_already_decided(
    tmp_path: Path,
    service_factory: ServiceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server of its own: the test pauses it.
    server = RedisServer(tmp_path / "redis", db=0)
    server.start()
    admin = redis.asyncio.Redis.from_url(server.url)
    store = PausedDuringFinish(RedisStore.from_url(server.url), admin)
    try:
        async with service_factory(
            rules_text=ACCEPT_RULES, store=store, action_deadline_s=1.0
        ) as service:
            call_id = new_call_id()
            with caplog.at_level("ERROR", logger="sip_router.webhook"):
                sent = await service.send(CALLER, CALLED, call_id=call_id)
            await admin.execute_command("CLIENT", "UNPAUSE")
            assert sent.answer == {"status": "processed", "call_id": call_id, "action": "accept"}
            assert "could not record a finished call in the shared store" in caplog.messages
            (accept,) = sent_requests(service.fake, call_id)

            # The rules change before OpenAI delivers the webhook again.
            service.settings.rules.write_text(REJECT_RULES, encoding="utf-8")
            await service.app.state.services.rules.reload("test")
            await asyncio.sleep(LEASE_S + 0.2)
            service.fake.script(call_id, Respond(409, code="decision_already_made"))
            again = await service.deliver(sent.delivery)
            later = await service.deliver(sent.delivery)
    finally:
        await admin.aclose()
        server.stop()

    assert again.answer == {"status": "duplicate", "call_id": call_id, "action": "accept"}
    assert later.answer == {"status": "duplicate", "call_id": call_id, "action": "accept"}
    verb, body, _ = accept
    assert sent_requests(service.fake, call_id) == [(verb, body, 200), (verb, body, 409)]


def test_a_recorded_decision_reads_back_as_the_same_request() -> None:
    decision = Decision(
        action="accept",
        body={"type": "realtime", "instructions": "Hi", "audio": {"output": {"voice": "marin"}}},
        rule="office hours",
        profile="desk",
        max_duration_s=600.0,
        ruleset="3f2a",
        error=None,
    )

    again = decision_from_record(json.loads(json.dumps(decision_record(decision))))

    assert again == decision


def test_a_recorded_decision_keeps_every_part_of_its_call_control() -> None:
    desk = CallControl(
        greeting="Lakeside Clinic, how can I help?",
        transfer_targets=MappingProxyType(
            {"front_desk": TransferTarget("sip:desk@pbx.example.com", "the front desk")}
        ),
        end_call=True,
        functions=MappingProxyType(
            {
                "lookup": CompanyFunction(
                    "lookup",
                    "https://crm.example.com/lookup",
                    "Find the caller's next appointment.",
                    MappingProxyType({"type": "object", "properties": {"dob": {"type": "string"}}}),
                    timeout_s=3.5,
                )
            }
        ),
        transcript=True,
    )
    failure = ReferFailure("session", MappingProxyType({"type": "realtime"}), control=desk)
    control = CallControl(
        greeting="Connecting you.",
        refer=ReferAfterAccept("tel:+14155550150", "One moment, please.", failure),
    )
    decision = Decision(
        action="refer",
        body={"target_uri": "tel:+14155550150"},
        rule="sales",
        profile=None,
        max_duration_s=None,
        ruleset="3f2a",
        accept_body={"type": "realtime", "tools": []},
        control=control,
        tools_added=("transfer_call", "end_call", "lookup"),
    )

    again = decision_from_record(json.loads(json.dumps(decision_record(decision))))

    assert again == decision
    assert again.control == control
    assert again.tools_added == ("transfer_call", "end_call", "lookup")


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"action": "hangup", "body": {}},
        {"action": "accept", "body": "text"},
        {"action": "reject", "body": {}, "rule": 7},
        {"action": "reject", "body": {}, "max_duration_s": "long"},
        {"action": "accept", "body": {}, "control": "greet"},
        {"action": "accept", "body": {}, "control": {"refer": {"on_error": 1}}},
        {"action": "accept", "body": {}, "tools_added": "end_call"},
    ],
)
def test_a_record_that_is_not_a_decision_is_refused(record: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not a recorded decision"):
        decision_from_record(record)


# --- a recorded decision found by a delivery, in process memory -----------------------

REFER = {"action": "refer", "body": {"target_uri": "sip:night@pbx.example.com"}, "rule": "night"}


async def abandoned_decision(store: MemoryStore, call_id: str, decision: dict[str, Any]) -> None:
    """A decision recorded by an owner that then vanished; its lease has expired."""
    claim = await store.claim("msg_vanished", call_id, 0.01)
    assert await store.record_decision(claim, decision)
    await asyncio.sleep(0.02)


async def test_a_found_decision_is_sent_instead_of_deciding(
    service_factory: ServiceFactory,
) -> None:
    store = MemoryStore()
    async with service_factory(rules_text=ACCEPT_RULES, store=store) as service:
        call_id = new_call_id()
        await abandoned_decision(store, call_id, REFER)

        sent = await service.send(CALLER, CALLED, call_id=call_id)

        assert sent.answer == {"status": "processed", "call_id": call_id, "action": "refer"}
        assert [(r.verb, r.body) for r in service.fake.requests_for(call_id)] == [
            ("refer", REFER["body"])
        ]


async def test_a_found_decision_answered_only_5xx_is_kept_for_the_next_delivery(
    service_factory: ServiceFactory,
) -> None:
    store = MemoryStore()
    async with service_factory(rules_text=ACCEPT_RULES, store=store) as service:
        call_id = new_call_id()
        await abandoned_decision(store, call_id, REFER)
        service.behaviours["refer"] = Respond(503)

        first = await service.send(CALLER, CALLED, call_id=call_id)
        service.behaviours.clear()
        second = await service.deliver(first.delivery)

        assert first.status_code == 503
        assert second.answer == {"status": "processed", "call_id": call_id, "action": "refer"}
        # Never on_error, never the rules' accept: the recorded refer, until it got through.
        assert [(r.verb, r.status) for r in service.fake.requests_for(call_id)] == [
            ("refer", 503)
        ] * 3 + [("refer", 200)]


async def test_a_found_decision_refused_by_openai_is_unknown_not_on_error(
    service_factory: ServiceFactory,
) -> None:
    store = MemoryStore()
    async with service_factory(rules_text=ACCEPT_RULES, store=store) as service:
        call_id = new_call_id()
        await abandoned_decision(store, call_id, REFER)
        # The earlier copy may have been applied: this refusal says nothing about it.
        service.fake.script(call_id, Respond(400, code="invalid_state"))

        sent = await service.send(CALLER, CALLED, call_id=call_id)

        assert sent.status_code == 200
        assert sent.answer == {"status": "unknown", "call_id": call_id, "action": "refer"}
        assert service.fake.verbs_for(call_id) == ["refer"]


class LeaseLostBeforeRecording(ShortLeases):
    """Another owner took the call between the claim and the recording of the decision."""

    async def record_decision(self, claim: Claim, decision: Mapping[str, Any]) -> bool:
        return False


async def test_a_delivery_that_lost_its_lease_sends_nothing(
    service_factory: ServiceFactory,
) -> None:
    store = LeaseLostBeforeRecording(MemoryStore())
    async with service_factory(store=store) as service:
        sent = await service.send(CALLER, CALLED)

    assert sent.status_code == 409
    assert sent.answer["status"] == "in_flight"
    assert service.fake.requests == []


class StoreDownWhileRecording(ShortLeases):
    """The shared store stops answering between the claim and the recording."""

    async def record_decision(self, claim: Claim, decision: Mapping[str, Any]) -> bool:
        raise StoreUnavailable("connection refused")


async def test_a_store_down_while_recording_sends_nothing_and_is_logged_as_an_error(
    service_factory: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = StoreDownWhileRecording(MemoryStore())
    async with service_factory(store=store) as service:
        with caplog.at_level("INFO", logger="sip_router.webhook"):
            sent = await service.send(CALLER, CALLED)

    assert sent.status_code == 503
    assert service.fake.requests == []
    (line,) = [r for r in caplog.records if r.name == "sip_router.webhook"]
    assert line.levelname == "ERROR"


async def test_a_delivery_cancelled_mid_action_leaves_its_decision_for_the_next(
    service_factory: ServiceFactory,
) -> None:
    store = MemoryStore()
    async with service_factory(rules_text=ACCEPT_RULES, store=store) as service:
        call_id = new_call_id()
        service.fake.script(call_id, Delay(30))
        delivery = signed_test_call(
            service.secret, CALLER, CALLED, now=int(time.time()), call_id=call_id
        )
        task = asyncio.create_task(service.deliver(delivery))
        while not service.fake.requests_for(call_id):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (accept,) = sent_requests(service.fake, call_id)

        # The rules change; the call's decision does not.
        service.settings.rules.write_text(REJECT_RULES, encoding="utf-8")
        await service.app.state.services.rules.reload("test")
        again = await service.deliver(delivery)

    assert again.answer == {"status": "processed", "call_id": call_id, "action": "accept"}
    assert [(verb, body) for verb, body, _ in sent_requests(service.fake, call_id)] == [
        accept[:2]
    ] * 2
