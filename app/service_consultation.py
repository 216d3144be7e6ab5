"""Asking your own services for a decision (`consult`): the HTTP side.

The rule engine stays pure: `Ruleset.evaluate` stops at a `consult` rule, this module
posts the call to the service, and `Ruleset.resume` follows the answer or the next rule.
Requests go through one shared httpx.AsyncClient of their own (built in create_app, so a
slow service cannot take connections from OpenAI's calls), are signed with Standard
Webhooks when SIP_ROUTER_OUTBOUND_SECRET is set, follow no redirects, read at most 64 KiB
of answer, and are bounded as a whole by the service's `timeout_s`: a slow service
delays only the calls that ask it, and only by that long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import httpx
from standardwebhooks import Webhook

from app.metrics import Metrics
from app.outbound_requests import read_at_most, signature_headers
from app.rules.call_context import CallContext
from app.rules.consultation import (
    MAX_ANSWER_BYTES,
    InvalidAnswer,
    ServiceReply,
    consult_request_body,
    read_answer,
)
from app.rules.ruleset import Consultation, Decision, Ruleset, ServiceTarget
from app.settings import UNSIGNED_SERVICES_WARNING

log = logging.getLogger("sip_router.consult")


class ServiceConsultant:
    """Decides calls whose rules consult services: the requests, their metrics and logs."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        secret: str | None,
        metrics: Metrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._signer = Webhook(secret) if secret else None
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._warned_unsigned = False

    async def decide(self, ruleset: Ruleset, ctx: CallContext) -> Decision:
        """The ruleset's decision for `ctx`, asking each service a `consult` rule names."""
        step = ruleset.evaluate(ctx)
        while isinstance(step, Consultation):
            target = ruleset.services[step.service]
            body = consult_request_body(ctx, step.rule)
            reply = await self.ask(step.service, target, body)
            step = ruleset.resume(ctx, step, reply)
        for note in step.consulted:
            self._metrics.consulted(note.service, note.outcome)
            if note.outcome not in ("answered", "continue"):
                log.warning(
                    "a consulted service did not decide; the next rule does",
                    extra={"fields": {"call_id": ctx.call_id, **note.as_record()}},
                )
        return step

    async def ask(self, name: str, target: ServiceTarget, body: dict[str, object]) -> ServiceReply:
        """POST `body` to the service; what came back, or why nothing usable did."""
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"content-type": "application/json", **self._signature(content)}
        try:
            async with asyncio.timeout(target.timeout_s):
                async with self._http.stream(
                    "POST", target.url, content=content, headers=headers
                ) as response:
                    if not response.is_success:
                        why = " (redirects are not followed)" if response.is_redirect else ""
                        return ServiceReply("error", reason=f"HTTP {response.status_code}{why}")
                    answer = await read_at_most(response, MAX_ANSWER_BYTES)
        except TimeoutError:
            return ServiceReply("timeout", reason=f"no answer within {target.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return ServiceReply("error", reason=_transport_problem(exc))
        if answer is None:
            return ServiceReply("error", reason="the answer is longer than 64 KiB")
        try:
            return ServiceReply("answered", read_answer(answer))
        except InvalidAnswer as exc:
            return ServiceReply("invalid", reason=str(exc))

    def warn_if_unsigned(self) -> None:
        """Say once per process that requests to services go out unsigned."""
        if self._signer is None and not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning(UNSIGNED_SERVICES_WARNING)

    def _signature(self, content: bytes) -> dict[str, str]:
        """Standard Webhooks headers, as OpenAI signs its own webhooks."""
        if self._signer is None:
            self.warn_if_unsigned()
            return {}
        return signature_headers(self._signer, content, self._wall_clock())


def _transport_problem(exc: httpx.HTTPError) -> str:
    # The kind of failure only: a URL can hold a token in its query.
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"request failed ({type(exc).__name__})"
