"""Call ownership: one replica drives a call; another takes it over when the owner dies."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from types import MappingProxyType
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from app.calls.call_control import (
    CallControl,
    CompanyFunction,
    control_from_json,
    control_to_json,
)
from app.calls.call_ownership import (
    LEASE_TTL_S,
    RENEW_EVERY_S,
    CallMemory,
    CallOwnership,
    CallTicket,
    LeaseKeeper,
    MemoryCallOwnership,
    RedisCallOwnership,
    take_over_orphans,
)
from app.calls.function_requests import CallFacts, FunctionRequester
from app.calls.sideband_connection import CallOutcome, SidebandDriver, sideband_url
from app.openai_calls import OpenAICallsClient
from tests.fake_openai import AgentCallsFunction, AwaitClient, FakeOpenAI, Pause
from tests.function_service import function_services, json_answer
from tests.redis_server import delete_prefix

TTL_S = 0.3


async def drive_while_owned(
    ownership: CallOwnership,
    call_id: str,
    owner: str,
    run: Callable[[], Awaitable[Any]],
    *,
    ttl_s: float = LEASE_TTL_S,
    renew_every_s: float = RENEW_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """One call driven under its own LeaseKeeper (a replica shares one among its calls)."""
    keeper = LeaseKeeper(ownership, owner, ttl_s=ttl_s, renew_every_s=renew_every_s, clock=clock)
    return await keeper.drive(call_id, run)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ticket(call_id: str = "rtc_1", active_for_s: float = 3600) -> CallTicket:
    return CallTicket(
        call_id,
        "clinic",
        "desk",
        {"e164": "+15550001111"},
        {"e164": "+15550002222"},
        active_until=time.time() + active_for_s,
    )


@pytest.fixture
def prefix() -> str:
    return f"sip-router-test:{uuid4().hex}:"


class Backend:
    """An ownership store and a way to let its leases run out."""

    def __init__(self, ownership: CallOwnership, clock: FakeClock | None) -> None:
        self.ownership = ownership
        self._clock = clock

    async def expire_leases(self) -> None:
        if self._clock is not None:
            self._clock.now += TTL_S + 0.01
        else:
            await asyncio.sleep(TTL_S + 0.1)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        yield Backend(MemoryCallOwnership(clock), clock)
        return
    url: str = request.getfixturevalue("redis_url")
    client = redis.asyncio.Redis.from_url(url)
    yield Backend(RedisCallOwnership(client, prefix=prefix), None)
    await client.aclose()
    await delete_prefix(url, prefix)


@pytest.fixture
async def redis_client(redis_url: str, prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the test Redis; the test's keys are deleted afterwards."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()
    await delete_prefix(redis_url, prefix)


async def test_one_owner_at_a_time(backend: Backend) -> None:
    ownership = backend.ownership
    assert await ownership.register(ticket(), "replica-a", TTL_S)
    assert not await ownership.register(ticket(), "replica-b", TTL_S)
    assert await ownership.renew_all(["rtc_1"], "replica-a", TTL_S) == set()
    assert await ownership.renew_all(["rtc_1"], "replica-b", TTL_S) == {"rtc_1"}
    assert await ownership.take_over("replica-b", TTL_S, time.time()) == []


async def test_an_expired_lease_is_taken_over_with_the_calls_memory(backend: Backend) -> None:
    ownership = backend.ownership
    assert await ownership.register(ticket(), "replica-a", TTL_S)
    await ownership.record_answered("rtc_1", "call_1")
    await ownership.record_answered("rtc_1", "call_2")
    await ownership.mark_greeted("rtc_1")
    await backend.expire_leases()
    [(taken, memory)] = await ownership.take_over("replica-b", TTL_S, time.time())
    assert taken.call_id == "rtc_1"
    assert (taken.rule, taken.profile, taken.caller) == ("clinic", "desk", {"e164": "+15550001111"})
    assert memory == CallMemory(frozenset({"call_1", "call_2"}), greeted=True)
    # The old owner lost it; nobody else can take it while the new owner renews.
    assert await ownership.renew_all(["rtc_1"], "replica-a", TTL_S) == {"rtc_1"}
    assert await ownership.renew_all(["rtc_1"], "replica-b", TTL_S) == set()
    assert await ownership.take_over("replica-c", TTL_S, time.time()) == []


async def test_the_control_a_call_switched_to_goes_with_it(backend: Backend) -> None:
    ownership = backend.ownership
    switched = control_to_json(CallControl(end_call=True, transcript=True))
    assert await ownership.register(ticket(), "replica-a", TTL_S)
    await ownership.record_control("rtc_1", switched)
    assert (await ownership.memory("rtc_1")).control == switched
    await backend.expire_leases()
    [(_, memory)] = await ownership.take_over("replica-b", TTL_S, time.time())
    assert memory.control == switched
    assert control_from_json(memory.control) == CallControl(end_call=True, transcript=True)
    await ownership.finish("rtc_1", "replica-b")
    assert await ownership.memory("rtc_1") == CallMemory()


async def test_a_released_call_is_taken_over_at_once(backend: Backend) -> None:
    ownership = backend.ownership
    await ownership.register(ticket(), "replica-a", TTL_S)
    await ownership.release("rtc_1", "replica-b")  # not the owner: no effect
    assert await ownership.take_over("replica-b", TTL_S, time.time()) == []
    await ownership.release("rtc_1", "replica-a")
    assert [t.call_id for t, _ in await ownership.take_over("replica-b", TTL_S, time.time())] == [
        "rtc_1"
    ]


async def test_a_finished_call_is_forgotten(backend: Backend) -> None:
    ownership = backend.ownership
    await ownership.register(ticket(), "replica-a", TTL_S)
    await ownership.record_answered("rtc_1", "call_1")
    await ownership.finish("rtc_1", "replica-a")
    await backend.expire_leases()
    assert await ownership.take_over("replica-b", TTL_S, time.time()) == []
    assert await ownership.memory("rtc_1") == CallMemory()


async def test_a_call_past_its_active_time_is_not_taken_over(backend: Backend) -> None:
    ownership = backend.ownership
    await ownership.register(ticket(active_for_s=60), "replica-a", TTL_S)
    await backend.expire_leases()
    assert await ownership.take_over("replica-b", TTL_S, time.time() + 120) == []


async def test_many_leases_are_renewed_at_once_and_the_lost_ones_named(backend: Backend) -> None:
    ownership = backend.ownership
    for call_id in ("rtc_1", "rtc_2", "rtc_3"):
        assert await ownership.register(ticket(call_id), "replica-a", TTL_S)
    await backend.expire_leases()
    assert [t.call_id for t, _ in await ownership.take_over("replica-b", TTL_S, time.time())]
    # Replica B holds all three now; it renews its own and gets A's one back as lost.
    await ownership.release("rtc_2", "replica-b")
    assert await ownership.register(ticket("rtc_2"), "replica-a", TTL_S)
    assert await ownership.renew_all(["rtc_1", "rtc_2", "rtc_3"], "replica-b", TTL_S) == {"rtc_2"}
    assert await ownership.renew_all(["rtc_2", "rtc_gone"], "replica-a", TTL_S) == {"rtc_gone"}
    assert await ownership.renew_all([], "replica-a", TTL_S) == set()


class CountingOwnership(MemoryCallOwnership):
    """Counts the renewal round trips; `failing` makes them fail as an absent Redis would."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.renewals: list[list[str]] = []
        self.failing = False

    async def renew_all(self, call_ids: Sequence[str], owner: str, ttl_s: float) -> set[str]:
        self.renewals.append(sorted(call_ids))
        if self.failing:
            raise RedisConnectionError("Redis went away")
        return await super().renew_all(call_ids, owner, ttl_s)


