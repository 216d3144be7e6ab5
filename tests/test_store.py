"""The dedupe store and the call log, run against process memory and a real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
import redis.asyncio

from app.store import (
    CALL_LOG_SIZE,
    DONE_KEEP_S,
    MAX_ID_LENGTH,
    SIP_CALL_KEEP_S,
    Claim,
    ClaimResult,
    MemoryStore,
    RedisStore,
    Store,
    StoreAvailability,
    StoreUnavailable,
    open_store,
)
from tests.redis_server import REDIS_SERVER, RedisServer, delete_prefix

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OUTCOME = {"action": "accept", "outcome": "ok", "status": 200, "rule": "office hours"}
DECISION = {"action": "refer", "body": {"target_uri": "sip:desk@pbx.example.com"}, "rule": "x"}


def needs_redis_server() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own per test, so tests never see each other's keys."""
    return f"sip-router-test:{uuid4().hex}:"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url: str = request.getfixturevalue("redis_url")
    redis_store = RedisStore.from_url(url, prefix=prefix)
    yield redis_store
    await redis_store.aclose()
    await delete_prefix(url, prefix)


@pytest.fixture
async def raw_redis(redis_url: str, prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
    await delete_prefix(redis_url, prefix)


def results(claims: list[Claim]) -> list[ClaimResult]:
    return sorted((c.result for c in claims), key=lambda r: r.value)


# --- claims ---------------------------------------------------------------------------


async def test_concurrent_copies_of_one_delivery_acquire_once(store: Store) -> None:
    claims = await asyncio.gather(*(store.claim("msg_1", "rtc_1", 30) for _ in range(50)))

    assert results(claims) == [ClaimResult.ACQUIRED] + [ClaimResult.IN_FLIGHT] * 49
    (acquired,) = [c for c in claims if c.result is ClaimResult.ACQUIRED]
    assert acquired.token
    assert all(c.token is None and c.outcome is None for c in claims if c is not acquired)


async def test_concurrent_deliveries_for_one_call_acquire_once(store: Store) -> None:
    claims = await asyncio.gather(*(store.claim(f"msg_{i}", "rtc_1", 30) for i in range(10)))

    assert results(claims) == [ClaimResult.ACQUIRED] + [ClaimResult.IN_FLIGHT] * 9


async def test_tokens_differ_between_owners(store: Store) -> None:
    first = await store.claim("msg_1", "rtc_1", 30)
    second = await store.claim("msg_2", "rtc_2", 30)

    assert first.token
    assert second.token
    assert first.token != second.token


@pytest.mark.parametrize(
    ("webhook_id", "call_id", "expected", "outcome"),
    [
        ("msg_1", "rtc_1", ClaimResult.DUPLICATE_DONE, OUTCOME),
        ("msg_2", "rtc_1", ClaimResult.CALL_DONE, OUTCOME),
        # The delivery's own record wins, whatever call it names; the outcome is the call's.
        ("msg_1", "rtc_9", ClaimResult.DUPLICATE_DONE, None),
    ],
)
async def test_finished_claims_answer_with_the_outcome(
    store: Store,
    webhook_id: str,
    call_id: str,
    expected: ClaimResult,
    outcome: dict[str, Any] | None,
) -> None:
    claim = await store.claim("msg_1", "rtc_1", 30)
    assert await store.finish(claim, OUTCOME) is True

    again = await store.claim(webhook_id, call_id, 30)

    assert again.result is expected
    assert again.outcome == outcome
    assert again.token is None


async def test_finish_leaves_other_deliveries_and_calls_free(store: Store) -> None:
    await store.finish(await store.claim("msg_1", "rtc_1", 30), OUTCOME)

    assert (await store.claim("msg_2", "rtc_2", 30)).result is ClaimResult.ACQUIRED


async def test_ids_that_look_like_key_suffixes_do_not_collide(store: Store) -> None:
    await store.finish(await store.claim("msg", "rtc", 30), OUTCOME)

    claim = await store.claim("msg:done", "rtc:done", 30)

    assert claim.result is ClaimResult.ACQUIRED


async def test_release_lets_the_next_delivery_acquire(store: Store) -> None:
    first = await store.claim("msg_1", "rtc_1", 30)
    assert (await store.claim("msg_1", "rtc_1", 30)).result is ClaimResult.IN_FLIGHT

    assert await store.release(first) is True
    second = await store.claim("msg_1", "rtc_1", 30)

    assert second.result is ClaimResult.ACQUIRED
    assert second.token != first.token
    assert (await store.claim("msg_2", "rtc_1", 30)).result is ClaimResult.IN_FLIGHT


async def test_released_call_accepts_another_delivery(store: Store) -> None:
    await store.release(await store.claim("msg_1", "rtc_1", 30))

    assert (await store.claim("msg_2", "rtc_1", 30)).result is ClaimResult.ACQUIRED


async def test_expired_lease_lets_a_new_claim_in(store: Store) -> None:
    await store.claim("msg_1", "rtc_1", 0.3)
    assert (await store.claim("msg_1", "rtc_1", 0.3)).result is ClaimResult.IN_FLIGHT
    assert (await store.claim("msg_2", "rtc_1", 0.3)).result is ClaimResult.IN_FLIGHT

    await asyncio.sleep(0.45)

    assert (await store.claim("msg_2", "rtc_1", 30)).result is ClaimResult.ACQUIRED


async def test_stale_release_keeps_the_new_owners_lease(store: Store) -> None:
    stale = await store.claim("msg_1", "rtc_1", 0.3)
    await asyncio.sleep(0.45)
    owner = await store.claim("msg_1", "rtc_1", 30)
    assert owner.result is ClaimResult.ACQUIRED

    assert await store.release(stale) is False

    assert (await store.claim("msg_1", "rtc_1", 30)).result is ClaimResult.IN_FLIGHT
    assert (await store.claim("msg_2", "rtc_1", 30)).result is ClaimResult.IN_FLIGHT
    assert await store.release(owner) is True


async def test_stale_finish_records_but_keeps_the_new_owners_lease(store: Store) -> None:
    stale = await store.claim("msg_1", "rtc_1", 0.3)
    await asyncio.sleep(0.45)
    owner = await store.claim("msg_2", "rtc_1", 30)
    assert owner.result is ClaimResult.ACQUIRED

    # The stale owner's action did happen upstream, so its outcome is still recorded.
    assert await store.finish(stale, OUTCOME) is False

    assert (await store.claim("msg_3", "rtc_1", 30)).outcome == OUTCOME
    assert await store.release(owner) is True


async def test_done_records_expire_after_keep_s(store: Store) -> None:
    await store.finish(await store.claim("msg_1", "rtc_1", 30), OUTCOME, keep_s=1)
    assert (await store.claim("msg_1", "rtc_1", 30)).result is ClaimResult.DUPLICATE_DONE

    await asyncio.sleep(1.1)

    assert (await store.claim("msg_1", "rtc_1", 30)).result is ClaimResult.ACQUIRED


async def test_outcome_is_returned_as_a_fresh_copy(store: Store) -> None:
    outcome: dict[str, Any] = {"action": "refer", "upstream": {"status": 200, "tries": [1, 2]}}
    await store.finish(await store.claim("msg_1", "rtc_1", 30), outcome)
    outcome["upstream"]["status"] = 500

    first = await store.claim("msg_1", "rtc_1", 30)
    assert first.outcome is not None
    first.outcome["action"] = "changed"

    second = await store.claim("msg_1", "rtc_1", 30)
    assert second.outcome == {"action": "refer", "upstream": {"status": 200, "tries": [1, 2]}}


# --- recorded decisions ---------------------------------------------------------------


async def test_a_fresh_claim_finds_no_decision(store: Store) -> None:
    claim = await store.claim("msg_1", "rtc_1", 30)

    assert claim.decision is None


async def test_a_decision_recorded_then_abandoned_is_found_by_the_next_owner(
    store: Store,
) -> None:
    first = await store.claim("msg_1", "rtc_1", 0.3)
    assert await store.record_decision(first, DECISION) is True
    await asyncio.sleep(0.45)

    # Another delivery for the call, after the first owner's lease expired.
    second = await store.claim("msg_2", "rtc_1", 30)

    assert second.result is ClaimResult.ACQUIRED
    assert second.decision == DECISION
    # The first owner cannot record anything any more.
    assert await store.record_decision(first, {**DECISION, "action": "reject"}) is False
    assert (await store.release(second, keep_decision=True)) is True
    assert (await store.claim("msg_1", "rtc_1", 30)).decision == DECISION


async def test_a_decision_is_recorded_only_under_the_owned_lease(store: Store) -> None:
    stale = await store.claim("msg_1", "rtc_1", 0.3)
    await asyncio.sleep(0.45)
    owner = await store.claim("msg_1", "rtc_1", 30)

    assert await store.record_decision(stale, DECISION) is False
    assert await store.release(owner) is True
    assert (await store.claim("msg_1", "rtc_1", 30)).decision is None


async def test_release_forgets_the_decision_unless_kept(store: Store) -> None:
    first = await store.claim("msg_1", "rtc_1", 30)
    await store.record_decision(first, DECISION)
    await store.release(first, keep_decision=True)
    second = await store.claim("msg_1", "rtc_1", 30)
    assert second.decision == DECISION

    await store.release(second)

    assert (await store.claim("msg_1", "rtc_1", 30)).decision is None


async def test_a_stale_release_keeps_the_decision(store: Store) -> None:
    stale = await store.claim("msg_1", "rtc_1", 0.3)
    await store.record_decision(stale, DECISION)
    await asyncio.sleep(0.45)
    owner = await store.claim("msg_2", "rtc_1", 30)

    assert await store.release(stale) is False
    assert await store.release(owner, keep_decision=True) is True

    assert (await store.claim("msg_3", "rtc_1", 30)).decision == DECISION


async def test_finish_drops_the_decision(store: Store) -> None:
    claim = await store.claim("msg_1", "rtc_1", 30)
    await store.record_decision(claim, DECISION)

    await store.finish(claim, OUTCOME, keep_s=1)
    await asyncio.sleep(1.1)

    assert (await store.claim("msg_1", "rtc_1", 30)).decision is None


async def test_a_recorded_decision_outlives_the_lease_for_keep_s(store: Store) -> None:
    claim = await store.claim("msg_1", "rtc_1", 0.3)
    await store.record_decision(claim, DECISION, keep_s=1)
    await asyncio.sleep(0.45)
    assert (await store.claim("msg_2", "rtc_1", 0.3)).decision == DECISION

    await asyncio.sleep(1.0)

    assert (await store.claim("msg_3", "rtc_1", 30)).decision is None


@pytest.mark.parametrize(
    ("webhook_id", "call_id", "lease_s"),
    [
        ("", "rtc_1", 30),
        ("msg_1", "", 30),
        ("m" * (MAX_ID_LENGTH + 1), "rtc_1", 30),
        ("msg_1", "r" * (MAX_ID_LENGTH + 1), 30),
        ("msg_\ud800", "rtc_1", 30),
        ("msg_1", "rtc_1", 0),
        ("msg_1", "rtc_1", -1),
        ("msg_1", "rtc_1", float("inf")),
        ("msg_1", "rtc_1", float("nan")),
    ],
)
async def test_claim_rejects_bad_arguments(
    store: Store, webhook_id: str, call_id: str, lease_s: float
) -> None:
    with pytest.raises(ValueError, match=r"webhook_id|call_id|lease_s"):
        await store.claim(webhook_id, call_id, lease_s)


async def test_longest_allowed_ids_and_any_characters_are_accepted(store: Store) -> None:
    webhook_id = "m" * MAX_ID_LENGTH
    call_id = "rtc *?[]{}:\n\u00e9\U0001f4de"

    claim = await store.claim(webhook_id, call_id, 30)
    await store.finish(claim, OUTCOME)

    assert (await store.claim("msg_2", call_id, 30)).result is ClaimResult.CALL_DONE
    assert (await store.claim(webhook_id, "rtc_2", 30)).result is ClaimResult.DUPLICATE_DONE


@pytest.mark.parametrize("result", [r for r in ClaimResult if r is not ClaimResult.ACQUIRED])
async def test_only_acquired_claims_can_be_finished_or_released(
    store: Store, result: ClaimResult
) -> None:
    claim = Claim(result, "msg_1", "rtc_1")

    with pytest.raises(ValueError, match="not acquired"):
        await store.finish(claim, OUTCOME)
    with pytest.raises(ValueError, match="not acquired"):
        await store.release(claim)


async def test_finish_rejects_an_outcome_that_is_not_json(store: Store) -> None:
    claim = await store.claim("msg_1", "rtc_1", 30)

    with pytest.raises(TypeError):
        await store.finish(claim, {"at": object()})

    assert (await store.claim("msg_2", "rtc_1", 30)).result is ClaimResult.IN_FLIGHT


# --- call log -------------------------------------------------------------------------


def entry(n: int) -> dict[str, Any]:
    return {
        "time": f"2026-05-09T10:00:{n % 60:02d}Z",
        "call_id": f"rtc_{n}",
        "caller": "+1******0123",
        "called": "+44******0958",
        "rule": "office hours" if n % 2 else None,
        "action": "accept",
        "outcome": "ok",
        "latency_ms": 12.5 + n,
        "ruleset": "3f2a9c",
    }


async def test_call_log_is_newest_first_and_limited(store: Store) -> None:
    for n in range(5):
        await store.append(entry(n))

    assert await store.recent(3) == [entry(4), entry(3), entry(2)]
    assert await store.recent(10) == [entry(n) for n in (4, 3, 2, 1, 0)]
    assert await store.recent(1) == [entry(4)]
    assert await store.recent(0) == []


async def test_call_log_starts_empty(store: Store) -> None:
    assert await store.recent(50) == []


async def test_call_log_keeps_the_last_1000_entries(store: Store) -> None:
    total = CALL_LOG_SIZE + 5
    for n in range(total):
        await store.append(entry(n))

    calls = await store.recent(CALL_LOG_SIZE * 2)

    assert len(calls) == CALL_LOG_SIZE
    assert calls[0] == entry(total - 1)
    assert calls[-1] == entry(5)


async def test_a_calls_later_life_joins_its_record_while_the_record_is_kept(
    store: Store,
) -> None:
    record = {"call_id": "rtc_a", "trace": [], "tools_added": [], "vars": {}}
    await store.append(entry(1) | {"call_id": "rtc_a"}, record)
    end = {"ended_at": "2026-11-30T17:00:00+00:00", "duration_s": 42.5, "end_reason": "hangup"}

    assert await store.add_to_call("rtc_a", end) is True
    assert await store.add_to_call("rtc_a", {"end_reason": "transferred", "events": []})
    assert await store.add_to_call("rtc_a", {}) is True
    assert await store.add_to_call("rtc_gone", end) is False

    # Empty lists and objects stay what they were; a field given again has its last value.
    expected = {**record, **end, "end_reason": "transferred", "events": []}
    assert await store.call_record("rtc_a") == expected
    assert await store.call_record("rtc_gone") is None


async def test_a_record_trimmed_from_the_call_log_is_not_brought_back(store: Store) -> None:
    await store.append(entry(0) | {"call_id": "rtc_old"}, {"call_id": "rtc_old"})
    for n in range(CALL_LOG_SIZE):
        await store.append(entry(n) | {"call_id": f"rtc_{n}"}, {"call_id": f"rtc_{n}"})

    assert await store.add_to_call("rtc_old", {"end_reason": "hangup"}) is False
    assert await store.call_record("rtc_old") is None
    assert len(await store.call_records(CALL_LOG_SIZE * 2)) == CALL_LOG_SIZE


async def test_call_log_rejects_a_negative_limit(store: Store) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.recent(-1)


# --- one phone call announced twice (Realtime and GPT-Live) --------------

PHONE_CALL = "sipcall:" + "ab" * 32


async def test_the_other_announcement_of_a_decided_phone_call_finds_its_outcome(
    store: Store,
) -> None:
    first = await store.claim("msg_rtc", "rtc_u0_1", 30, PHONE_CALL)
    assert first.result is ClaimResult.ACQUIRED
    assert first.sip_call == PHONE_CALL
    assert await store.finish(first, OUTCOME) is True

    second = await store.claim("msg_live", "live_u0_1", 30, PHONE_CALL)

    assert second.result is ClaimResult.SIP_CALL_DONE
    assert second.outcome == OUTCOME
    assert second.token is None
    # Another phone call, and a delivery that names none, are not held back.
    assert (await store.claim("msg_3", "live_u0_2", 30, "sipcall:other")).token
    assert (await store.claim("msg_4", "live_u0_3", 30)).result is ClaimResult.ACQUIRED


async def test_concurrent_announcements_of_one_phone_call_acquire_once(store: Store) -> None:
    claims = await asyncio.gather(
        *(
            store.claim(f"msg_{i}", f"{'rtc' if i % 2 else 'live'}_u0_{i}", 30, PHONE_CALL)
            for i in range(20)
        )
    )

    assert results(claims) == [ClaimResult.ACQUIRED] + [ClaimResult.IN_FLIGHT] * 19


async def test_a_released_phone_call_can_be_decided_by_its_other_announcement(
    store: Store,
) -> None:
    first = await store.claim("msg_rtc", "rtc_u0_1", 30, PHONE_CALL)
    in_flight = await store.claim("msg_live", "live_u0_1", 30, PHONE_CALL)
    assert in_flight.result is ClaimResult.IN_FLIGHT

    assert await store.release(first) is True

    assert (await store.claim("msg_live", "live_u0_1", 30, PHONE_CALL)).token


async def test_a_phone_call_lease_expires_like_the_others(store: Store) -> None:
    await store.claim("msg_rtc", "rtc_u0_1", 0.3, PHONE_CALL)
    await asyncio.sleep(0.45)

    assert (await store.claim("msg_live", "live_u0_1", 30, PHONE_CALL)).token


async def test_a_stale_finish_reports_the_phone_call_lease_lost(store: Store) -> None:
    stale = await store.claim("msg_rtc", "rtc_u0_1", 0.3, PHONE_CALL)
    await asyncio.sleep(0.45)
    owner = await store.claim("msg_live", "live_u0_1", 30, PHONE_CALL)
    assert owner.result is ClaimResult.ACQUIRED

    assert await store.finish(stale, OUTCOME) is False

    # The new owner's lease is untouched; its own finish owns all three.
    assert (await store.claim("msg_x", "live_u0_1", 30)).result is ClaimResult.IN_FLIGHT
    assert await store.finish(owner, OUTCOME) is True


async def test_the_phone_call_record_is_kept_a_quarter_hour() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.finish(await store.claim("msg_rtc", "rtc_u0_1", 30, PHONE_CALL), OUTCOME)

    clock.now += SIP_CALL_KEEP_S - 1
    held = await store.claim("msg_live", "live_u0_1", 30, PHONE_CALL)
    assert held.result is ClaimResult.SIP_CALL_DONE
    clock.now += 1
    assert (await store.claim("msg_live", "live_u0_1", 30, PHONE_CALL)).token
    # The call id's own record is kept as long as ever.
    assert (await store.claim("msg_x", "rtc_u0_1", 30)).result is ClaimResult.CALL_DONE


async def test_memory_keeps_a_bounded_number_of_phone_call_records() -> None:
    store = MemoryStore(max_done_calls=2)
    for n in range(3):
        await store.finish(await store.claim(f"m{n}", f"rtc_{n}", 30, f"sipcall:{n}"), OUTCOME)

    assert (await store.claim("x0", "live_0", 30, "sipcall:0")).result is ClaimResult.ACQUIRED
    assert (await store.claim("x2", "live_2", 30, "sipcall:2")).result is (
        ClaimResult.SIP_CALL_DONE
    )


@pytest.mark.parametrize("sip_call", ["", "s" * (MAX_ID_LENGTH + 1)])
async def test_a_bad_phone_call_key_is_refused(store: Store, sip_call: str) -> None:
    with pytest.raises(ValueError, match="sip_call"):
        await store.claim("msg_1", "rtc_1", 30, sip_call)


@pytest.mark.redis
async def test_redis_phone_call_keys_and_their_expiry(
    redis_url: str, prefix: str, raw_redis: redis.asyncio.Redis
) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        claim = await store.claim("msg_1", "live_1", 30, PHONE_CALL)
        assert await raw_redis.get(f"{prefix}sl:{PHONE_CALL}") == claim.token
        assert 29_000 < await raw_redis.pttl(f"{prefix}sl:{PHONE_CALL}") <= 30_000

        assert await store.finish(claim, OUTCOME) is True

        assert sorted(await raw_redis.keys(f"{prefix}*")) == [
            f"{prefix}c:live_1",
            f"{prefix}s:{PHONE_CALL}",
            f"{prefix}w:msg_1",
        ]
        assert json.loads(await raw_redis.get(f"{prefix}s:{PHONE_CALL}") or "null") == OUTCOME
        assert SIP_CALL_KEEP_S - 60 < await raw_redis.ttl(f"{prefix}s:{PHONE_CALL}") <= 900
        assert await raw_redis.ttl(f"{prefix}c:live_1") > DONE_KEEP_S - 60
    finally:
        await store.aclose()


# --- redis specifics ------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_keys_and_their_expiry(
    redis_url: str, prefix: str, raw_redis: redis.asyncio.Redis
) -> None:
    store = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        claim = await store.claim("msg_1", "rtc_1", 30)
        for key in (f"{prefix}wl:msg_1", f"{prefix}cl:rtc_1"):
            assert await raw_redis.get(key) == claim.token
            assert 29_000 < await raw_redis.pttl(key) <= 30_000

        assert await store.record_decision(claim, DECISION) is True
        assert json.loads(await raw_redis.get(f"{prefix}cd:rtc_1") or "null") == DECISION
        assert DONE_KEEP_S - 60 < await raw_redis.ttl(f"{prefix}cd:rtc_1") <= DONE_KEEP_S

        await store.finish(claim, OUTCOME)

        assert sorted(await raw_redis.keys(f"{prefix}*")) == [
            f"{prefix}c:rtc_1",
            f"{prefix}w:msg_1",
        ]
        assert await raw_redis.get(f"{prefix}w:msg_1") == "1"
        assert json.loads(await raw_redis.get(f"{prefix}c:rtc_1") or "null") == OUTCOME
        for key in (f"{prefix}w:msg_1", f"{prefix}c:rtc_1"):
            assert DONE_KEEP_S - 60 < await raw_redis.ttl(key) <= DONE_KEEP_S == 96 * 3600

        for n in range(CALL_LOG_SIZE + 5):
            await store.append(entry(n))
        assert await raw_redis.llen(f"{prefix}calls") == CALL_LOG_SIZE
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_default_prefix_is_sip_router(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    call_id = f"rtc_{uuid4().hex}"
    try:
        claim = await store.claim(f"msg_{uuid4().hex}", call_id, 5)
        async with redis.asyncio.Redis.from_url(redis_url, decode_responses=True) as client:
            assert await client.get(f"sip-router:cl:{call_id}") == claim.token
        await store.release(claim)
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_two_clients_share_claims(redis_url: str, prefix: str) -> None:
    first = RedisStore.from_url(redis_url, prefix=prefix)
    second = RedisStore.from_url(redis_url, prefix=prefix)
    try:
        claims = await asyncio.gather(
            *(s.claim("msg_1", "rtc_1", 30) for s in (first, second) for _ in range(10))
        )
        assert results(claims) == [ClaimResult.ACQUIRED] + [ClaimResult.IN_FLIGHT] * 19
        (acquired,) = [c for c in claims if c.result is ClaimResult.ACQUIRED]

        await second.finish(acquired, OUTCOME)

        assert (await first.claim("msg_2", "rtc_1", 30)).outcome == OUTCOME
    finally:
        await first.aclose()
        await second.aclose()
        await delete_prefix(redis_url, prefix)


@pytest.mark.redis
async def test_stopped_redis_raises_store_unavailable_quickly_and_recovers(
    tmp_path: Path,
) -> None:
    needs_redis_server()
    server = RedisServer(tmp_path)
    server.start()
    store = RedisStore.from_url(server.url)
    try:
        await store.ping()
        acquired = await store.claim("msg_1", "rtc_1", 30)
        server.stop()

        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "ping": store.ping,
            "claim": lambda: store.claim("msg_2", "rtc_2", 30),
            "finish": lambda: store.finish(acquired, OUTCOME),
            "release": lambda: store.release(acquired),
            "append": lambda: store.append(entry(1)),
            "recent": lambda: store.recent(10),
        }
        for name, operation in operations.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                await operation()
            assert time.monotonic() - started < 3, name
            assert isinstance(raised.value.__cause__, redis.RedisError), name
            assert "127.0.0.1" not in str(raised.value), name

        server.start()
        await store.ping()
        # The new server has neither the data nor the cached Lua scripts.
        assert (await store.claim("msg_1", "rtc_1", 30)).result is ClaimResult.ACQUIRED
    finally:
        await store.aclose()
        server.stop()


