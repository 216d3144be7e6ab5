"""POST /webhooks/openai through the app over ASGI, with the fake OpenAI behind it."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from app.webhook_signing import incoming_call_body, sign_delivery, signed_test_call
from tests.conftest import Service, ServiceFactory, new_webhook_secret
from tests.fake_openai import Delay

MARKER = "ECHO-MARKER-5c1d9e"
CALLER = "+14155550123"
MAIN_LINE = "+14155550100"
TRANSFER_LINE = "+14155550177"
BLOCKED = "+12025550199"


def new_call_id() -> str:
    return "rtc_" + secrets.token_hex(16)


def event_json(call_id: str, created_at: int, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(
        incoming_call_body(
            call_id,
            created_at,
            [("From", f"<sip:{CALLER}@trunk.example>"), ("To", f"<sip:{MAIN_LINE}@trunk.example>")],
        )
    )
    event.update(extra)
    return event


def signed(secret: str, event: dict[str, Any] | bytes, now: int) -> tuple[dict[str, str], bytes]:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return sign_delivery(secret, body, timestamp=now), body


def assert_all_valid(service: Service) -> None:
    problems = [(r.verb, r.problems) for r in service.fake.requests if not r.valid]
    assert problems == []


# --- what reaches the fake -----------------------------------------------------------


async def test_an_incoming_call_is_accepted_with_the_rendered_profile(service: Service) -> None:
    sent = await service.send(CALLER, MAIN_LINE)

    assert sent.status_code == 200
    assert sent.answer == {"status": "processed", "call_id": sent.call_id, "action": "accept"}
    [request] = service.fake.requests
    assert (request.verb, request.call_id) == ("accept", sent.call_id)
    assert request.body == {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": f"Caller {CALLER} called {MAIN_LINE} on {sent.call_id}.",
        "audio": {"output": {"voice": "marin"}},
    }
    assert_all_valid(service)


@pytest.mark.parametrize(
    ("caller", "called", "verb", "body"),
    [
        pytest.param(CALLER, TRANSFER_LINE, "refer", {"target_uri": "sip:desk@pbx.example.com"}),
        pytest.param(BLOCKED, MAIN_LINE, "reject", {"status_code": 603}),
        pytest.param("anonymous", MAIN_LINE, "reject", {"status_code": 433}),
    ],
)
async def test_refer_and_reject_send_exactly_their_body(
    service: Service, caller: str, called: str, verb: str, body: dict[str, Any]
) -> None:
    sent = await service.send(caller, called)

    assert sent.answer == {"status": "processed", "call_id": sent.call_id, "action": verb}
    assert [(r.verb, r.call_id, r.body) for r in service.fake.requests] == [
        (verb, sent.call_id, body)
    ]
    assert_all_valid(service)


@pytest.mark.parametrize(
    ("extra_headers", "status_code"),
    [
        pytest.param({"P-Asserted-Identity": f"<sip:{BLOCKED}@carrier.example>"}, 603, id="pai"),
        pytest.param({"p-asserted-identity": f"<tel:{BLOCKED}>"}, 603, id="pai-tel-lowercase"),
        pytest.param({"Privacy": "id"}, 433, id="privacy-id"),
        pytest.param(
            {"P-Asserted-Identity": f"<sip:{CALLER}@carrier.example>", "Privacy": "user;id"},
            433,
            id="privacy-beats-pai",
        ),
    ],
)
async def test_caller_identity_comes_from_the_asserted_headers(
    service: Service, extra_headers: dict[str, str], status_code: int
) -> None:
    sent = await service.send(CALLER, MAIN_LINE, extra_headers=extra_headers)

    assert sent.answer["action"] == "reject"
    assert [r.body for r in service.fake.requests] == [{"status_code": status_code}]


async def test_dry_run_decides_but_sends_nothing(service_factory: ServiceFactory) -> None:
    async with service_factory(dry_run=True) as service:
        sent = await service.send(BLOCKED, MAIN_LINE)

        assert sent.status_code == 200
        assert sent.answer == {"status": "dry_run", "call_id": sent.call_id, "action": "reject"}
        assert service.fake.requests == []


# --- refused deliveries ----------------------------------------------------------------

Case = Callable[[str, int], tuple[dict[str, str], bytes]]


def _base(secret: str, now: int, **sign_args: Any) -> tuple[dict[str, str], bytes]:
    """A valid delivery that carries MARKER in a SIP header and in an HTTP header."""
    body = incoming_call_body(new_call_id(), now, [("From", f"<sip:{CALLER}@x>"), ("X-M", MARKER)])
    headers = sign_delivery(secret, body, timestamp=sign_args.pop("timestamp", now), **sign_args)
    return {**headers, "x-marker": MARKER}, body


def _with(**changes: str) -> Case:
    def build(secret: str, now: int) -> tuple[dict[str, str], bytes]:
        headers, body = _base(secret, now)
        for name, value in changes.items():
            headers[name.replace("_", "-")] = value.format(marker=MARKER)
        return headers, body

    return build


def _without(name: str) -> Case:
    def build(secret: str, now: int) -> tuple[dict[str, str], bytes]:
        headers, body = _base(secret, now)
        del headers[name]
        return headers, body

    return build


def _signature(template: str) -> Case:
    def build(secret: str, now: int) -> tuple[dict[str, str], bytes]:
        headers, body = _base(secret, now)
        digest = headers["webhook-signature"].split(",", 1)[1]
        headers["webhook-signature"] = template.format(digest=digest, marker=MARKER)
        return headers, body

    return build


def _signed_body(make: Callable[[int], bytes]) -> Case:
    def build(secret: str, now: int) -> tuple[dict[str, str], bytes]:
        body = make(now)
        return {**sign_delivery(secret, body, timestamp=now), "x-marker": MARKER}, body

    return build


def _other_secret(secret: str, now: int) -> tuple[dict[str, str], bytes]:
    return _base(new_webhook_secret(), now)


def _timestamp_off(seconds: int) -> Case:
    def build(secret: str, now: int) -> tuple[dict[str, str], bytes]:
        return _base(secret, now, timestamp=now + seconds)

    return build


def _tampered(secret: str, now: int) -> tuple[dict[str, str], bytes]:
    headers, body = _base(secret, now)
    return headers, body.replace(b'"created_at":', b'"created_at":1')


def _non_utf8(secret: str, now: int) -> tuple[dict[str, str], bytes]:
    headers, body = _base(secret, now)
    return headers, body + b"\xff" + MARKER.encode()


def _hand_signed_id(webhook_id: str) -> Case:
    def build(secret: str, now: int) -> tuple[dict[str, str], bytes]:
        headers, body = _base(secret, now)
        signature = Webhook(secret).sign(
            webhook_id, datetime.fromtimestamp(now, tz=UTC), body.decode()
        )
        return {**headers, "webhook-id": webhook_id, "webhook-signature": signature}, body

    return build


def _event(mutate: Callable[[dict[str, Any]], object]) -> Callable[[int], bytes]:
    def make(now: int) -> bytes:
        event = json.loads(
            incoming_call_body(new_call_id(), now, [("From", f"<sip:{CALLER}@x>"), ("X-M", MARKER)])
        )
        mutate(event)
        return json.dumps(event).encode()

    return make


MALFORMED: list[Any] = [
    pytest.param(_without("webhook-id"), 400, id="missing-id"),
    pytest.param(_without("webhook-timestamp"), 400, id="missing-timestamp"),
    pytest.param(_without("webhook-signature"), 400, id="missing-signature"),
    pytest.param(_signature("v1{digest}"), 400, id="no-comma"),
    pytest.param(_signature("v1,{digest},{marker}"), 400, id="two-commas"),
    pytest.param(_signature("v1,{marker}!!"), 400, id="bad-base64"),
    pytest.param(_signature("v2,{digest}"), 400, id="v2-only"),
    pytest.param(_signature("{marker} v1,{marker}"), 400, id="marker-entries"),
    pytest.param(_other_secret, 401, id="wrong-secret"),
    pytest.param(_timestamp_off(-301), 401, id="old-timestamp"),
    pytest.param(_timestamp_off(+301), 401, id="future-timestamp"),
    pytest.param(_with(webhook_timestamp="{marker}"), 400, id="non-numeric-timestamp"),
    pytest.param(_tampered, 401, id="tampered-body"),
    pytest.param(_non_utf8, 400, id="non-utf8-body"),
    pytest.param(_signed_body(lambda now: b""), 400, id="empty-body"),
    pytest.param(_with(webhook_id="wh {marker}"), 400, id="id-with-space"),
    pytest.param(_with(webhook_id="wh\x01{marker}"), 400, id="id-with-control"),
    pytest.param(_with(webhook_id="w" * 257), 400, id="id-over-256"),
    pytest.param(_hand_signed_id("w" * 300), 400, id="signed-id-over-256"),
    pytest.param(_signed_body(lambda now: MARKER.encode()), 400, id="not-json"),
    pytest.param(_signed_body(lambda now: f'["{MARKER}"]'.encode()), 400, id="json-array"),
    pytest.param(_signed_body(_event(lambda e: e["data"].pop("call_id"))), 400, id="no-call-id"),
    pytest.param(
        _signed_body(_event(lambda e: e["data"].update(call_id=f"rtc/../{MARKER}"))),
        400,
        id="bad-call-id",
    ),
    pytest.param(_signed_body(_event(lambda e: e.pop("created_at"))), 400, id="no-created-at"),
    pytest.param(
        _signed_body(_event(lambda e: e.update(created_at=253_402_300_800))),
        400,
        id="created-at-past-year-9999",
    ),
    pytest.param(
        _signed_body(_event(lambda e: e.update(created_at=2**40))), 400, id="created-at-2-pow-40"
    ),
    pytest.param(
        _signed_body(
            _event(lambda e: e["data"].update(sip_headers=[{"name": "X", "value": MARKER}] * 257))
        ),
        400,
        id="too-many-sip-headers",
    ),
]


@pytest.mark.parametrize(("build", "status"), MALFORMED)
async def test_refused_deliveries_never_reach_upstream_nor_echo_the_request(
    service: Service, build: Case, status: int
) -> None:
    headers, body = build(service.secret, int(time.time()))

    response = await service.post(body, headers)

    assert response.status_code == status
    assert response.json()["status"] == "rejected"
    assert MARKER not in response.text
    assert all(MARKER not in value for value in response.headers.values())
    assert service.fake.requests == []


def _padded_event(call_id: str, now: int, size: int) -> bytes:
    """A valid incoming call event of exactly `size` bytes (an unknown field pads it)."""
    event = event_json(call_id, now, padding="")
    unpadded = len(json.dumps(event).encode())
    event["padding"] = "a" * (size - unpadded)
    body = json.dumps(event).encode()
    assert len(body) == size
    return body


async def test_a_body_of_exactly_64_kib_is_processed(service: Service) -> None:
    now, call_id = int(time.time()), new_call_id()
    headers, body = signed(service.secret, _padded_event(call_id, now, 64 * 1024), now)

    response = await service.post(body, headers)

    assert response.status_code == 200
    assert service.fake.verbs_for(call_id) == ["accept"]


@pytest.mark.parametrize("size", [64 * 1024 + 1, 65 * 1024, 1024 * 1024])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_64_kib_is_answered_413(
    service: Service, size: int, declared: bool
) -> None:
    now, call_id = int(time.time()), new_call_id()
    headers, body = signed(service.secret, _padded_event(call_id, now, size), now)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = await service.post(body if declared else chunks(), headers)

    assert response.status_code == 413
    assert response.json() == {"status": "rejected", "error": "the body is larger than 64 KiB"}
    assert service.fake.requests == []


async def test_a_lone_surrogate_in_a_header_used_by_a_template_is_not_a_500(
    service_factory: ServiceFactory,
) -> None:
    rules = (
        "version: 1\n"
        "profiles:\n"
        "  desk: {model: gpt-realtime, instructions: \"Note: {{ headers['x-note'] }}\"}\n"
        "default: {accept: {profile: desk}}\n"
    )
    async with service_factory(rules_text=rules) as service:
        now, call_id = int(time.time()), new_call_id()
        event = event_json(call_id, now)
        event["data"]["sip_headers"].append({"name": "X-Note", "value": "a\ud800b"})
        headers, body = signed(service.secret, json.dumps(event).encode(), now)

        response = await service.post(body, headers)

        assert response.status_code < 500


# --- events that are acknowledged without action --------------------------------------


@pytest.mark.parametrize("event_type", ["response.completed", "realtime.call.ended"])
async def test_other_event_types_are_ignored(service: Service, event_type: str) -> None:
    now, call_id = int(time.time()), new_call_id()
    event = event_json(call_id, now, type=event_type)
    headers, body = signed(service.secret, event, now)

    response = await service.post(body, headers)

    assert response.status_code == 200
    assert response.json() == {"status": "ignored", "call_id": None, "action": None}
    assert service.fake.requests == []


async def test_unknown_fields_in_the_event_are_tolerated(service: Service) -> None:
    now, call_id = int(time.time()), new_call_id()
    event = event_json(call_id, now, future_field={"nested": [1, 2]}, object="event.v2")
    event["data"]["new_field"] = "x"
    event["data"]["sip_headers"][0]["index"] = 0
    headers, body = signed(service.secret, event, now)

    response = await service.post(body, headers)

    assert response.json() == {"status": "processed", "call_id": call_id, "action": "accept"}
    assert service.fake.verbs_for(call_id) == ["accept"]


async def test_a_stale_event_is_acknowledged_without_action(service: Service) -> None:
    now, call_id = int(time.time()), new_call_id()
    max_age = service.settings.max_event_age_s
    headers, body = signed(service.secret, event_json(call_id, now - int(max_age) - 5), now)

    response = await service.post(body, headers)

    assert response.status_code == 200
    assert response.json() == {"status": "stale", "call_id": call_id, "action": None}
    assert service.fake.requests == []


async def test_an_event_from_the_future_is_processed(service: Service) -> None:
    now, call_id = int(time.time()), new_call_id()
    headers, body = signed(service.secret, event_json(call_id, now + 3600), now)

    response = await service.post(body, headers)

    assert response.json() == {"status": "processed", "call_id": call_id, "action": "accept"}
    assert service.fake.verbs_for(call_id) == ["accept"]


# --- at most one action per call -------------------------------------------------------


async def test_the_in_memory_bound_is_the_memory_max_calls_setting(
    service_factory: ServiceFactory,
) -> None:
    """Beyond SIP_ROUTER_MEMORY_MAX_CALLS finished calls, the oldest is forgotten: its
    redelivery is acted on again, as the README says."""
    async with service_factory(memory_max_calls=2) as service:
        first = await service.send(CALLER, MAIN_LINE)
        await service.send(CALLER, MAIN_LINE)
        assert (await service.deliver(first.delivery)).answer["status"] == "duplicate"
        await service.send(CALLER, MAIN_LINE)

        again = await service.deliver(first.delivery)

    assert again.answer["status"] == "processed"
    assert service.fake.verbs_for(first.call_id) == ["accept", "accept"]


async def test_the_same_delivery_twice_acts_once(service: Service) -> None:
    first = await service.send(CALLER, MAIN_LINE)
    second = await service.deliver(first.delivery)

    assert first.answer["status"] == "processed"
    assert second.status_code == 200
    assert second.answer == {"status": "duplicate", "call_id": first.call_id, "action": "accept"}
    assert service.fake.verbs_for(first.call_id) == ["accept"]


async def test_ten_webhook_ids_for_one_call_act_once(service: Service) -> None:
    call_id = new_call_id()

    answers = [(await service.send(CALLER, MAIN_LINE, call_id=call_id)).answer for _ in range(10)]

    assert len({sent.delivery.webhook_id for sent in service.sent}) == 10
    assert [a["status"] for a in answers] == ["processed"] + ["duplicate"] * 9
    assert {a["action"] for a in answers} == {"accept"}
    assert service.fake.verbs_for(call_id) == ["accept"]


async def test_concurrent_deliveries_for_one_call_act_once(service: Service) -> None:
    call_id = new_call_id()
    service.fake.script(call_id, Delay(0.3))
    now = int(time.time())
    deliveries = [
        signed_test_call(service.secret, CALLER, MAIN_LINE, now=now, call_id=call_id)
        for _ in range(10)
    ]

    sent = await asyncio.gather(*(service.deliver(d) for d in deliveries))

    codes = sorted(s.status_code for s in sent)
    assert codes == [200] + [409] * 9
    assert service.fake.verbs_for(call_id) == ["accept"]


async def test_fifty_concurrent_copies_of_one_delivery_act_once(service: Service) -> None:
    delivery = signed_test_call(service.secret, CALLER, MAIN_LINE, now=int(time.time()))
    service.fake.script(delivery.call_id, Delay(0.3))

    sent = await asyncio.gather(*(service.deliver(delivery) for _ in range(50)))

    statuses = [(s.status_code, s.answer["status"]) for s in sent]
    assert statuses.count((200, "processed")) == 1
    others = set(statuses) - {(200, "processed")}
    assert others <= {(409, "in_flight"), (200, "duplicate")}
    # The upstream answer takes 0.3 s: the copies really overlapped the first.
    assert (409, "in_flight") in others
    assert service.fake.verbs_for(delivery.call_id) == ["accept"]
    again = await service.deliver(delivery)
    assert again.answer == {"status": "duplicate", "call_id": delivery.call_id, "action": "accept"}
    assert len(service.fake.requests) == 1


async def test_a_second_secret_verifies_during_rotation(
    service_factory: ServiceFactory, webhook_secret: str
) -> None:
    old = new_webhook_secret()
    async with service_factory(openai_webhook_secret=f"{old},{webhook_secret}") as service:
        delivery = signed_test_call(webhook_secret, CALLER, MAIN_LINE, now=int(time.time()))
        unknown = signed_test_call(new_webhook_secret(), CALLER, MAIN_LINE, now=int(time.time()))

        assert (await service.deliver(delivery)).answer["status"] == "processed"
        assert (await service.deliver(unknown)).status_code == 401
        assert [r.call_id for r in service.fake.requests] == [delivery.call_id]
