"""Which replica drives a call: a lease per call, renewed while driving, taken over when lost.

A call is driven by one replica at a time. The owner renews its lease (one loop renews
every lease the replica holds, in one batched round trip); when the owner dies the lease
expires and another replica takes the call over (within 15 s: a 10 s lease and
a scan every 2 s), together with what the call remembers (the function calls already
answered, whether it was greeted, the call control it switched to) so nothing is answered
or said twice and the call goes on as it was. On shutdown a
replica releases its leases so others take over at once.

In process memory (one replica) or in Redis (several), with the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.call_api import CallApi

log = logging.getLogger("sip_router.sideband")

LEASE_TTL_S = 10.0
RENEW_EVERY_S = 3.0
TAKEOVER_SCAN_S = 2.0
KEY_PREFIX = "sip-router:sideband:"
MAX_TAKEOVERS_PER_SCAN = 100


@dataclass(frozen=True, slots=True)
class CallTicket:
    """What another replica needs to drive a call it takes over (the profile names the rest)."""

    call_id: str
    rule: str
    profile: str
    caller: dict[str, Any] = field(default_factory=dict)
    called: dict[str, Any] = field(default_factory=dict)
    # Wall-clock time after which the call cannot be active any more.
    active_until: float = 0.0
    # What sip-router does on the call (call_control.control_to_json), and when it was
    # accepted (wall clock), so a replica taking it over does the same and times it right.
    control: dict[str, Any] = field(default_factory=dict)
    accepted_at: float = 0.0
    # The API whose sideband drives the call (tickets written before GPT-Live: Realtime).
    api: CallApi = "realtime"


@dataclass(frozen=True, slots=True)
class CallMemory:
    """What a call remembers across owners."""

    answered: frozenset[str] = frozenset()
    greeted: bool = False
    # Function calls the owner was asking about; those not in `answered` lost their answer.
    asking: frozenset[str] = frozenset()
    # The call control the call switched to (call_control.control_to_json; a failed refer
    # rule whose on_error accepts with a profile), else None: the ticket's control.
    control: dict[str, Any] | None = None

    @property
    def lost(self) -> frozenset[str]:
        return self.asking - self.answered


class CallOwnership(Protocol):
    async def register(self, ticket: CallTicket, owner: str, ttl_s: float) -> bool:
        """Record the call as active and take its lease; False if someone else holds it."""
        ...

    async def renew_all(self, call_ids: Sequence[str], owner: str, ttl_s: float) -> set[str]:
        """Extend `owner`'s leases of `call_ids` at once; returns those it no longer holds."""
        ...

    async def release(self, call_id: str, owner: str) -> None:
        """Give the lease up (hand-over); the call stays active for another replica."""
        ...

    async def finish(self, call_id: str, owner: str) -> None:
        """The call is over: forget it and its memory."""
        ...

    async def take_over(
        self, owner: str, ttl_s: float, now: float
    ) -> list[tuple[CallTicket, CallMemory]]:
        """Take the lease of every active call that has no owner; with its memory."""
        ...

    async def record_answered(self, call_id: str, function_call_id: str) -> None: ...

    async def record_asking(self, call_id: str, function_call_id: str) -> None: ...

    async def mark_greeted(self, call_id: str) -> None: ...

    async def record_control(self, call_id: str, control: dict[str, Any]) -> None: ...

    async def memory(self, call_id: str) -> CallMemory: ...


# --- in process memory -----------------------------------------------------------------------


@dataclass(slots=True)
class _MemoryCall:
    ticket: CallTicket
    owner: str | None = None
    lease_until: float = 0.0
    answered: set[str] = field(default_factory=set)
    asking: set[str] = field(default_factory=set)
    greeted: bool = False
    control: dict[str, Any] | None = None

    def memory(self) -> CallMemory:
        return CallMemory(
            frozenset(self.answered), self.greeted, frozenset(self.asking), self.control
        )


