"""GPT-Live deliveries through the service: parsed, decided, sent on the
Live endpoints, logged with their API; and one decision per phone call across both APIs.

The service runs in process with its lifespan; the fake OpenAI answers over loopback HTTP.
Most rules here have no Live profile: their reject and refer requests are valid on the Live
endpoints as they are.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.app_factory import create_app
from app.recorded_decisions import decision_from_record, decision_record
from app.rules.ruleset import Decision
from app.store import ClaimResult, MemoryStore, RedisStore, Store
from app.webhook_signing import (
    SignedDelivery,
    incoming_call_body,
    live_call_body,
    sign_delivery,
    signed_test_call,
)
from tests.conftest import ADMIN_TOKEN, API_KEY, app_settings, running, write_rules_file
from tests.fake_openai import Delay, FakeOpenAI, Respond
from tests.redis_server import delete_prefix

CALLER, CALLED = "+14155550123", "+14155550100"
BLOCKED = "+12025550199"
TRANSFER_LINE = "+14155550177"
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}

RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Answer politely."}
rules:
  - name: blocked
    when: {caller: "+12025550199"}
    reject: {status_code: 486}
  - name: transfer
    when: {called: "+14155550177"}
    refer: {target_uri: "sip:desk@pbx.example.com", before_accept: true}
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 503}}
"""


@dataclass
class Running:
    client: httpx.AsyncClient
    store: Store
    secret: str

    async def post(self, delivery: SignedDelivery) -> httpx.Response:
        return await self.client.post(
            "/webhooks/openai", content=delivery.body, headers=delivery.headers
        )


@pytest.fixture
def fake_url(fake: FakeOpenAI) -> Iterator[str]:
    with fake.serve_on_loopback() as url:
        yield url


@pytest.fixture
async def service(tmp_path: Path, secret: str, fake_url: str) -> AsyncIterator[Running]:
    store = MemoryStore()
    settings = app_settings(
        write_rules_file(tmp_path, RULES),
        secret,
        openai_api_key=API_KEY,
        openai_base_url=fake_url,
        admin_token=ADMIN_TOKEN,
        action_deadline_s=2.0,
    )
    app = create_app(settings, store=store, watch_interval_s=None)
    async with running(app) as client:
        yield Running(client, store, secret)


def now() -> int:
    return int(time.time())


def live_call(
    secret: str, caller: str = CALLER, called: str = CALLED, **fields: Any
) -> SignedDelivery:
    return signed_test_call(secret, caller, called, now=now(), api="live", **fields)


def signed(secret: str, body: bytes, call_id: str) -> SignedDelivery:
    headers = sign_delivery(secret, body, timestamp=now())
    return SignedDelivery(headers, body, call_id, headers["webhook-id"])


def upstream(fake: FakeOpenAI) -> list[tuple[str, str, str, int | None]]:
    return [(r.api, r.verb, r.call_id, r.status) for r in fake.requests]


# --- a Live delivery is decided and acted on on the Live endpoints -------------------------


async def test_a_live_reject_goes_to_the_live_session(service: Running, fake: FakeOpenAI) -> None:
    delivery = live_call(service.secret, BLOCKED)
    assert delivery.call_id.startswith("live_u0_")

    response = await service.post(delivery)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "processed",
        "call_id": delivery.call_id,
        "action": "reject",
    }
    assert upstream(fake) == [("live", "reject", delivery.call_id, 200)]
    assert fake.requests[0].body == {"status_code": 486}
    assert fake.requests[0].valid


async def test_a_live_refer_before_accept_goes_to_the_live_session(
    service: Running, fake: FakeOpenAI
) -> None:
    delivery = live_call(service.secret, CALLER, TRANSFER_LINE)

    assert (await service.post(delivery)).json()["action"] == "refer"

    assert upstream(fake) == [("live", "refer", delivery.call_id, 200)]
    assert fake.requests[0].body == {"target_uri": "sip:desk@pbx.example.com"}