@pytest.mark.redis
async def test_every_pooled_connection_recovers_on_its_first_command_after_a_restart(
    tmp_path: Path,
) -> None:
    needs_redis_server()
    server = RedisServer(tmp_path)
    server.start()
    store = RedisStore.from_url(server.url)
    try:
        # Concurrent claims leave several connections in the pool, all closed by the restart.
        before = await asyncio.gather(
            *(store.claim(f"msg_a{n}", f"rtc_a{n}", 30) for n in range(4))
        )
        assert results(before) == [ClaimResult.ACQUIRED] * 4
        server.stop()
        server.start()
        # No ping first: the first commands on the stale connections must succeed by themselves.
        after = await asyncio.gather(*(store.claim(f"msg_b{n}", f"rtc_b{n}", 30) for n in range(4)))
        assert results(after) == [ClaimResult.ACQUIRED] * 4
        server.stop()
        server.start()
        # The call log's transaction (a pipeline) recovers the same way.
        await asyncio.gather(*(store.append(entry(n)) for n in range(4)))
        assert len(await store.recent(10)) == 4
    finally:
        await store.aclose()
        server.stop()


@pytest.mark.redis
async def test_silent_redis_raises_store_unavailable_after_the_timeouts() -> None:
    # Accepts connections (via the backlog) but never answers a command.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        store = RedisStore.from_url(f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                await store.ping()
            assert 0.9 < time.monotonic() - started < 3
            assert isinstance(raised.value.__cause__, redis.TimeoutError)
        finally:
            await store.aclose()


