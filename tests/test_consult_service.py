"""`consult` against a real service on loopback: signed requests, answers followed, and a
slow, failing or nonsensical service that never strands a call."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ServiceFactory, new_webhook_secret
from tests.fake_consult_service import Answer, ConsultService, Hold
from tests.test_health_and_metrics import by_label, metrics_text

CRM_CALLER = "+14155550123"
OTHER_CALLER = "+12125550123"
CALLED = "+18005550100"
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}

RULES = """\
version: 1
defaults: {{timezone: UTC, region: US}}
profiles:
  desk: {{model: gpt-realtime, instructions: "Hello, this is the desk."}}
  vip:
    model: gpt-realtime
    instructions: "Welcome back, {{{{ vars.name }}}}."
    audio: {{output: {{voice: cedar}}}}
services:
  crm: {{url: "{url}/decide", timeout_s: {timeout_s}}}
rules:
  - name: ask-crm
    when: {{caller: "+1415*"}}
    consult: crm
  - name: after-crm
    when: {{caller: "+1415*"}}
    refer: {{target_uri: "sip:desk{{{{ vars.ext }}}}@pbx.example.com", before_accept: true}}
default: {{accept: {{profile: desk}}}}
"""

NEXT_RULE = ("refer", {"target_uri": "sip:desk@pbx.example.com"})


@pytest.fixture
def outbound_secret() -> str:
    return new_webhook_secret()


@pytest.fixture
def crm(outbound_secret: str) -> Iterator[tuple[ConsultService, str]]:
    service = ConsultService(outbound_secret)
    with service.serve_on_loopback() as url:
        yield service, url


def rules(url: str, timeout_s: float = 1.5) -> str:
    return RULES.format(url=url, timeout_s=timeout_s)


async def call_log(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/admin/calls?limit=10", headers=AUTH)
    calls: list[dict[str, Any]] = response.json()["calls"]
    return calls


def upstream(service: Any) -> list[tuple[str, dict[str, Any] | None]]:
    return [(r.verb, r.body) for r in service.fake.requests]


async def test_a_signed_request_is_answered_and_its_answer_decides(
    service_factory: ServiceFactory, crm: tuple[ConsultService, str], outbound_secret: str
) -> None:
    consult, url = crm
    consult.default = Answer({"accept": {"profile": "vip"}, "variables": {"name": "Ann"}})
    async with service_factory(rules_text=rules(url), outbound_secret=outbound_secret) as service:
        sent = await service.send(CRM_CALLER, CALLED, extra_headers={"X-Account": "A-17"})
        assert sent.answer["status"] == "processed"
        [(verb, body)] = upstream(service)
        assert verb == "accept"
        assert body is not None
        assert body["instructions"] == "Welcome back, Ann."
        assert body["audio"] == {"output": {"voice": "cedar"}}
        [entry] = await call_log(service.client)
        text = await metrics_text(service.client)

    [request] = consult.requests
    assert request.signature_valid is True
    assert request.path == "/decide"
    assert set(request.body) == {"call_id", "api", "caller", "called", "headers", "at", "rule"}
    assert request.body["call_id"] == sent.call_id
    assert request.body["api"] == "realtime"
    assert request.body["rule"] == "ask-crm"
    assert request.body["caller"] == {"e164": CRM_CALLER, "display_name": None, "country": "US"}
    assert request.body["called"]["e164"] == CALLED
    assert request.body["headers"]["x-account"] == "A-17"
    assert request.body["at"].endswith("Z")
    # The call log says what the service answered, and never a number in clear.
    assert entry["profile"] == "vip"
    assert entry["consulted"] == [
        {
            "service": "crm",
            "rule": "ask-crm",
            "outcome": "answered",
            "answer": {"action": "accept", "profile": "vip", "variables": ["name"]},
        }
    ]
    assert "5550123" not in str(entry)
    assert by_label(text, "sip_router_consult_total", "service", "outcome") == {
        ("crm", "answered"): 1
    }
    assert by_label(text, "sip_router_decisions_total", "rule", "action", "profile") == {
        ("ask-crm", "accept", "vip"): 1
    }


async def test_continue_lets_the_next_rule_decide_with_the_variables(
    service_factory: ServiceFactory, crm: tuple[ConsultService, str], outbound_secret: str
) -> None:
    consult, url = crm
    consult.default = Answer({"continue": True, "variables": {"ext": "7"}})
    async with service_factory(rules_text=rules(url), outbound_secret=outbound_secret) as service:
        await service.send(CRM_CALLER, CALLED)
        assert upstream(service) == [("refer", {"target_uri": "sip:desk7@pbx.example.com"})]
        text = await metrics_text(service.client)
    assert by_label(text, "sip_router_consult_total", "service", "outcome") == {
        ("crm", "continue"): 1
    }


@pytest.mark.parametrize(
    ("answer", "outcome", "reason"),
    [
        pytest.param(Answer(b"<html>busy</html>"), "invalid", "not JSON", id="not JSON"),
        pytest.param(Answer(["accept"]), "invalid", "not a JSON object", id="garbage"),
        pytest.param(
            Answer({"accept": {"profile": "gold"}}), "invalid", "unknown profile", id="profile"
        ),
        pytest.param(
            Answer({"reject": {"status_code": 99}}), "invalid", "status_code", id="status code"
        ),
        pytest.param(
            Answer({"refer": {"target_uri": "sip:"}}), "invalid", "target_uri", id="bad URI"
        ),
        pytest.param(
            Answer({"accept": {"profile": "vip", "overrides": {"audio": {"output": {"x": 1}}}}}),
            "invalid",
            "overrides.audio.output",
            id="bad overrides",
        ),
        pytest.param(
            Answer(b'{"continue": true, "pad": "' + b"x" * 70_000 + b'"}'),
            "error",
            "longer than 64 KiB",
            id="oversize",
        ),
        pytest.param(Answer({"continue": True}, status=500), "error", "HTTP 500", id="HTTP 500"),
        pytest.param(
            Answer({}, status=302, headers={"location": "https://elsewhere.example/"}),
            "error",
            "redirects are not followed",
            id="redirect",
        ),
    ],
)
async def test_an_answer_that_cannot_be_followed_lets_the_next_rule_decide(
    service_factory: ServiceFactory,
    crm: tuple[ConsultService, str],
    outbound_secret: str,
    answer: Answer,
    outcome: str,
    reason: str,
) -> None:
    consult, url = crm
    consult.default = answer
    async with service_factory(rules_text=rules(url), outbound_secret=outbound_secret) as service:
        sent = await service.send(CRM_CALLER, CALLED)
        assert sent.answer["status"] == "processed"
        assert upstream(service) == [NEXT_RULE]
        [entry] = await call_log(service.client)
        text = await metrics_text(service.client)
    assert len(consult.requests) == 1
    assert entry["rule"] == "after-crm"
    [note] = entry["consulted"]
    assert note["outcome"] == outcome
    assert reason in note["reason"]
    assert by_label(text, "sip_router_consult_total", "service", "outcome") == {("crm", outcome): 1}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_service_that_is_down_lets_the_next_rule_decide(
    service_factory: ServiceFactory,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with service_factory(rules_text=rules(url)) as service:
        assert (await service.send(CRM_CALLER, CALLED)).answer["status"] == "processed"
        assert upstream(service) == [NEXT_RULE]
        [entry] = await call_log(service.client)
    assert entry["consulted"][0]["outcome"] == "error"
    assert entry["consulted"][0]["reason"] == "could not connect"


async def test_a_slow_service_times_out_and_delays_no_other_call(
    service_factory: ServiceFactory, crm: tuple[ConsultService, str], outbound_secret: str
) -> None:
    consult, url = crm
    release = threading.Event()
    consult.default = Hold(release, then=Answer({"reject": {"status_code": 486}}))
    settings = {"rules_text": rules(url, timeout_s=2), "outbound_secret": outbound_secret}
    try:
        async with service_factory(**settings) as service:
            slow = asyncio.create_task(service.send(CRM_CALLER, CALLED))
            # The service holds the first call's request ...
            assert await asyncio.to_thread(consult.received.wait, 10)
            # ... while a call that consults nobody is decided and answered meanwhile.
            other = await service.send(OTHER_CALLER, CALLED)
            assert other.answer["status"] == "processed"
            assert not slow.done()
            # After timeout_s, the next rule decides the slow call; the late answer is unused.
            assert (await slow).answer["status"] == "processed"
            other_request, slow_request = upstream(service)
            assert other_request[0] == "accept"
            assert slow_request == NEXT_RULE
            entries = await call_log(service.client)
            text = await metrics_text(service.client)
    finally:
        release.set()
    assert entries[0]["consulted"] == [
        {
            "service": "crm",
            "rule": "ask-crm",
            "outcome": "timeout",
            "reason": "no answer within 2 s",
        }
    ]
    assert "consulted" not in entries[1]
    assert by_label(text, "sip_router_consult_total", "service", "outcome") == {
        ("crm", "timeout"): 1
    }


async def test_without_an_outbound_secret_requests_are_unsigned(
    service_factory: ServiceFactory,
    crm: tuple[ConsultService, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    consult, url = crm
    async with service_factory(rules_text=rules(url)) as service:
        await service.send(CRM_CALLER, CALLED)
        await service.send(CRM_CALLER, CALLED)
    assert [r.signature_valid for r in consult.requests] == [False, False]
    assert not any(name.startswith("webhook-") for name in consult.requests[0].headers)
    warnings = [r for r in caplog.records if "SIP_ROUTER_OUTBOUND_SECRET" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_request_signed_with_another_secret_does_not_verify(
    service_factory: ServiceFactory, crm: tuple[ConsultService, str]
) -> None:
    consult, url = crm
    async with service_factory(rules_text=rules(url), outbound_secret=new_webhook_secret()) as s:
        await s.send(CRM_CALLER, CALLED)
    [request] = consult.requests
    assert request.signature_valid is False
    assert set(request.headers) >= {"webhook-id", "webhook-timestamp", "webhook-signature"}
