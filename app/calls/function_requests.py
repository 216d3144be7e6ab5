"""Requests to the company's own functions: signed, capped, timed out.

The answer body (JSON or text) becomes the function call's output; everything that is not
a usable answer (timeout, non-2xx, a redirect, connection error, over 16 KiB, undecodable)
becomes an error text the agent can talk about. Never raises for the service's trouble.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from standardwebhooks import Webhook

from app.calls.call_control import CompanyFunction
from app.outbound_requests import read_at_most, signature_headers
from app.outbound_urls import check_outbound_url

# The function call output is at most 16 KiB.
MAX_ANSWER_BYTES = 16 * 1024
USER_AGENT = "sip-router"


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What a function request says about the call besides the function call itself."""

    call_id: str
    caller: Mapping[str, Any]
    called: Mapping[str, Any]
    rule: str
    profile: str


@dataclass(frozen=True, slots=True)
class FunctionResult:
    """`output` on success, else `error` (a short text for the agent and the log)."""

    output: str | None = None
    error: str | None = None


class FunctionRequester:
    """Posts function calls through one shared `httpx.AsyncClient` (redirects not followed)."""

    def __init__(self, http: httpx.AsyncClient, *, secret: str | None) -> None:
        self._http = http
        self._signer = Webhook(secret) if secret else None

    async def call(
        self, function: CompanyFunction, facts: CallFacts, arguments: Mapping[str, Any]
    ) -> FunctionResult:
        """Ask `function` and turn whatever happens into a FunctionResult."""
        problem, _ = check_outbound_url(function.url)
        if problem is not None:
            return FunctionResult(error=f"the function's URL is refused: {problem}")
        body = json.dumps(
            {
                "call_id": facts.call_id,
                "function": function.name,
                "arguments": dict(arguments),
                "caller": dict(facts.caller),
                "called": dict(facts.called),
                "rule": facts.rule,
                "profile": facts.profile,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        headers.update(self._signature(body))
        try:
            return await self._post(function, body, headers)
        except (httpx.TimeoutException, TimeoutError):
            return FunctionResult(
                error=f"the function did not answer within {function.timeout_s:g} s"
            )
        except httpx.HTTPError as exc:
            return FunctionResult(error=f"the function could not be reached ({type(exc).__name__})")

    async def _post(
        self, function: CompanyFunction, body: str, headers: dict[str, str]
    ) -> FunctionResult:
        request = self._http.build_request(
            "POST",
            function.url,
            content=body.encode(),
            headers=headers,
            timeout=httpx.Timeout(function.timeout_s),
        )
        # The whole exchange, body included, shares the function's timeout.
        async with asyncio.timeout(function.timeout_s):
            response = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                if not 200 <= response.status_code < 300:
                    return FunctionResult(
                        error=f"the function answered HTTP {response.status_code}"
                    )
                content = await read_at_most(response, MAX_ANSWER_BYTES)
            finally:
                await response.aclose()
        if content is None:
            return FunctionResult(error=f"the function's answer is over {MAX_ANSWER_BYTES} bytes")
        return _result_from(content, response.headers.get("content-type", ""))

    def _signature(self, body: str) -> dict[str, str]:
        if self._signer is None:
            return {}
        return signature_headers(self._signer, body.encode(), time.time())


def _result_from(content: bytes, content_type: str) -> FunctionResult:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return FunctionResult(error="the function's answer is not UTF-8 text")
    if "json" in content_type.lower():
        try:
            json.loads(text)
        except ValueError:
            return FunctionResult(error="the function's answer is not valid JSON")
    return FunctionResult(output=text)
