"""One phone call announced on both APIs (Realtime and GPT-Live), across three real
`sip-router serve` replicas sharing one Redis: exactly one decision reaches OpenAI, the other
announcement is a duplicate."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import httpx
import pytest

from app.webhook_signing import SignedDelivery, signed_test_call
from tests import test_service_processes as processes
from tests.fake_openai import Delay, FakeOpenAI
from tests.test_service_processes import ServiceProcess, StartServices, post_all

# The process tests' fixtures, used here by name.
fake_url = processes.fake_url
redis_db_url = processes.redis_db_url
start_services = processes.start_services

CALLER, CALLED = "+14155550123", "+14155550100"

# Each API's announcement is accepted with a profile of its own API.
RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  voice: {api: live, model: gpt-live-1, instructions: "Answer for the clinic."}
  desk: {model: gpt-realtime, instructions: "Answer for the clinic."}
rules:
  - name: live-calls
    when: {api: live}
    accept: {profile: voice}
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 503}}
"""

pytestmark = pytest.mark.redis


def phone_call(secret: str, fake: FakeOpenAI, n: int) -> tuple[SignedDelivery, SignedDelivery]:
    """The Realtime and the Live announcement of one phone call, linked in the fake."""
    suffix = f"u0_{time.monotonic_ns():x}{n}"
    sip_call_id = f"{suffix}@carrier.example"
    realtime, live = (
        signed_test_call(
            secret,
            CALLER,
            CALLED,
            now=int(time.time()),
            call_id=f"{prefix}_{suffix}",
            api=api,
            sip_call_id=sip_call_id,
        )
        for prefix, api in (("rtc", "realtime"), ("live", "live"))
    )
    fake.same_call(realtime.call_id, live.call_id)
    return realtime, live


async def post(service: ServiceProcess, delivery: SignedDelivery) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.post(
            service.webhook_url, content=delivery.body, headers=delivery.headers
        )


def decisions(fake: FakeOpenAI, *deliveries: SignedDelivery) -> list[tuple[str, str, str]]:
    ids = {d.call_id for d in deliveries}
    return [(r.api, r.verb, r.call_id) for r in fake.requests if r.call_id in ids]


def processed_lines(services: Sequence[ServiceProcess], *deliveries: SignedDelivery) -> int:
    return sum(
        1
        for service in services
        for delivery in deliveries
        for line in service.webhook_records(delivery.call_id)
        if line["outcome"] == "processed"
    )


async def test_one_phone_call_on_both_apis_is_decided_once_across_three_replicas(
    fake: FakeOpenAI, secret: str, start_services: StartServices, redis_db_url: str
) -> None:
    services = start_services(3, SIP_ROUTER_REDIS_URL=redis_db_url)

    # Realtime first, then Live on another replica; and the other way round.
    for order, (a, b) in (("realtime", (0, 1)), ("live", (1, 2))):
        realtime, live = phone_call(secret, fake, 0)
        first, second = (realtime, live) if order == "realtime" else (live, realtime)

        decided = await post(services[a], first)
        duplicate = await post(services[b], second)

        assert decided.json() == {
            "status": "processed",
            "call_id": first.call_id,
            "action": "accept",
        }
        assert duplicate.status_code == 200, duplicate.text
        assert duplicate.json() == {
            "status": "duplicate",
            "call_id": second.call_id,
            "action": "accept",
        }
        assert decisions(fake, realtime, live) == [(order, "accept", first.call_id)]
        assert processed_lines(services, realtime, live) == 1


async def test_both_announcements_at_once_on_three_replicas_decide_once_per_phone_call(
    fake: FakeOpenAI, secret: str, start_services: StartServices, redis_db_url: str
) -> None:
    # A slow upstream keeps the first decision in flight while the other announcement lands.
    fake.default = Delay(1.0)
    services = start_services(3, SIP_ROUTER_REDIS_URL=redis_db_url)
    calls = [phone_call(secret, fake, n) for n in range(6)]
    deliveries = [d for pair in calls for d in pair]
    # Each announcement twice (OpenAI's copies), shuffled over the three replicas.
    sent = deliveries * 2
    random.Random(7).shuffle(sent)

    answers = await post_all(services, sent)

    for realtime, live in calls:
        mine = [(d, a) for d, a in zip(sent, answers, strict=True) if d in (realtime, live)]
        statuses = [a.json()["status"] for _, a in mine]
        assert statuses.count("processed") == 1, statuses
        assert set(statuses) <= {"processed", "in_flight", "duplicate"}, statuses
        assert all(
            a.status_code == (409 if a.json()["status"] == "in_flight" else 200) for _, a in mine
        )
        assert len(decisions(fake, realtime, live)) == 1, decisions(fake, realtime, live)
        assert processed_lines(services, realtime, live) == 1
    # The overlap this test is about did happen.
    assert any(a.status_code == 409 for a in answers)

    # OpenAI delivers the in-flight ones again: now each is a duplicate of its phone call.
    again = await post_all(services, deliveries)
    for delivery, answer in zip(deliveries, again, strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "duplicate"
        assert answer.json()["action"] == "accept"
        assert answer.json()["call_id"] == delivery.call_id
    assert len(fake.requests) == len(calls)
    assert all(r.valid and r.status == 200 for r in fake.requests)