class MemoryCallOwnership:
    """Leases in this process (one replica); `clock` is monotonic seconds for the leases."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[str, _MemoryCall] = {}

    def _holder(self, call: _MemoryCall) -> str | None:
        return call.owner if call.owner is not None and call.lease_until > self._clock() else None

    async def register(self, ticket: CallTicket, owner: str, ttl_s: float) -> bool:
        call = self._calls.setdefault(ticket.call_id, _MemoryCall(ticket))
        if self._holder(call) not in (None, owner):
            return False
        call.owner, call.lease_until = owner, self._clock() + ttl_s
        return True

    async def renew_all(self, call_ids: Sequence[str], owner: str, ttl_s: float) -> set[str]:
        lost: set[str] = set()
        for call_id in call_ids:
            call = self._calls.get(call_id)
            if call is None or self._holder(call) != owner:
                lost.add(call_id)
            else:
                call.lease_until = self._clock() + ttl_s
        return lost

    async def release(self, call_id: str, owner: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.owner == owner:
            call.owner = None

    async def finish(self, call_id: str, owner: str) -> None:
        call = self._calls.get(call_id)
        if call is not None and self._holder(call) in (None, owner):
            del self._calls[call_id]

    async def take_over(
        self, owner: str, ttl_s: float, now: float
    ) -> list[tuple[CallTicket, CallMemory]]:
        taken: list[tuple[CallTicket, CallMemory]] = []
        for call_id, call in list(self._calls.items()):
            if call.ticket.active_until <= now:
                del self._calls[call_id]
            elif self._holder(call) is None and len(taken) < MAX_TAKEOVERS_PER_SCAN:
                call.owner, call.lease_until = owner, self._clock() + ttl_s
                taken.append((call.ticket, call.memory()))
        return taken

    async def record_answered(self, call_id: str, function_call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            call.answered.add(function_call_id)

    async def record_asking(self, call_id: str, function_call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            call.asking.add(function_call_id)

    async def mark_greeted(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            call.greeted = True

    async def record_control(self, call_id: str, control: dict[str, Any]) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            call.control = control

    async def memory(self, call_id: str) -> CallMemory:
        call = self._calls.get(call_id)
        if call is None:
            return CallMemory()
        return call.memory()


# --- in Redis --------------------------------------------------------------------------------

# KEYS: owner. ARGV: owner, ttl ms. 1 if `owner` holds the lease now.
_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: the owner keys of many calls. ARGV: owner, ttl ms. The positions (1-based) of the
# keys `owner` no longer holds.
_RENEW_ALL = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"""
# Leases renewed by one script call: one round trip up to this many calls, and Redis
# busy for well under a millisecond each time.
RENEW_BATCH = 1000
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: owner, ticket, answered, greeted, asking, control, active set. ARGV: owner, call_id.
_FINISH = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[7], ARGV[2])
return 1
"""
# KEYS: owner, ticket, answered, greeted, asking, control. ARGV: owner, ttl ms.
# Returns nil when the call has an owner or no ticket, else
# {ticket, greeted, control or "", number answered, answered..., asking...}.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local ticket = redis.call('GET', KEYS[2])
if not ticket then return nil end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local greeted = redis.call('EXISTS', KEYS[4])
local answered = redis.call('SMEMBERS', KEYS[3])
local asking = redis.call('SMEMBERS', KEYS[5])
local control = redis.call('GET', KEYS[6]) or ''
local result = {ticket, tostring(greeted), control, tostring(#answered)}
for _, id in ipairs(answered) do table.insert(result, id) end
for _, id in ipairs(asking) do table.insert(result, id) end
return result
"""