CLAIMING_PROCESS = """
import asyncio, json, sys
from app.store import RedisStore

async def main(url, prefix, worker, calls):
    store = RedisStore.from_url(url, prefix=prefix)
    await store.ping()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    claims = await asyncio.gather(*(
        store.claim(webhook_id, f"rtc_{n}", 30)
        for n in range(calls)
        for webhook_id in [f"msg_{n}"] * 5 + [f"msg_{n}_{worker}_{k}" for k in range(5)]
    ))
    print(json.dumps([[c.call_id, c.result.value] for c in claims]), flush=True)
    await store.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


@pytest.mark.redis
def test_processes_claiming_the_same_ids_acquire_once_overall(redis_url: str, prefix: str) -> None:
    calls = 10
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMING_PROCESS, redis_url, prefix, str(worker), str(calls)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for worker in range(3)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        # Every process is connected before any claims, so their claims really overlap.
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=30)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
        asyncio.run(delete_prefix(redis_url, prefix))

    assert [worker.returncode for worker in workers] == [0, 0, 0]
    claims = [claim for output in outputs for claim in json.loads(output)]
    assert len(claims) == 3 * calls * 10
    for n in range(calls):
        per_call = sorted(result for call_id, result in claims if call_id == f"rtc_{n}")
        assert per_call == ["acquired"] + ["in_flight"] * 29, f"rtc_{n}"


# --- availability: what the log says while Redis is away ------------------------------


def store_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "sip_router.store"]
    caplog.clear()
    return lines


def store_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [getattr(r, "fields", {}) for r in caplog.records if r.name == "sip_router.store"]


@pytest.mark.redis
async def test_availability_warns_once_when_down_again_after_repeat_s_and_tells_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_redis_server()
    caplog.set_level(logging.INFO, logger="sip_router.store")
    server = RedisServer(tmp_path)
    clock = FakeClock()
    store = RedisStore.from_url(server.url)
    availability = StoreAvailability(store, repeat_s=60, clock=clock)
    try:
        # Down from the start (nothing listens yet): one warning naming redis.
        assert await availability.check() is False
        assert not availability.answers
        [fields] = store_fields(caplog)
        assert fields["error"] == "redis is unavailable (ConnectionError)"
        [(level, message)] = store_lines(caplog)
        assert level == logging.WARNING
        assert "does not answer" in message

        # Still down: silent until repeat_s has passed since the last warning.
        clock.now += 59
        assert await availability.check() is False
        assert store_lines(caplog) == []
        clock.now += 1
        assert await availability.check() is False
        assert [level for level, _ in store_lines(caplog)] == [logging.WARNING]

        server.start()
        assert await availability.check() is True
        assert availability.answers
        assert store_lines(caplog) == [(logging.INFO, "the shared store answers again")]
        assert await availability.check() is True
        assert store_lines(caplog) == []

        # Down again: warned at once, whatever the time since the previous outage's warning.
        server.stop()
        clock.now += 1
        assert await availability.check() is False
        assert [level for level, _ in store_lines(caplog)] == [logging.WARNING]
    finally:
        await store.aclose()
        server.stop()


async def test_availability_of_memory_is_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sip_router.store")
    availability = StoreAvailability(MemoryStore())
    assert await availability.check() is True
    assert store_lines(caplog) == []


# --- memory specifics and wiring ------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_leases_and_records_follow_the_given_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    first = await store.claim("msg_1", "rtc_1", 10)

    clock.now += 9.999
    assert (await store.claim("msg_2", "rtc_1", 10)).result is ClaimResult.IN_FLIGHT
    clock.now += 0.001
    second = await store.claim("msg_2", "rtc_1", 10)
    assert second.result is ClaimResult.ACQUIRED
    assert await store.release(first) is False

    await store.finish(second, OUTCOME, keep_s=60)
    clock.now += 59
    assert (await store.claim("msg_2", "rtc_1", 10)).result is ClaimResult.DUPLICATE_DONE
    clock.now += 1
    assert (await store.claim("msg_2", "rtc_1", 10)).result is ClaimResult.ACQUIRED


async def test_memory_record_written_again_keeps_its_later_expiry() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    stale = await store.claim("msg_1", "rtc_1", 1)
    clock.now += 1
    owner = await store.claim("msg_1", "rtc_1", 10)
    await store.finish(stale, OUTCOME, keep_s=10)
    clock.now += 1
    await store.finish(owner, OUTCOME, keep_s=100)
    clock.now += 50

    # Passing the first record's expiry must not remove the record written after it.
    assert (await store.claim("msg_1", "rtc_1", 10)).result is ClaimResult.DUPLICATE_DONE
    clock.now += 50
    assert (await store.claim("msg_1", "rtc_1", 10)).result is ClaimResult.ACQUIRED


async def test_open_store_picks_the_backend() -> None:
    memory = open_store(None, memory_max_calls=10)
    assert isinstance(memory, MemoryStore)
    await memory.ping()

    remote = open_store("redis://127.0.0.1:1/0", memory_max_calls=10)
    assert isinstance(remote, RedisStore)
    await remote.aclose()


async def finish_calls(store: MemoryStore, first: int, count: int) -> None:
    for n in range(first, first + count):
        await store.finish(await store.claim(f"msg_{n}", f"rtc_{n}", 30), OUTCOME)


async def test_memory_store_forgets_the_oldest_completed_calls_beyond_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_done_calls=3)

    with caplog.at_level("WARNING", logger="sip_router.store"):
        await finish_calls(store, 0, 3)
        assert caplog.records == []
        await finish_calls(store, 3, 2)

    for n in (0, 1):
        assert (await store.claim(f"msg_{n}", f"rtc_{n}", 30)).result is ClaimResult.ACQUIRED
    for n in (2, 3, 4):
        assert (await store.claim(f"msg_{n}", f"rtc_{n}", 30)).result is (
            ClaimResult.DUPLICATE_DONE
        )
    (line,) = caplog.records
    assert line.getMessage().startswith("in-memory store is full: forgetting the oldest")
    assert line.fields == {"max_done_calls": 3, "records_forgotten": 2}  # type: ignore[attr-defined]


async def test_memory_store_logs_forgetting_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock, max_done_calls=1)

    with caplog.at_level("WARNING", logger="sip_router.store"):
        await finish_calls(store, 0, 10)
        clock.now += 59
        await finish_calls(store, 10, 10)
        assert len(caplog.records) == 1
        clock.now += 1
        await finish_calls(store, 20, 1)

    first, second = caplog.records
    assert first.fields["records_forgotten"] == 2  # type: ignore[attr-defined]
    # Every record forgotten since the first line: 19 calls' two records.
    assert second.fields["records_forgotten"] == 38  # type: ignore[attr-defined]


async def test_memory_store_never_forgets_leases_or_recorded_decisions() -> None:
    store = MemoryStore(max_done_calls=1)
    held = await store.claim("msg_held", "rtc_held", 30)
    await store.record_decision(held, DECISION)
    abandoned = await store.claim("msg_gone", "rtc_gone", 0.01)
    await store.record_decision(abandoned, DECISION)

    await finish_calls(store, 0, 100)

    assert (await store.claim("msg_other", "rtc_held", 30)).result is ClaimResult.IN_FLIGHT
    await asyncio.sleep(0.02)
    assert (await store.claim("msg_other", "rtc_gone", 30)).decision == DECISION


async def test_memory_store_stays_within_its_bound() -> None:
    store = MemoryStore(max_done_calls=1000)
    tracemalloc.start()
    try:
        await finish_calls(store, 0, 1000)
        full = tracemalloc.get_traced_memory()[0]
        await finish_calls(store, 1000, 5000)
        grown = tracemalloc.get_traced_memory()[0] - full
    finally:
        tracemalloc.stop()

    # About 450 bytes per remembered call; 5000 more calls take the place of 1000 (without
    # the bound they would add 2.2 MB; dict resizing leaves some slack).
    assert full < 1000 * 600, full
    assert grown < 1000 * 150, grown