async def test_a_live_call_that_fails_upstream_runs_on_error_on_the_live_session(
    service: Running, fake: FakeOpenAI
) -> None:
    delivery = live_call(service.secret, BLOCKED)
    fake.script(delivery.call_id, Respond(400, code="invalid_state"))

    response = await service.post(delivery)

    assert response.json()["status"] == "on_error"
    assert upstream(fake) == [
        ("live", "reject", delivery.call_id, 400),
        ("live", "reject", delivery.call_id, 200),
    ]
    assert fake.requests[1].body == {"status_code": 503}


async def test_the_deprecated_live_event_is_acted_on_too(
    service: Running, fake: FakeOpenAI
) -> None:
    session_id = "live_u0_" + "d" * 32
    body = live_call_body(
        session_id,
        now(),
        [("From", f"<sip:{BLOCKED}@trunk.example>"), ("To", f"<sip:{CALLED}@trunk.example>")],
        media_security=None,
        event_type="live.call.incoming",
    )

    response = await service.post(signed(service.secret, body, session_id))

    assert response.json()["status"] == "processed"
    assert upstream(fake) == [("live", "reject", session_id, 200)]


async def test_the_call_log_and_the_call_record_carry_the_api_and_media_security(
    service: Running, fake: FakeOpenAI
) -> None:
    live = live_call(service.secret, BLOCKED)
    realtime = signed_test_call(service.secret, BLOCKED, CALLED, now=now())
    for delivery in (live, realtime):
        assert (await service.post(delivery)).status_code == 200

    calls = (await service.client.get("/admin/calls", headers=AUTH)).json()["calls"]
    shown = {c["call_id"]: (c["api"], c.get("media_security")) for c in calls}
    assert shown == {live.call_id: ("live", "srtp"), realtime.call_id: ("realtime", None)}
    record = await service.store.call_record(live.call_id)
    assert record is not None
    assert (record["api"], record["media_security"]) == ("live", "srtp")
    assert (record["inputs"]["api"], record["inputs"]["media_security"]) == ("live", "srtp")
    one = (await service.client.get(f"/admin/calls/{live.call_id}", headers=AUTH)).json()
    assert (one["api"], one["media_security"]) == ("live", "srtp")
    realtime_record = await service.store.call_record(realtime.call_id)
    assert realtime_record is not None
    assert realtime_record["inputs"]["api"] == "realtime"
    assert "media_security" not in realtime_record["inputs"]


# --- what is not a Live SIP call ---------------------------------------------------------


async def test_a_live_transport_other_than_sip_is_ignored_with_the_reason(
    service: Running, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    event = json.loads(live_call_body("live_u0_webrtc", now(), [("From", "<sip:x@y>")]))
    event["data"]["type"] = "webrtc"
    body = json.dumps(event).encode()

    with caplog.at_level("INFO", logger="sip_router.webhook"):
        response = await service.post(signed(service.secret, body, "live_u0_webrtc"))

    assert response.status_code == 200
    assert response.json() == {
        "status": "ignored",
        "call_id": None,
        "action": None,
        "detail": "transport 'webrtc' is not sip",
    }
    assert fake.requests == []
    [line] = [r for r in caplog.records if r.name == "sip_router.webhook"]
    assert line.fields["outcome"] == "ignored"  # type: ignore[attr-defined]
    assert "webrtc" in line.fields["detail"]  # type: ignore[attr-defined]


async def test_another_transports_event_is_acknowledged_without_sip_fields(
    service: Running, fake: FakeOpenAI
) -> None:
    # A WebRTC session has no SIP headers: its event is not malformed, only not a phone call,
    # and a 400 would have OpenAI deliver it again for days.
    event = json.loads(live_call_body("live_u0_webrtc", now(), []))
    event["data"] = {"type": "webrtc", "session_id": "live_u0_webrtc"}
    body = json.dumps(event).encode()

    response = await service.post(signed(service.secret, body, "live_u0_webrtc"))

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert fake.requests == []


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e["data"].pop("type"),
        lambda e: e["data"].update(session_id="live_u0/../../realtime/calls/x"),
        lambda e: e["data"].update(sip_media_security=["srtp"]),
        lambda e: e["data"].pop("session_id"),
    ],
    ids=["no-transport-type", "path-in-session-id", "list-media-security", "no-session-id"],
)
async def test_a_malformed_live_event_is_400_and_never_reaches_openai(
    service: Running, fake: FakeOpenAI, change: Any
) -> None:
    event = json.loads(live_call_body("live_u0_bad", now(), [("From", "<sip:x@y>")]))
    change(event)
    body = json.dumps(event).encode()

    response = await service.post(signed(service.secret, body, "live_u0_bad"))

    assert response.status_code == 400
    assert response.json()["status"] == "rejected"
    assert fake.requests == []


