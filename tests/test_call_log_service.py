"""The call log behind /admin/calls, fed by real webhooks, in memory and in a real Redis."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from fastapi import FastAPI

from app.store import CALL_LOG_SIZE, MemoryStore, RedisStore, Store
from app.webhook_signing import incoming_call_body, sign_delivery, signed_test_call
from tests.conftest import (
    OPS_RULES,
    app_settings,
    build_app,
    deliver,
    new_webhook_secret,
    running,
    write_rules_file,
)
from tests.fake_openai import Drop, FakeOpenAI, Respond
from tests.redis_server import delete_prefix

TOKEN = "call-log-admin"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CALLER = "+14155550123"
BLOCKED = "+12025550199"
MAIN_LINE = "+14155550100"
RULES = OPS_RULES
BASE_FIELDS = {
    "time",
    "call_id",
    "api",
    "caller",
    "called",
    "rule",
    "action",
    "outcome",
    "latency_ms",
    "ruleset",
}


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"test-call-log-{os.urandom(6).hex()}:"
    yield prefix
    await delete_prefix(redis_url, prefix)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def new_store(store_kind: str, request: pytest.FixtureRequest) -> Any:
    """A factory of stores of the parametrized kind; Redis stores share one test prefix."""
    if store_kind == "memory":
        return MemoryStore
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisStore.from_url(url, prefix=prefix)


def build(rules: Path, secret: str, fake: FakeOpenAI, store: Store, **overrides: Any) -> FastAPI:
    settings = app_settings(rules, secret, admin_token=TOKEN, action_deadline_s=0.3, **overrides)
    return build_app(settings, fake, store=store)


async def call_log(client: httpx.AsyncClient, limit: int = 1000) -> list[dict[str, Any]]:
    response = await client.get(f"/admin/calls?limit={limit}", headers=AUTH)
    assert response.status_code == 200, response.text
    calls: list[dict[str, Any]] = response.json()["calls"]
    return calls


def old_entry(index: int) -> dict[str, Any]:
    return {
        "time": "2026-01-01T00:00:00+00:00",
        "call_id": f"rtc_old{index:04d}",
        "caller": "+1******0123",
        "called": "+1******0100",
        "rule": "default",
        "action": "accept",
        "outcome": "processed",
        "latency_ms": 1.0,
        "ruleset": "old",
    }


async def test_webhooks_through_the_app_are_listed_newest_first(
    rules_file: Path, secret: str, fake: FakeOpenAI, new_store: Any
) -> None:
    app = build(rules_file, secret, fake, new_store())
    now = int(time.time())
    sent = [signed_test_call(secret, CALLER, MAIN_LINE, now=now) for _ in range(3)]
    sent.insert(1, signed_test_call(secret, BLOCKED, MAIN_LINE, now=now))
    async with running(app) as client:
        for delivery in sent:
            assert (await deliver(client, delivery)).status_code == 200
        calls = await call_log(client)
        newest_two = await call_log(client, limit=2)
    version = app.state.services.rules.current.version
    assert [c["call_id"] for c in calls] == [d.call_id for d in reversed(sent)]
    assert newest_two == calls[:2]
    assert [(c["rule"], c["action"]) for c in calls] == [
        ("default", "accept"),
        ("default", "accept"),
        ("blocked-callers", "reject"),
        ("default", "accept"),
    ]
    assert {c["ruleset"] for c in calls} == {version}
    assert {c["caller"] for c in calls} == {"+1******0123", "+1******0199"}


async def test_only_deliveries_that_reached_a_decision_are_logged(
    rules_file: Path, secret: str, fake: FakeOpenAI, new_store: Any
) -> None:
    app = build(rules_file, secret, fake, new_store())
    now = int(time.time())
    first = signed_test_call(secret, CALLER, MAIN_LINE, now=now)
    forged = signed_test_call(new_webhook_secret(), CALLER, MAIN_LINE, now=now)
    stale_body = incoming_call_body("rtc_stale01", now - 3600, [("From", f"<sip:{CALLER}@x>")])
    other_body = json.dumps(
        {"object": "event", "id": "evt_1", "type": "realtime.call.ended", "created_at": now}
    ).encode()
    async with running(app) as client:
        assert (await deliver(client, first)).json()["status"] == "processed"
        assert (await deliver(client, first)).json()["status"] == "duplicate"
        assert (await deliver(client, forged)).status_code == 401
        for body in (stale_body, other_body):
            headers = sign_delivery(secret, body, timestamp=now)
            answer = await client.post("/webhooks/openai", content=body, headers=headers)
            assert answer.json()["status"] in ("stale", "ignored")
        calls = await call_log(client)
    assert [c["call_id"] for c in calls] == [first.call_id]


UNKNOWN_FAILURE = (
    "may have been applied: gave up after 3 requests in 3 attempts: "
    "RemoteProtocolError after the request was sent"
)


@pytest.mark.parametrize(
    ("behaviour", "action", "outcome", "why"),
    [
        pytest.param([Respond(200)], "accept", "processed", {"profile": "desk"}, id="processed"),
        pytest.param(
            [Respond(404, code="call_id_not_found")],
            "accept",
            "gone",
            {"profile": "desk", "failure": "HTTP 404 call_id_not_found"},
            id="gone",
        ),
        pytest.param(
            [Respond(400, code="invalid_request")],
            "reject",
            "on_error",
            {"status_code": 503, "failed_action": "accept", "failure": "HTTP 400 invalid_request"},
            id="on-error",
        ),
        pytest.param(
            [Drop(applied=True)] * 3,
            "accept",
            "unknown",
            {"profile": "desk", "failure": UNKNOWN_FAILURE},
            id="unknown",
        ),
    ],
)
async def test_each_entry_records_what_finally_happened_upstream_and_why(
    rules_file: Path,
    secret: str,
    fake: FakeOpenAI,
    new_store: Any,
    behaviour: list[Respond | Drop],
    action: str,
    outcome: str,
    why: dict[str, Any],
) -> None:
    app = build(rules_file, secret, fake, new_store())
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    fake.script(delivery.call_id, *behaviour)
    async with running(app) as client:
        assert (await deliver(client, delivery)).status_code == 200
        calls = await call_log(client)
    assert [(c["call_id"], c["action"], c["outcome"]) for c in calls] == [
        (delivery.call_id, action, outcome)
    ]
    assert calls[0]["rule"] == "default"
    # The fields that say why are present exactly where they apply.
    assert {k: v for k, v in calls[0].items() if k not in BASE_FIELDS} == why


async def test_a_delivery_released_for_redelivery_says_which_actions_failed(
    rules_file: Path, secret: str, fake: FakeOpenAI, new_store: Any
) -> None:
    app = build(rules_file, secret, fake, new_store())
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    fake.script(delivery.call_id, Respond(400, code="invalid_request"), Respond(403, code="nope"))
    async with running(app) as client:
        assert (await deliver(client, delivery)).status_code == 503
        calls = await call_log(client)
    assert [(c["action"], c["outcome"], c["status_code"]) for c in calls] == [
        ("reject", "failed", 503)
    ]
    assert calls[0]["failed_action"] == "accept"
    assert calls[0]["failure"] == "HTTP 400 invalid_request; on_error reject: HTTP 403 nope"


async def test_the_log_keeps_the_last_1000_decisions(
    rules_file: Path, secret: str, fake: FakeOpenAI, new_store: Any
) -> None:
    assert CALL_LOG_SIZE == 1000
    store = new_store()
    for index in range(CALL_LOG_SIZE):
        await store.append(old_entry(index))
    app = build(rules_file, secret, fake, store, dry_run=True)
    sent = [signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time())) for _ in range(3)]
    async with running(app) as client:
        for delivery in sent:
            assert (await deliver(client, delivery)).json()["status"] == "dry_run"
        calls = await call_log(client, limit=1000)
    assert len(calls) == CALL_LOG_SIZE
    expected_old = [f"rtc_old{i:04d}" for i in reversed(range(3, CALL_LOG_SIZE))]
    assert [c["call_id"] for c in calls] == [d.call_id for d in reversed(sent)] + expected_old


@pytest.mark.redis
async def test_the_redis_list_itself_is_trimmed_to_1000(
    rules_file: Path, secret: str, fake: FakeOpenAI, redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore.from_url(redis_url, prefix=redis_prefix)
    for index in range(CALL_LOG_SIZE + 5):
        await store.append(old_entry(index))
    app = build(rules_file, secret, fake, store, dry_run=True)
    async with running(app) as client:
        delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
        await deliver(client, delivery)
    async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as raw:
        assert await raw.llen(f"{redis_prefix}calls") == CALL_LOG_SIZE
        head = await raw.lindex(f"{redis_prefix}calls", 0)
    assert isinstance(head, str)
    newest = json.loads(head)
    assert newest["call_id"] == delivery.call_id


@pytest.mark.redis
async def test_replicas_on_one_redis_share_the_call_log(
    rules_file: Path, secret: str, fake: FakeOpenAI, redis_url: str, redis_prefix: str
) -> None:
    first = build(rules_file, secret, fake, RedisStore.from_url(redis_url, prefix=redis_prefix))
    second = build(rules_file, secret, fake, RedisStore.from_url(redis_url, prefix=redis_prefix))
    now = int(time.time())
    sent = [signed_test_call(secret, CALLER, MAIN_LINE, now=now) for _ in range(4)]
    async with running(first) as one, running(second) as two:
        for index, delivery in enumerate(sent):
            answer = await deliver(one if index % 2 == 0 else two, delivery)
            assert answer.json()["status"] == "processed"
        # The copy of a delivery another replica already handled is a duplicate here.
        assert (await deliver(two, sent[0])).json()["status"] == "duplicate"
        seen_by_one = await call_log(one)
        seen_by_two = await call_log(two)
    assert [c["call_id"] for c in seen_by_one] == [d.call_id for d in reversed(sent)]
    assert seen_by_two == seen_by_one
    assert [r.verb for r in fake.requests] == ["accept"] * 4


@pytest.mark.redis
async def test_a_new_replica_sees_the_log_of_one_that_stopped(
    rules_file: Path, secret: str, fake: FakeOpenAI, redis_url: str, redis_prefix: str
) -> None:
    first = build(rules_file, secret, fake, RedisStore.from_url(redis_url, prefix=redis_prefix))
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    async with running(first) as client:
        await deliver(client, delivery)
        before = await call_log(client)
    later = build(rules_file, secret, fake, RedisStore.from_url(redis_url, prefix=redis_prefix))
    async with running(later) as client:
        after = await call_log(client)
    assert after == before
    assert [c["call_id"] for c in after] == [delivery.call_id]


async def test_an_action_that_cannot_be_rendered_is_logged_as_failed_and_replaced(
    tmp_path: Path, secret: str, fake: FakeOpenAI, new_store: Any
) -> None:
    rules = RULES.replace(
        'instructions: "Answer politely."', "instructions: \"{{ headers['x-missing'] }}\""
    )
    app = build(write_rules_file(tmp_path, rules), secret, fake, new_store())
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    async with running(app) as client:
        assert (await deliver(client, delivery)).json()["status"] == "on_error"
        [entry] = await call_log(client)
    assert (entry["rule"], entry["action"], entry["outcome"]) == ("default", "reject", "on_error")
    assert (entry["status_code"], entry["failed_action"]) == (503, "accept")
    assert entry["failure"].startswith("instructions template:")
    assert "profile" not in entry
