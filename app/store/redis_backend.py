"""Dedupe claims and the call log in Redis, shared by every replica and worker."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.store.call_log import CALL_LOG_SIZE, check_limit, later_life
from app.store.dedupe import (
    DONE_KEEP_S,
    SIP_CALL_KEEP_S,
    Claim,
    ClaimResult,
    check_claim_args,
    check_keep_s,
)
from app.store.errors import StoreUnavailable

KEY_PREFIX = "sip-router:"
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 1.0

# Keys, after the prefix: w:<webhook_id> and c:<call_id> hold the completed records ("1"
# for a webhook id, the outcome JSON for a call), wl:/cl: the leases (owner token), cd: the
# decision recorded for a call before its request was sent, until the call is finished;
# s:<sip call key> and sl: the phone call's record (outcome JSON, kept SIP_CALL_KEEP_S) and
# lease, when the delivery names its phone call (app.sip_call_key).

# KEYS: webhook done, call done, webhook lease, call lease, call decision, then optionally
# phone call done, phone call lease. ARGV: token, lease ms.
# Returns {result, outcome or decision}.
_CLAIM = """
local outcome = redis.call('GET', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, outcome} end
if outcome then return {2, outcome} end
local sip = #KEYS == 7
if sip then
  local phone_call = redis.call('GET', KEYS[6])
  if phone_call then return {4, phone_call} end
  if redis.call('EXISTS', KEYS[3], KEYS[4], KEYS[7]) > 0 then return {3} end
elseif redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 then
  return {3}
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
if sip then redis.call('SET', KEYS[7], ARGV[1], 'PX', ARGV[2]) end
return {0, redis.call('GET', KEYS[5])}
"""

# KEYS: call lease, call decision. ARGV: token, decision JSON, keep seconds.
_RECORD_DECISION = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS: webhook lease, call lease, call decision, webhook done, call done, then optionally
# phone call lease, phone call done. ARGV: token, "finish", "forget" or "keep" (the
# decision), then for "finish" the outcome JSON, its keep seconds and the phone call's.
# Returns how many leases were dropped.
_FINISH = """
local sip = #KEYS == 7
if ARGV[2] == 'finish' then
  redis.call('SET', KEYS[4], '1', 'EX', ARGV[4])
  redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[4])
  if sip then redis.call('SET', KEYS[7], ARGV[3], 'EX', ARGV[5]) end
  redis.call('DEL', KEYS[3])
elseif ARGV[2] == 'forget' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
local leases = {KEYS[1], KEYS[2]}
if sip then leases[3] = KEYS[6] end
local dropped = 0
for _, key in ipairs(leases) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    dropped = dropped + 1
  end
end
return dropped
"""

# KEYS: call log, record ids, records. ARGV: entry JSON, size, then optionally call id and
# record JSON. A record is dropped when the last of its id's places leaves the id list.
_APPEND = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ARGV == 4 then
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
  redis.call('LPUSH', KEYS[2], ARGV[3])
  while redis.call('LLEN', KEYS[2]) > tonumber(ARGV[2]) do
    local oldest = redis.call('RPOP', KEYS[2])
    if not redis.call('LPOS', KEYS[2], oldest) then redis.call('HDEL', KEYS[3], oldest) end
  end
end
return 1
"""