# --- hanging up a Live call ----------------------------------------------------------------


async def test_admin_hangup_uses_the_api_the_call_log_recorded(
    service: Running, fake: FakeOpenAI
) -> None:
    # An older Live event whose session id had the Realtime prefix: the log decides.
    session_id = "rtc_u0_" + "e" * 32
    body = live_call_body(
        session_id,
        now(),
        [("From", f"<sip:{BLOCKED}@trunk.example>"), ("To", f"<sip:{CALLED}@trunk.example>")],
    )
    await service.post(signed(service.secret, body, session_id))
    fake.activate(session_id)

    response = await service.client.post(f"/admin/calls/{session_id}/hangup", headers=AUTH)

    assert response.json() == {"status": "ok", "call_id": session_id}
    assert upstream(fake)[-1] == ("live", "hangup", session_id, 200)


@pytest.mark.parametrize(
    ("call_id", "api"),
    [("live_u0_" + "f" * 150, "live"), ("rtc_unlogged01", "realtime")],
)
async def test_admin_hangup_of_a_call_not_in_the_log_goes_by_its_prefix(
    service: Running, fake: FakeOpenAI, call_id: str, api: str
) -> None:
    fake.activate(call_id)

    response = await service.client.post(f"/admin/calls/{call_id}/hangup", headers=AUTH)

    assert response.status_code == 200, response.text
    assert upstream(fake) == [(api, "hangup", call_id, 200)]


# --- a decision recorded for a Live call is sent again to the Live session ------------------


def live_accept(max_duration_s: float | None = None) -> Decision:
    return Decision(
        action="accept",
        body={"session": {"type": "live", "model": "gpt-live-1"}},
        rule="desk",
        profile="desk",
        max_duration_s=max_duration_s,
        ruleset="an-older-ruleset",
        api="live",
    )


def test_a_recorded_decision_keeps_its_api_and_older_records_are_realtime() -> None:
    record = decision_record(live_accept())

    assert record["api"] == "live"
    assert decision_from_record(record).api == "live"
    older = {k: v for k, v in record.items() if k != "api"}
    assert decision_from_record(older).api == "realtime"
    with pytest.raises(ValueError, match="not a recorded decision"):
        decision_from_record({**record, "api": "sip"})


async def test_a_recorded_live_decision_is_sent_again_to_the_live_session_and_hung_up_in_time(
    service: Running, fake: FakeOpenAI
) -> None:
    delivery = live_call(service.secret)
    # An earlier owner recorded this accept, then vanished before its answer.
    earlier = await service.store.claim("wh_earlier", delivery.call_id, 0.05)
    assert await service.store.record_decision(earlier, decision_record(live_accept(0.3)))
    await asyncio.sleep(0.1)

    response = await service.post(delivery)

    assert response.json() == {
        "status": "processed",
        "call_id": delivery.call_id,
        "action": "accept",
    }
    assert upstream(fake) == [("live", "accept", delivery.call_id, 200)]
    assert fake.requests[0].valid
    # max_duration_s hangs the session up on the Live endpoint.
    deadline = time.monotonic() + 5
    while len(fake.requests) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert upstream(fake)[1:] == [("live", "hangup", delivery.call_id, 200)]


# --- one decision per phone call across both APIs -------------------------------------------


def both_announcements(secret: str, caller: str = BLOCKED) -> tuple[SignedDelivery, SignedDelivery]:
    """The Realtime and the Live announcement of one phone call (same INVITE headers)."""
    suffix = "u0_" + str(time.monotonic_ns())
    sip_call_id = f"{suffix}@pbx.example"
    realtime = signed_test_call(
        secret, caller, CALLED, now=now(), call_id=f"rtc_{suffix}", sip_call_id=sip_call_id
    )
    live = signed_test_call(
        secret,
        caller,
        CALLED,
        now=now(),
        call_id=f"live_{suffix}",
        api="live",
        sip_call_id=sip_call_id,
    )
    return realtime, live