async def test_one_renewal_loop_serves_every_call_and_stops_only_the_lost_one() -> None:
    clock = FakeClock()
    ownership = CountingOwnership(clock)
    keeper = LeaseKeeper(ownership, "replica-a", ttl_s=TTL_S, renew_every_s=0.01, clock=clock)
    for call_id in ("rtc_1", "rtc_2", "rtc_3"):
        await ownership.register(ticket(call_id), "replica-a", TTL_S)
    release = asyncio.Event()

    async def driving() -> str:
        await release.wait()
        return "ended"

    tasks_before = len(asyncio.all_tasks())
    calls = {
        call_id: asyncio.ensure_future(keeper.drive(call_id, driving))
        for call_id in ("rtc_1", "rtc_2", "rtc_3")
    }
    while len(ownership.renewals) < 3:
        await asyncio.sleep(0.01)
    # One task per call (the caller's), one renewal loop, one round trip for all three.
    assert len(asyncio.all_tasks()) == tasks_before + 3 + 1
    assert ownership.renewals[-1] == ["rtc_1", "rtc_2", "rtc_3"]
    # Replica B gets rtc_2 (as after a lease that ran out during a long pause).
    await ownership.release("rtc_2", "replica-a")
    assert [t.call_id for t, _ in await ownership.take_over("replica-b", TTL_S, time.time())] == [
        "rtc_2"
    ]
    assert await asyncio.wait_for(calls["rtc_2"], 2) is None
    assert not calls["rtc_1"].done()
    assert not calls["rtc_3"].done()
    release.set()
    assert await asyncio.gather(calls["rtc_1"], calls["rtc_3"]) == ["ended", "ended"]
    # Finished calls are forgotten and the loop ends with the last lease.
    assert await ownership.memory("rtc_1") == CallMemory()
    assert len(keeper) == 0
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_lease_that_cannot_be_renewed_for_its_whole_life_stops_the_driver() -> None:
    clock = FakeClock()
    ownership = CountingOwnership(clock)
    keeper = LeaseKeeper(ownership, "replica-a", ttl_s=TTL_S, renew_every_s=0.01, clock=clock)
    await ownership.register(ticket(), "replica-a", TTL_S)
    ownership.failing = True
    call = asyncio.ensure_future(keeper.drive("rtc_1", lambda: asyncio.sleep(60)))
    while len(ownership.renewals) < 3:
        await asyncio.sleep(0.01)
    assert not call.done()  # failed renewals, but the lease may still be ours
    clock.now += TTL_S + 0.01
    assert await asyncio.wait_for(call, 2) is None