# KEYS: records. ARGV: call id, fields as a JSON object. Joins the fields to the call's
# record in one step while the record is kept (one trimmed meanwhile is not brought back).
# The fields' members are appended to the record's object text rather than decoded and
# encoded again in Lua (cjson would turn empty lists into objects); a member named again
# is read as its last value, as json.loads reads it.
_ADD_TO_RECORD = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
local members = string.sub(ARGV[2], 2)
if members == '}' then return 1 end
if record ~= '{}' then members = ',' .. members end
redis.call('HSET', KEYS[1], ARGV[1], string.sub(record, 1, -2) .. members)
return 1
"""

_CLAIM_RESULTS = {
    0: ClaimResult.ACQUIRED,
    1: ClaimResult.DUPLICATE_DONE,
    2: ClaimResult.CALL_DONE,
    3: ClaimResult.IN_FLIGHT,
    4: ClaimResult.SIP_CALL_DONE,
}


class RedisStore:
    """DedupeStore and CallLog over one Redis database; each claim is one Lua script.

    Every Redis failure (refused, timed out, read-only, out of memory) is raised as
    StoreUnavailable. Keys of one claim span several hash slots: not for Redis Cluster.
    """

    def __init__(self, client: Redis, *, prefix: str = KEY_PREFIX) -> None:
        """Use `client` (created with decode_responses=True); the store closes it."""
        self._redis = client
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._record_decision = client.register_script(_RECORD_DECISION)
        self._finish = client.register_script(_FINISH)
        self._append = client.register_script(_APPEND)
        self._add_to_record = client.register_script(_ADD_TO_RECORD)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = KEY_PREFIX) -> RedisStore:
        """Connect lazily to `url` with short timeouts, so a down Redis fails within ~2 s."""
        client = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
            # One immediate retry replaces a pooled connection that Redis closed meanwhile
            # (a restart). It must be redis.asyncio's Retry: the synchronous one only wraps
            # creating the coroutine, so an async command's error was never retried.
            retry=Retry(NoBackoff(), retries=1),
        )
        return cls(client, prefix=prefix)

    async def claim(
        self, webhook_id: str, call_id: str, lease_s: float, sip_call: str | None = None
    ) -> Claim:
        """Check the done records, then the leases, and lease every id if free."""
        check_claim_args(webhook_id, call_id, lease_s, sip_call)
        token = secrets.token_hex(16)
        keys = [
            *self._done_keys(webhook_id, call_id),
            *self._lease_keys(webhook_id, call_id),
            self._decision_key(call_id),
        ]
        if sip_call is not None:
            keys += self._sip_call_keys(sip_call)
        with _unavailable():
            reply = await self._claim(keys=keys, args=[token, math.ceil(lease_s * 1000)])
        result = _CLAIM_RESULTS[int(reply[0])]
        found = json.loads(reply[1]) if len(reply) > 1 and reply[1] is not None else None
        if result is ClaimResult.ACQUIRED:
            return Claim(
                result, webhook_id, call_id, token=token, decision=found, sip_call=sip_call
            )
        return Claim(result, webhook_id, call_id, outcome=found)

    async def record_decision(
        self, claim: Claim, decision: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the request about to be sent, if this claim still owns the call's lease."""
        token = claim.lease_token()
        check_keep_s(keep_s)
        text = json.dumps(dict(decision), separators=(",", ":"))
        keys = [
            self._lease_keys(claim.webhook_id, claim.call_id)[1],
            self._decision_key(claim.call_id),
        ]
        with _unavailable():
            recorded = await self._record_decision(keys=keys, args=[token, text, keep_s])
        return int(recorded) == 1

    async def finish(
        self, claim: Claim, outcome: Mapping[str, Any], keep_s: int = DONE_KEEP_S
    ) -> bool:
        """Record the outcome for the ids and drop the leases still owned."""
        token = claim.lease_token()
        check_keep_s(keep_s)
        text = json.dumps(dict(outcome), separators=(",", ":"))
        args = [token, "finish", text, keep_s, min(keep_s, SIP_CALL_KEEP_S)]
        return await self._end(claim, args)

    async def release(self, claim: Claim, *, keep_decision: bool = False) -> bool:
        """Drop the leases still owned by this claim (and its decision unless kept)."""
        return await self._end(claim, [claim.lease_token(), "keep" if keep_decision else "forget"])

    async def _end(self, claim: Claim, args: list[Any]) -> bool:
        keys = [
            *self._lease_keys(claim.webhook_id, claim.call_id),
            self._decision_key(claim.call_id),
            *self._done_keys(claim.webhook_id, claim.call_id),
        ]
        if claim.sip_call is not None:
            done, lease = self._sip_call_keys(claim.sip_call)
            keys += [lease, done]
        with _unavailable():
            dropped = await self._finish(keys=keys, args=args)
        return int(dropped) == (2 if claim.sip_call is None else 3)

    async def append(
        self, entry: Mapping[str, Any], record: Mapping[str, Any] | None = None
    ) -> None:
        """Add one call log entry (and its call's record) and trim to CALL_LOG_SIZE, in one
        script."""
        args: list[Any] = [json.dumps(dict(entry), separators=(",", ":")), CALL_LOG_SIZE]
        call_id = entry.get("call_id")
        if record is not None and isinstance(call_id, str):
            args += [call_id, json.dumps(dict(record), separators=(",", ":"))]
        keys = [self._calls_key(), self._record_ids_key(), self._records_key()]
        with _unavailable():
            await self._append(keys=keys, args=args)

    async def call_record(self, call_id: str) -> dict[str, Any] | None:
        """The side record of `call_id`, or None."""
        with _unavailable():
            text = await self._redis.hget(self._records_key(), call_id)
        return None if text is None else dict(json.loads(text))

    async def call_records(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` side records, one per call, newest first."""
        count = check_limit(limit)
        if count == 0:
            return []
        with _unavailable():
            ids = await self._redis.lrange(self._record_ids_key(), 0, CALL_LOG_SIZE - 1)
            unique = list(dict.fromkeys(ids))[:count]
            texts = await self._redis.hmget(self._records_key(), unique) if unique else []
        return [json.loads(text) for text in texts if text is not None]

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` call log entries, newest first."""
        count = check_limit(limit)
        if count == 0:
            return []
        with _unavailable():
            texts = await self._redis.lrange(self._calls_key(), 0, count - 1)
            entries = [json.loads(text) for text in texts]
            ids = [str(entry.get("call_id", "")) for entry in entries]
            records = await self._redis.hmget(self._records_key(), ids) if ids else []
        return [
            {**entry, **(later_life(json.loads(record)) if record else {})}
            for entry, record in zip(entries, records, strict=True)
        ]

    @property
    def prefix(self) -> str:
        """The prefix of this store's keys."""
        return self._prefix

    @property
    def client(self) -> Redis:
        """The Redis client, shared with what else lives in the same Redis (call ownership)."""
        return self._redis

    async def add_to_call(self, call_id: str, fields: Mapping[str, Any]) -> bool:
        """Join `fields` to the call's record (only while the record is kept)."""
        text = json.dumps(dict(fields), separators=(",", ":"))
        with _unavailable():
            added = await self._add_to_record(keys=[self._records_key()], args=[call_id, text])
        return bool(added)

    async def ping(self) -> None:
        """Return when Redis answers; StoreUnavailable otherwise (readiness)."""
        with _unavailable():
            await self._redis.ping()

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        await self._redis.aclose()

    def _lease_keys(self, webhook_id: str, call_id: str) -> list[str]:
        return [f"{self._prefix}wl:{webhook_id}", f"{self._prefix}cl:{call_id}"]

    def _done_keys(self, webhook_id: str, call_id: str) -> list[str]:
        return [f"{self._prefix}w:{webhook_id}", f"{self._prefix}c:{call_id}"]

    def _sip_call_keys(self, sip_call: str) -> list[str]:
        """The phone call's done record, then its lease."""
        return [f"{self._prefix}s:{sip_call}", f"{self._prefix}sl:{sip_call}"]

    def _decision_key(self, call_id: str) -> str:
        return f"{self._prefix}cd:{call_id}"

    def _calls_key(self) -> str:
        return f"{self._prefix}calls"

    def _record_ids_key(self) -> str:
        return f"{self._prefix}call-record-ids"

    def _records_key(self) -> str:
        return f"{self._prefix}call-records"


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        # The message stays generic (it reaches /readyz); the cause is chained for logs.
        raise StoreUnavailable(f"redis is unavailable ({type(exc).__name__})") from exc