@pytest.mark.parametrize("first", ["realtime", "live"])
async def test_the_second_announcement_of_a_phone_call_is_a_duplicate_of_the_first(
    service: Running, fake: FakeOpenAI, first: str, caplog: pytest.LogCaptureFixture
) -> None:
    realtime, live = both_announcements(service.secret)
    fake.same_call(realtime.call_id, live.call_id)
    one, other = (realtime, live) if first == "realtime" else (live, realtime)

    with caplog.at_level("INFO", logger="sip_router.webhook"):
        decided = await service.post(one)
        second = await service.post(other)

    assert decided.json() == {"status": "processed", "call_id": one.call_id, "action": "reject"}
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "call_id": other.call_id, "action": "reject"}
    assert upstream(fake) == [(first, "reject", one.call_id, 200)]
    lines = [r.fields for r in caplog.records if r.name == "sip_router.webhook"]  # type: ignore[attr-defined]
    assert lines[1]["outcome"] == "duplicate"
    assert lines[1]["api"] == ("live" if first == "realtime" else "realtime")
    assert "other announcement" in lines[1]["detail"]
    # Only the decided announcement is in the call log.
    calls = (await service.client.get("/admin/calls", headers=AUTH)).json()["calls"]
    assert [c["call_id"] for c in calls] == [one.call_id]


async def test_while_the_first_announcement_is_in_flight_the_other_is_409(
    service: Running, fake: FakeOpenAI
) -> None:
    realtime, live = both_announcements(service.secret)
    fake.same_call(realtime.call_id, live.call_id)
    fake.script(realtime.call_id, Delay(0.5))

    first = asyncio.create_task(service.post(realtime))
    while not fake.requests:
        await asyncio.sleep(0.01)
    during = await service.post(live)
    assert (await first).json()["status"] == "processed"
    again = await service.post(live)

    assert during.status_code == 409
    assert during.json() == {"status": "in_flight", "call_id": live.call_id, "action": None}
    assert again.json() == {"status": "duplicate", "call_id": live.call_id, "action": "reject"}
    assert upstream(fake) == [("realtime", "reject", realtime.call_id, 200)]


async def test_a_first_announcement_that_failed_leaves_the_phone_call_to_the_other(
    service: Running, fake: FakeOpenAI
) -> None:
    realtime, live = both_announcements(service.secret)
    fake.same_call(realtime.call_id, live.call_id)
    # The action and on_error both fail without effect: released for a redelivery.
    fake.script(realtime.call_id, *[Respond(503)] * 20)

    assert (await service.post(realtime)).status_code == 503
    second = await service.post(live)

    assert second.json() == {"status": "processed", "call_id": live.call_id, "action": "reject"}
    assert upstream(fake)[-1] == ("live", "reject", live.call_id, 200)


async def test_without_a_call_id_header_openai_refusal_still_makes_a_duplicate(
    service: Running, fake: FakeOpenAI
) -> None:
    headers = [("From", f"<sip:{BLOCKED}@trunk.example>"), ("To", f"<sip:{CALLED}@trunk.example>")]
    realtime_id, live_id = "rtc_u0_nocallid", "live_u0_nocallid"
    fake.same_call(realtime_id, live_id)
    realtime = signed(service.secret, incoming_call_body(realtime_id, now(), headers), realtime_id)
    live = signed(service.secret, live_call_body(live_id, now(), headers), live_id)

    assert (await service.post(realtime)).json()["status"] == "processed"
    second = await service.post(live)

    # Both were sent; OpenAI's decision_already_made is a duplicate, not a failure.
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "call_id": live_id, "action": "reject"}
    assert upstream(fake) == [
        ("realtime", "reject", realtime_id, 200),
        ("live", "reject", live_id, 409),
    ]