async def test_the_owner_stops_driving_when_its_lease_is_lost() -> None:
    clock = FakeClock()
    ownership = MemoryCallOwnership(clock)
    await ownership.register(ticket(), "replica-a", TTL_S)
    stopped = asyncio.Event()

    async def driving() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    task = asyncio.ensure_future(
        drive_while_owned(ownership, "rtc_1", "replica-a", driving, ttl_s=TTL_S, renew_every_s=0.01)
    )
    await asyncio.sleep(0.05)
    assert not stopped.is_set()
    clock.now += TTL_S + 1  # the lease ran out (a long pause) and another replica took it
    assert await ownership.take_over("replica-b", TTL_S, time.time())
    assert await asyncio.wait_for(task, 2) is None
    assert stopped.is_set()


async def test_a_stopping_replica_hands_its_calls_over() -> None:
    ownership = MemoryCallOwnership()
    await ownership.register(ticket(), "replica-a", 10)

    async def driving() -> None:
        await asyncio.sleep(60)

    task = asyncio.ensure_future(drive_while_owned(ownership, "rtc_1", "replica-a", driving))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [t.call_id for t, _ in await ownership.take_over("replica-b", 10, time.time())] == [
        "rtc_1"
    ]


# --- three replicas on one Redis, the owner killed mid-call ---------------------------------