class RedisCallOwnership:
    """Leases in Redis, shared by every replica; keys expire when the call cannot be active."""

    def __init__(self, client: Redis, *, prefix: str = KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = prefix
        self._take_lease = client.register_script(_TAKE_LEASE)
        self._renew_all = client.register_script(_RENEW_ALL)
        self._release = client.register_script(_RELEASE)
        self._finish = client.register_script(_FINISH)
        self._take_over = client.register_script(_TAKE_OVER)

    def _keys(self, call_id: str) -> list[str]:
        p = self._prefix
        return [
            f"{p}owner:{call_id}",
            f"{p}ticket:{call_id}",
            f"{p}answered:{call_id}",
            f"{p}greeted:{call_id}",
            f"{p}asking:{call_id}",
            f"{p}control:{call_id}",
        ]

    def _active_key(self) -> str:
        return f"{self._prefix}active"

    async def register(self, ticket: CallTicket, owner: str, ttl_s: float) -> bool:
        owner_key, ticket_key, *_ = self._keys(ticket.call_id)
        keep_s = max(1, int(ticket.active_until - time.time()) + 1)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(ticket_key, json.dumps(asdict(ticket)), ex=keep_s)
            pipe.zadd(self._active_key(), {ticket.call_id: ticket.active_until})
            await pipe.execute()
        return bool(await self._take_lease(keys=[owner_key], args=[owner, _ms(ttl_s)]))

    async def renew_all(self, call_ids: Sequence[str], owner: str, ttl_s: float) -> set[str]:
        lost: set[str] = set()
        for start in range(0, len(call_ids), RENEW_BATCH):
            batch = call_ids[start : start + RENEW_BATCH]
            keys = [f"{self._prefix}owner:{call_id}" for call_id in batch]
            positions = await self._renew_all(keys=keys, args=[owner, _ms(ttl_s)])
            lost.update(batch[int(position) - 1] for position in positions)
        return lost

    async def release(self, call_id: str, owner: str) -> None:
        await self._release(keys=self._keys(call_id)[:1], args=[owner])

    async def finish(self, call_id: str, owner: str) -> None:
        await self._finish(keys=[*self._keys(call_id), self._active_key()], args=[owner, call_id])

    async def take_over(
        self, owner: str, ttl_s: float, now: float
    ) -> list[tuple[CallTicket, CallMemory]]:
        await self._redis.zremrangebyscore(self._active_key(), "-inf", now)
        call_ids = [_text(raw_id) for raw_id in await self._redis.zrange(self._active_key(), 0, -1)]
        taken: list[tuple[CallTicket, CallMemory]] = []
        for call_id in await self._unowned(call_ids):
            if len(taken) >= MAX_TAKEOVERS_PER_SCAN:
                break
            result = await self._take_over(keys=self._keys(call_id), args=[owner, _ms(ttl_s)])
            if not result:
                continue
            ticket_text, greeted, control_text, count, *ids = (_text(part) for part in result)
            answered, asking = ids[: int(count)], ids[int(count) :]
            try:
                ticket = CallTicket(**json.loads(ticket_text))
                control = json.loads(control_text) if control_text else None
            except (ValueError, TypeError):
                log.error(
                    "an unreadable call ticket was dropped", extra={"fields": {"call_id": call_id}}
                )
                await self.finish(call_id, owner)  # no replica could drive it
                continue
            memory = CallMemory(frozenset(answered), greeted == "1", frozenset(asking), control)
            taken.append((ticket, memory))
        return taken

    async def _unowned(self, call_ids: Sequence[str]) -> list[str]:
        """The calls among `call_ids` without an owner now, in one round trip per batch
        (every replica scans every active call every TAKEOVER_SCAN_S)."""
        unowned: list[str] = []
        for start in range(0, len(call_ids), RENEW_BATCH):
            batch = call_ids[start : start + RENEW_BATCH]
            holders = await self._redis.mget([self._keys(call_id)[0] for call_id in batch])
            unowned += [
                call_id for call_id, holder in zip(batch, holders, strict=True) if not holder
            ]
        return unowned

    async def record_answered(self, call_id: str, function_call_id: str) -> None:
        answered_key = self._keys(call_id)[2]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(answered_key, function_call_id)
            pipe.expire(answered_key, int(LEASE_TTL_S) + 2 * 3600)
            await pipe.execute()

    async def record_asking(self, call_id: str, function_call_id: str) -> None:
        asking_key = self._keys(call_id)[4]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(asking_key, function_call_id)
            pipe.expire(asking_key, int(LEASE_TTL_S) + 2 * 3600)
            await pipe.execute()

    async def mark_greeted(self, call_id: str) -> None:
        await self._redis.set(self._keys(call_id)[3], "1", ex=int(LEASE_TTL_S) + 2 * 3600)

    async def record_control(self, call_id: str, control: dict[str, Any]) -> None:
        await self._redis.set(
            self._keys(call_id)[5], json.dumps(control), ex=int(LEASE_TTL_S) + 2 * 3600
        )

    async def memory(self, call_id: str) -> CallMemory:
        _, _, answered_key, greeted_key, asking_key, control_key = self._keys(call_id)
        answered = await self._redis.smembers(answered_key)
        greeted = await self._redis.exists(greeted_key)
        asking = await self._redis.smembers(asking_key)
        control = await self._redis.get(control_key)
        return CallMemory(
            frozenset(_text(a) for a in answered),
            bool(greeted),
            frozenset(_text(a) for a in asking),
            json.loads(control) if control is not None else None,
        )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- driving calls while owning them ---------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Lease:
    call_id: str
    task: asyncio.Task[Any]
    renewed_at: float
    lost: bool = False


class LeaseKeeper:
    """Drives this replica's calls while it holds their leases: one renewal loop for all.

    Every `renew_every_s` the loop renews every lease held in one batched round trip
    (`renew_all`); a call whose lease is lost, or could not be renewed for as long as a
    lease lasts, has its driver stopped. The loop runs only while a lease is held. A call
    costs no task of its own: its driver runs in the caller's task, which the loop cancels
    when the lease is lost.
    """

    def __init__(
        self,
        ownership: CallOwnership,
        owner: str,
        *,
        ttl_s: float = LEASE_TTL_S,
        renew_every_s: float = RENEW_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ownership = ownership
        self._owner = owner
        self._ttl_s = ttl_s
        self._every_s = renew_every_s
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._renewing: asyncio.Task[None] | None = None
        self._sleeping = False

    def __len__(self) -> int:
        return len(self._leases)

    async def drive(self, call_id: str, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run the call's driver while renewing its lease; stop it if the lease is lost.

        Returns the driver's result (and forgets the call), or None when the lease was lost.
        Cancelled (shutdown), it releases the lease so another replica takes over at once.
        """
        task = asyncio.current_task()
        assert task is not None
        lease = _Lease(call_id, task, self._clock())
        self._leases[call_id] = lease
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew_while_held())
        try:
            try:
                result = await run()
            finally:
                self._drop(lease)
        except asyncio.CancelledError:
            # Cancelled only by the loop (the lease was lost), not by shutdown or hand-over.
            if lease.lost and task.uncancel() == 0:
                log.warning("call_lease_lost", extra={"fields": {"call_id": call_id}})
                return None
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self._ownership.release(call_id, self._owner))
            raise
        if lease.lost:  # lost as the driver ended: another replica has the call now
            log.warning("call_lease_lost", extra={"fields": {"call_id": call_id}})
            return None
        with contextlib.suppress(RedisError, OSError):
            await self._ownership.finish(call_id, self._owner)
        return result

    def _drop(self, lease: _Lease) -> None:
        if self._leases.get(lease.call_id) is lease:
            del self._leases[lease.call_id]
        if not self._leases and self._sleeping and self._renewing is not None:
            # Nothing left to renew: the loop ends now rather than after its sleep (never
            # inside a Redis command, which a cancel could leave without an answer). A call
            # driven before the cancelled loop has ended starts a loop of its own.
            self._renewing.cancel()
            self._renewing = None

    def _lose(self, lease: _Lease) -> None:
        if self._leases.get(lease.call_id) is lease:
            lease.lost = True
            del self._leases[lease.call_id]
            lease.task.cancel()

    async def _renew_while_held(self) -> None:
        while self._leases:
            self._sleeping = True
            try:
                await asyncio.sleep(self._every_s)
            finally:
                self._sleeping = False
            try:
                await self.renew_once()
            except Exception:  # the loop outlives any one round; leases time out if it fails
                log.exception("call lease renewal failed")

    async def renew_once(self) -> None:
        """Renew every lease held; stop the drivers of those lost."""
        leases = list(self._leases.values())
        if not leases:
            return
        sent_at = self._clock()
        try:
            lost = await self._ownership.renew_all(
                [lease.call_id for lease in leases], self._owner, self._ttl_s
            )
        except (RedisError, OSError):
            log.warning("call_leases_not_renewed", extra={"fields": {"calls": len(leases)}})
            for lease in leases:
                if self._clock() - lease.renewed_at >= self._ttl_s:
                    # Another replica may have taken the call over by now.
                    self._lose(lease)
            return
        for lease in leases:
            if lease.call_id in lost:
                self._lose(lease)
            else:
                lease.renewed_at = sent_at


async def take_over_orphans(
    ownership: CallOwnership,
    owner: str,
    on_taken: Callable[[CallTicket, CallMemory], bool],
    *,
    every_s: float = TAKEOVER_SCAN_S,
    ttl_s: float = LEASE_TTL_S,
    wall_clock: Callable[[], float] = time.time,
    stop: asyncio.Event | None = None,
) -> None:
    """Scan for active calls without an owner until `stop` is set (or until cancelled);
    `on_taken` starts each one, or answers False for a ticket no replica can drive, which
    is then forgotten (not taken over again by one replica after another). Stopped, it
    ends between scans, never inside one."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            for ticket, memory in await ownership.take_over(owner, ttl_s, wall_clock()):
                log.info("call_taken_over", extra={"fields": {"call_id": ticket.call_id}})
                if not on_taken(ticket, memory):
                    await ownership.finish(ticket.call_id, owner)
        except (RedisError, OSError):
            log.warning("could not look for calls to take over")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
