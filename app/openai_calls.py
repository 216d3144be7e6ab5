"""The client of OpenAI's call endpoints: accept, refer, reject, hangup, with deadline and retries.

One action runs under a total deadline, retries included, and sends its request at most
MAX_REQUESTS_PER_ACTION times. Retries happen on connection errors, 408, 429 and 5xx, and
after a request that may have reached OpenAI without an answer (the same request again, to
learn its fate), with full-jitter backoff and `Retry-After` honoured when it fits the
deadline. Connection attempts that failed before sending count towards
MAX_ATTEMPTS_PER_ACTION only.

A request that may have been applied without an answer makes the outcome `unknown`: the
caller must then not send a contradicting action. OpenAI's `decision_already_made` makes it
`duplicate`: the call was decided already (by an earlier copy of this request, or by
another handler).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from app.call_api import CALL_PATHS, CallApi

Verb = Literal["accept", "refer", "reject", "hangup"]
Outcome = Literal["ok", "gone", "duplicate", "failed", "unknown"]

# Requests that left for OpenAI (answered, or lost after sending), per action.
MAX_REQUESTS_PER_ACTION = 3
# All attempts per action, with those that failed to connect before sending anything.
MAX_ATTEMPTS_PER_ACTION = 10
ALREADY_DECIDED = "decision_already_made"

_RETRY_STATUSES = frozenset({408, 429})
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 1.0
# Errors raised before a single byte of the request can have been sent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """How one action ended.

    ok: 2xx. gone: 404, the call no longer exists. duplicate: OpenAI answered that the
    call was already decided. failed: no effect upstream (4xx, or retries exhausted
    without any request possibly applied). unknown: a request may have been applied but no
    answer came back. `sent` counts the requests that left for OpenAI.
    """

    outcome: Outcome
    status: int | None
    attempts: int
    detail: str
    sent: int = 0


class OpenAICallsClient:
    """Sends call actions through a shared `httpx.AsyncClient` (opened by the app's lifespan)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        deadline_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
        on_response: Callable[[Verb, int | None], None] | None = None,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._deadline_s = deadline_s
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._on_response = on_response

    async def perform(
        self,
        verb: Verb,
        call_id: str,
        body: Mapping[str, Any] | None,
        *,
        sent_before: bool = False,
        api: CallApi = "realtime",
    ) -> ActionResult:
        """Send one action, retrying inside the deadline; never raises for upstream trouble.

        `sent_before`: this exact request may already have been applied (sent by an earlier
        owner of the call), so no answer or a refusal leaves the outcome `unknown`. `api`
        picks the endpoints: Realtime calls or GPT-Live sessions (`call_id` is then the
        session id).
        """
        url = f"{self._base_url}{CALL_PATHS[api]}/{call_id}/{verb}"
        deadline = self._clock() + self._deadline_s
        attempts = sent = 0
        maybe_applied = sent_before
        last = "no attempt"
        status: int | None = None
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                last = f"deadline reached: {last}"
                break
            attempts += 1
            retry_after: float | None = None
            try:
                response = await self._http.post(
                    url,
                    json=dict(body) if body is not None else None,
                    headers=self._headers,
                    timeout=httpx.Timeout(remaining),
                )
            except (UnicodeError, TypeError, ValueError) as exc:
                # The body cannot be encoded: nothing was sent, and retrying cannot help.
                self._report(verb, None)
                return ActionResult(
                    "failed", None, attempts, f"unencodable body: {type(exc).__name__}", sent
                )
            except _NOT_SENT as exc:
                status, last = None, f"{type(exc).__name__} before the request was sent"
                self._report(verb, None)
            except httpx.HTTPError as exc:
                # A read timeout, a reset or a dropped connection after sending: OpenAI may
                # have carried the action out.
                sent += 1
                maybe_applied = True
                status, last = None, f"{type(exc).__name__} after the request was sent"
                self._report(verb, None)
            else:
                sent += 1
                status = response.status_code
                self._report(verb, status)
                if 200 <= status < 300:
                    return ActionResult("ok", status, attempts, "ok", sent)
                code = _error_code(response)
                detail = f"HTTP {status} {code}" if code else f"HTTP {status}"
                if code == ALREADY_DECIDED:
                    return ActionResult("duplicate", status, attempts, detail, sent)
                if status == 404:
                    return ActionResult("gone", status, attempts, detail, sent)
                if status not in _RETRY_STATUSES and status < 500:
                    return _failure(maybe_applied, status, attempts, detail, sent)
                last = f"HTTP {status}"
                retry_after = _retry_after_s(response.headers.get("retry-after"))
            if sent >= MAX_REQUESTS_PER_ACTION or attempts >= MAX_ATTEMPTS_PER_ACTION:
                last = f"gave up after {sent} requests in {attempts} attempts: {last}"
                break
            remaining = deadline - self._clock()
            pause = self._backoff(attempts) if retry_after is None else retry_after
            if pause >= remaining:
                last = f"deadline reached: {last}"
                break
            await self._sleep(pause)
        return _failure(maybe_applied, status, attempts, last, sent)

    def _report(self, verb: Verb, status: int | None) -> None:
        if self._on_response is not None:
            self._on_response(verb, status)

    def _backoff(self, attempts: int) -> float:
        return self._jitter(0.0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempts - 1)))


def _failure(
    maybe_applied: bool, status: int | None, attempts: int, detail: str, sent: int
) -> ActionResult:
    if maybe_applied:
        return ActionResult("unknown", status, attempts, f"may have been applied: {detail}", sent)
    return ActionResult("failed", status, attempts, detail, sent)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_code(response: httpx.Response) -> str:
    """OpenAI's error code or type, for decisions and logs ("" if none); never the whole body."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return ""
    if not isinstance(error, dict):
        return ""
    return str(error.get("code") or error.get("type") or "")[:64]