class DiesWithoutReleasing(RedisCallOwnership):
    """A replica that is killed releases nothing."""

    async def release(self, call_id: str, owner: str) -> None:
        return None


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    with fake.serve_on_loopback() as base_url:
        fake.base_url = base_url  # type: ignore[attr-defined]
        yield fake
    assert fake.sideband_problems == []


@pytest.mark.redis
async def test_another_replica_takes_over_a_killed_owners_call_without_answering_twice(
    fake: FakeOpenAI, redis_url: str, prefix: str
) -> None:
    call_id = "rtc_takeover"
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_1"),
            AwaitClient("conversation.item.create"),
            Pause(60),
        ],
        [
            # After the takeover the agent's earlier call shows up again, then it ends the call.
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_1"),
            AgentCallsFunction("end_call", {}, "call_2"),
        ],
    )
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(3)]
    async with httpx.AsyncClient() as http, function_services() as start_service:
        service = await start_service(json_answer({"next": "Tuesday 9:00"}))
        function = CompanyFunction("lookup_appointment", service.url)
        driver = await _accepted_clinic_call(fake, http, call_id, function)

        owner = DiesWithoutReleasing(clients[0], prefix=prefix)
        assert await owner.register(ticket(call_id), "replica-a", TTL_S)
        first = driver(owner, CallMemory())
        killed = asyncio.ensure_future(
            drive_while_owned(
                owner, call_id, "replica-a", first.run, ttl_s=TTL_S, renew_every_s=0.05
            )
        )
        while "call_1" not in first.session.answered:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        killed.cancel()  # replica A dies mid-call
        with pytest.raises(asyncio.CancelledError):
            await killed

        # Replicas B and C scan for orphaned calls; exactly one of them gets it.
        others = {
            name: RedisCallOwnership(client, prefix=prefix)
            for name, client in zip(("replica-b", "replica-c"), clients[1:], strict=True)
        }
        taken: dict[str, list[tuple[CallTicket, CallMemory]]] = {name: [] for name in others}
        deadline = time.monotonic() + 15
        while not any(taken.values()) and time.monotonic() < deadline:
            results = await asyncio.gather(
                *(o.take_over(name, TTL_S, time.time()) for name, o in others.items())
            )
            for name, result in zip(others, results, strict=True):
                taken[name] += result
            await asyncio.sleep(0.05)
        winners = [name for name, result in taken.items() if result]
        assert len(winners) == 1
        [(took, memory)] = taken[winners[0]]
        assert took.call_id == call_id
        assert memory == CallMemory(
            frozenset({"call_1"}), greeted=True, asking=frozenset({"call_1"})
        )
        assert memory.lost == frozenset()
        second = driver(others[winners[0]], memory)
        outcome: CallOutcome = await asyncio.wait_for(
            drive_while_owned(
                others[winners[0]], call_id, winners[0], second.run, ttl_s=TTL_S, renew_every_s=0.05
            ),
            15,
        )
    for client in clients:
        await client.aclose()
    await delete_prefix(redis_url, prefix)

    outputs = [
        (e["item"]["call_id"], e["item"]["output"])
        for e in fake.client_events_for(call_id)
        if e["type"] == "conversation.item.create"
    ]
    assert [call for call, _ in outputs] == ["call_1", "call_2"]
    assert json.loads(outputs[0][1]) == {"next": "Tuesday 9:00"}
    assert len(service.requests) == 1
    greetings = [
        e for e in fake.client_events_for(call_id) if "instructions" in e.get("response", {})
    ]
    assert len(greetings) == 1
    assert fake.verbs_for(call_id) == ["accept", "hangup"]
    assert outcome.end_reason == "hangup"