async def test_another_phone_call_with_the_same_call_id_from_another_caller_is_decided(
    service: Running, fake: FakeOpenAI
) -> None:
    realtime, _ = both_announcements(service.secret)
    other_caller = signed_test_call(
        service.secret,
        "+14155550999",
        TRANSFER_LINE,
        now=now(),
        api="live",
        sip_call_id=json.loads(realtime.body)["data"]["sip_headers"][-1]["value"],
    )

    await service.post(realtime)
    answer = await service.post(other_caller)

    assert answer.json()["status"] == "processed"
    assert len(fake.requests) == 2


@pytest.mark.redis
async def test_the_phone_call_claim_is_shared_through_redis(
    tmp_path: Path, secret: str, fake_url: str, fake: FakeOpenAI, redis_url: str
) -> None:
    prefix = f"sip-router-test:{time.monotonic_ns()}:"
    stores = [RedisStore.from_url(redis_url, prefix=prefix) for _ in range(2)]
    rules = write_rules_file(tmp_path, RULES)
    apps = [
        create_app(
            app_settings(rules, secret, openai_api_key=API_KEY, openai_base_url=fake_url),
            store=store,
            watch_interval_s=None,
        )
        for store in stores
    ]
    realtime, live = both_announcements(secret)
    fake.same_call(realtime.call_id, live.call_id)
    try:
        async with running(apps[0]) as first, running(apps[1]) as second:
            a = await first.post("/webhooks/openai", content=live.body, headers=live.headers)
            b = await second.post(
                "/webhooks/openai", content=realtime.body, headers=realtime.headers
            )
        assert a.json()["status"] == "processed"
        assert b.json() == {"status": "duplicate", "call_id": realtime.call_id, "action": "reject"}
        assert upstream(fake) == [("live", "reject", live.call_id, 200)]
        claim = await stores[0].claim("wh_x", "rtc_other", 5, _phone_call_key(realtime))
        assert claim.result is ClaimResult.SIP_CALL_DONE
    finally:
        for store in stores:
            await store.aclose()
        await delete_prefix(redis_url, prefix)


def _phone_call_key(delivery: SignedDelivery) -> str:
    from app.sip_call_key import sip_call_key

    headers = json.loads(delivery.body)["data"]["sip_headers"]
    key = sip_call_key((h["name"], h["value"]) for h in headers)
    assert key is not None
    return key


# --- with a Live profile: the accept and the max_duration_s hang-up on the Live session -----

LIVE_PROFILE_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  voice:
    api: live
    model: gpt-live-1
    instructions: "Answer for the clinic."
    audio: {output: {voice: marin}}
    max_duration_s: 0.3
  desk: {model: gpt-realtime, instructions: "Answer politely.", max_duration_s: 0.3}
rules:
  - name: live-calls
    when: {api: live}
    accept: {profile: voice}
default: {accept: {profile: desk}}
"""


async def test_a_live_accept_and_its_max_duration_hang_up_use_the_live_session(
    tmp_path: Path, secret: str, fake_url: str, fake: FakeOpenAI
) -> None:
    settings = app_settings(
        write_rules_file(tmp_path, LIVE_PROFILE_RULES),
        secret,
        openai_api_key=API_KEY,
        openai_base_url=fake_url,
    )
    live, realtime = live_call(secret), signed_test_call(secret, CALLER, CALLED, now=now())
    async with running(create_app(settings, watch_interval_s=None)) as client:
        for delivery in (live, realtime):
            answer = await client.post(
                "/webhooks/openai", content=delivery.body, headers=delivery.headers
            )
            assert answer.json()["status"] == "processed", answer.text
        deadline = time.monotonic() + 5
        while len(fake.requests) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    assert sorted(upstream(fake)) == [
        ("live", "accept", live.call_id, 200),
        ("live", "hangup", live.call_id, 200),
        ("realtime", "accept", realtime.call_id, 200),
        ("realtime", "hangup", realtime.call_id, 200),
    ]
    assert all(r.valid for r in fake.requests)
    [accept] = [r for r in fake.requests if r.api == "live" and r.verb == "accept"]
    assert accept.body is not None
    assert accept.body["session"]["type"] == "live"