async def test_the_orphan_scan_starts_every_call_it_takes_over() -> None:
    ownership = MemoryCallOwnership()
    await ownership.register(ticket("rtc_1"), "replica-a", 10)
    await ownership.register(ticket("rtc_2"), "replica-a", 10)
    await ownership.record_answered("rtc_2", "call_9")
    started: list[tuple[str, CallMemory]] = []

    def start(taken: CallTicket, memory: CallMemory) -> bool:
        started.append((taken.call_id, memory))
        return True

    scan = asyncio.ensure_future(take_over_orphans(ownership, "replica-b", start, every_s=0.01))
    await asyncio.sleep(0.05)
    assert started == []  # replica A still holds both
    await ownership.release("rtc_2", "replica-a")
    while not started:
        await asyncio.sleep(0.01)
    scan.cancel()
    with pytest.raises(asyncio.CancelledError):
        await scan
    assert started == [("rtc_2", CallMemory(frozenset({"call_9"}), greeted=False))]


async def test_a_ticket_no_replica_can_drive_is_forgotten_not_passed_around(
    backend: Backend,
) -> None:
    ownership = backend.ownership
    assert await ownership.register(ticket("rtc_unreadable"), "replica-a", TTL_S)
    await ownership.release("rtc_unreadable", "replica-a")
    refused: list[str] = []

    def refuse(taken: CallTicket, _: CallMemory) -> bool:
        refused.append(taken.call_id)
        return False

    stop = asyncio.Event()
    scan = asyncio.ensure_future(
        take_over_orphans(ownership, "replica-b", refuse, every_s=0.01, ttl_s=TTL_S, stop=stop)
    )
    while not refused:
        await asyncio.sleep(0.01)
    stop.set()
    await scan
    await backend.expire_leases()
    assert refused == ["rtc_unreadable"]
    assert await ownership.take_over("replica-c", TTL_S, time.time()) == []


@pytest.mark.redis
async def test_a_function_call_whose_owner_died_while_asking_gets_one_error_output(
    fake: FakeOpenAI, redis_url: str, prefix: str
) -> None:
    call_id = "rtc_lost_answer"
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_1"),
            Pause(60),
        ],
        [
            AwaitClient("conversation.item.create"),
            AgentCallsFunction("end_call", {}, "call_2"),
        ],
    )
    client = redis.asyncio.Redis.from_url(redis_url)
    async with httpx.AsyncClient() as http, function_services() as start_service:
        # The company's function answers only long after the owner died.
        slow = await start_service(json_answer({"next": "Tuesday 9:00"}, delay=5))
        function = CompanyFunction("lookup_appointment", slow.url, timeout_s=10)
        driver = await _accepted_clinic_call(fake, http, call_id, function)

        owner = DiesWithoutReleasing(client, prefix=prefix)
        assert await owner.register(ticket(call_id), "replica-a", TTL_S)
        first = driver(owner, CallMemory())
        killed = asyncio.ensure_future(
            drive_while_owned(
                owner, call_id, "replica-a", first.run, ttl_s=TTL_S, renew_every_s=0.05
            )
        )
        while "call_1" not in first.session.asking:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        killed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await killed

        other = RedisCallOwnership(client, prefix=prefix)
        taken: list[tuple[CallTicket, CallMemory]] = []
        deadline = time.monotonic() + 15
        while not taken and time.monotonic() < deadline:
            taken = await other.take_over("replica-b", TTL_S, time.time())
            await asyncio.sleep(0.05)
        [(_, memory)] = taken
        assert memory.lost == frozenset({"call_1"})
        second = driver(other, memory)
        outcome = await asyncio.wait_for(
            drive_while_owned(
                other, call_id, "replica-b", second.run, ttl_s=TTL_S, renew_every_s=0.05
            ),
            15,
        )
    await client.aclose()
    await delete_prefix(redis_url, prefix)

    outputs = [
        (e["item"]["call_id"], json.loads(e["item"]["output"]))
        for e in fake.client_events_for(call_id)
        if e["type"] == "conversation.item.create"
    ]
    assert outputs[0] == (
        "call_1",
        {"error": "the answer was lost when the call moved; ask again if needed"},
    )
    assert [call for call, _ in outputs] == ["call_1", "call_2"]
    assert outcome.end_reason == "hangup"


# --- the call's API across owners ------------------------------------------------------------


async def test_a_taken_over_ticket_keeps_its_api(backend: Backend) -> None:
    ownership = backend.ownership
    live = dataclasses.replace(ticket("live_1"), api="live")
    assert await ownership.register(live, "replica-a", TTL_S)
    await ownership.release("live_1", "replica-a")
    [(taken, _)] = await ownership.take_over("replica-b", TTL_S, time.time())
    assert taken.api == "live"


class CountingScript:
    """A registered Lua script that counts its calls."""

    def __init__(self, script: Any) -> None:
        self.script = script
        self.calls = 0

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.script(**kwargs)


@pytest.mark.redis
async def test_the_scan_asks_redis_to_take_over_only_the_calls_without_an_owner(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    ownership = RedisCallOwnership(redis_client, prefix=prefix)
    for n in range(50):
        assert await ownership.register(ticket(f"rtc_{n}"), "replica-a", 10)
    await ownership.release("rtc_7", "replica-a")
    counting = CountingScript(ownership._take_over)
    ownership._take_over = counting  # type: ignore[assignment]

    taken = await ownership.take_over("replica-b", 10, time.time())

    assert [t.call_id for t, _ in taken] == ["rtc_7"]
    assert counting.calls == 1  # not one round trip per active call


@pytest.mark.redis
async def test_an_unreadable_ticket_in_redis_is_dropped_not_passed_around(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    client, ownership = redis_client, RedisCallOwnership(redis_client, prefix=prefix)
    await client.set(f"{prefix}ticket:rtc_bad", "{not json")
    await client.zadd(f"{prefix}active", {"rtc_bad": time.time() + 3600})

    assert await ownership.take_over("replica-b", TTL_S, time.time()) == []
    assert await client.exists(f"{prefix}ticket:rtc_bad", f"{prefix}owner:rtc_bad") == 0
    assert await client.zscore(f"{prefix}active", "rtc_bad") is None


@pytest.mark.redis
async def test_a_ticket_written_before_gpt_live_is_a_realtime_call(
    redis_client: redis.asyncio.Redis, prefix: str
) -> None:
    client, ownership = redis_client, RedisCallOwnership(redis_client, prefix=prefix)
    old = dataclasses.asdict(ticket("rtc_old"))
    del old["api"]
    await client.set(f"{prefix}ticket:rtc_old", json.dumps(old))
    await client.zadd(f"{prefix}active", {"rtc_old": old["active_until"]})
    [(taken, _)] = await ownership.take_over("replica-b", TTL_S, time.time())
    assert (taken.call_id, taken.api) == ("rtc_old", "realtime")


async def _accepted_clinic_call(
    fake: FakeOpenAI, http: httpx.AsyncClient, call_id: str, function: CompanyFunction
) -> Callable[[CallOwnership, CallMemory], SidebandDriver]:
    """Accept `call_id` on the fake, then a factory of the drivers any replica would run for
    it: greeting, end_call and `function`."""
    control = CallControl(
        greeting="Lakeside Clinic, how can I help?",
        end_call=True,
        functions=MappingProxyType({function.name: function}),
    )
    calls = OpenAICallsClient(http, base_url=fake.base_url, api_key=fake.api_key, deadline_s=1.0)  # type: ignore[attr-defined]
    assert (await calls.perform("accept", call_id, {"type": "realtime"})).outcome == "ok"

    def driver(ownership: CallOwnership, memory: CallMemory) -> SidebandDriver:
        return SidebandDriver(
            facts=CallFacts(call_id, {}, {}, "clinic", "desk"),
            control=control,
            url=sideband_url(fake.base_url, call_id),  # type: ignore[attr-defined]
            api_key=fake.api_key,
            actions=calls,
            functions=FunctionRequester(http, secret=None),
            memory=ownership,
            answered=memory.answered,
            greeted=memory.greeted,
            lost=memory.lost,
        )

    return driver
