"""The call's driver over real loopback sockets, against the fake OpenAI's sideband.

Every client event the driver sends is checked by the fake against OpenAI's published
event schemas; the `fake` fixture fails the test if any did not validate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from app.calls.active_calls import ActiveCalls
from app.calls.call_control import CallControl, CompanyFunction, TransferTarget
from app.calls.function_requests import MAX_ANSWER_BYTES, CallFacts, FunctionRequester
from app.calls.sideband_connection import CallOutcome, SidebandDriver, sideband_url
from app.metrics import Metrics
from app.openai_calls import OpenAICallsClient
from app.webhooks_first import WebhooksFirst
from tests.fake_openai import (
    AgentCallsFunction,
    AwaitClient,
    DropConnection,
    Emit,
    FakeOpenAI,
    HangUp,
    Pause,
    Respond,
)
from tests.function_service import FunctionService, function_services, json_answer

SECRET = "whsec_" + "c2lwLXJvdXRlci1vdXRib3VuZC10ZXN0"
FRONT_DESK = "sip:frontdesk@pbx.clinic.example"


def fast_reconnects() -> Generator[float]:
    while True:
        yield 0.05


@pytest.fixture
async def function_service() -> AsyncIterator[Callable[..., Awaitable[FunctionService]]]:
    async with function_services() as start:
        yield start


# --- the fake OpenAI and the driver --------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.audio_s = 0.2
    with fake.serve_on_loopback() as base_url:
        fake.base_url = base_url  # type: ignore[attr-defined]
        yield fake
    assert fake.sideband_problems == []


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def control(**overrides: Any) -> CallControl:
    values: dict[str, Any] = {
        "greeting": "Thank you for calling Lakeside Clinic.",
        "transfer_targets": MappingProxyType(
            {"front_desk": TransferTarget(FRONT_DESK, "the front desk")}
        ),
        "end_call": True,
    }
    values.update(overrides)
    return CallControl(**values)


def with_function(url: str, timeout_s: float = 2.0) -> CallControl:
    function = CompanyFunction("lookup_appointment", url, timeout_s=timeout_s)
    return control(functions=MappingProxyType({function.name: function}))


async def accept(fake: FakeOpenAI, http: httpx.AsyncClient, call_id: str) -> OpenAICallsClient:
    calls = OpenAICallsClient(
        http,
        base_url=fake.base_url,
        api_key=fake.api_key,
        deadline_s=1.0,  # type: ignore[attr-defined]
    )
    assert (await calls.perform("accept", call_id, {"type": "realtime"})).outcome == "ok"
    return calls


async def drive(
    fake: FakeOpenAI,
    http: httpx.AsyncClient,
    call_id: str,
    call_control: CallControl,
    *,
    accepted: bool = True,
    api_key: str | None = None,
    metrics: Metrics | None = None,
    secret: str | None = SECRET,
    max_message_bytes: int = 1024 * 1024,
    webhooks: WebhooksFirst | None = None,
) -> CallOutcome:
    calls = (
        await accept(fake, http, call_id)
        if accepted
        else OpenAICallsClient(http, base_url=fake.base_url, api_key="sk-test", deadline_s=1.0)  # type: ignore[attr-defined]
    )
    driver = SidebandDriver(
        facts=CallFacts(
            call_id, {"e164": "+15550001111"}, {"e164": "+15550002222"}, "clinic", "desk"
        ),
        control=call_control,
        url=sideband_url(fake.base_url, call_id),  # type: ignore[attr-defined]
        api_key=api_key or fake.api_key,
        actions=calls,
        functions=FunctionRequester(http, secret=secret),
        metrics=metrics,
        reconnect_delays=fast_reconnects,
        max_message_bytes=max_message_bytes,
        webhooks=webhooks,
    )
    return await asyncio.wait_for(driver.run(), 15)


def types_sent(fake: FakeOpenAI, call_id: str) -> list[str]:
    return [event["type"] for event in fake.client_events_for(call_id)]


def function_outputs(fake: FakeOpenAI, call_id: str) -> list[tuple[str, str]]:
    return [
        (event["item"]["call_id"], event["item"]["output"])
        for event in fake.client_events_for(call_id)
        if event["type"] == "conversation.item.create"
    ]


# --- tests ---------------------------------------------------------------------------------


def test_the_sideband_url_follows_the_base_url() -> None:
    assert sideband_url("https://api.openai.com/v1", "rtc_1") == (
        "wss://api.openai.com/v1/realtime?call_id=rtc_1"
    )
    assert sideband_url("http://127.0.0.1:9001/v1/", "rtc_a b") == (
        "ws://127.0.0.1:9001/v1/realtime?call_id=rtc_a%20b"
    )


async def test_the_greeting_is_sent_first_and_the_caller_hanging_up_ends_the_call(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    fake.script_sideband("rtc_greet", [AwaitClient("response.create"), HangUp()])
    outcome = await drive(fake, http, "rtc_greet", control())
    [greeting] = fake.client_events_for("rtc_greet")
    assert greeting["type"] == "response.create"
    assert "Thank you for calling Lakeside Clinic." in greeting["response"]["instructions"]
    assert outcome.end_reason == "caller_hung_up"
    assert outcome.duration_s >= 0
    assert [a.authorization for a in fake.sideband_attempts_for("rtc_greet")] == ["Bearer sk-test"]


async def test_transfer_call_answers_speaks_waits_for_the_audio_then_refers_once(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    fake.script_sideband(
        "rtc_tr",
        [
            AwaitClient("response.create"),
            AgentCallsFunction("transfer_call", {"target": "front_desk"}, call_id="call_t"),
        ],
    )
    metrics = Metrics()
    outcome = await drive(fake, http, "rtc_tr", control(), metrics=metrics)
    assert types_sent(fake, "rtc_tr") == [
        "response.create",
        "conversation.item.create",
        "response.create",
    ]
    assert function_outputs(fake, "rtc_tr") == [
        ("call_t", '{"status":"transferring","target":"front_desk"}')
    ]
    assert fake.verbs_for("rtc_tr") == ["accept", "refer"]
    refer = fake.requests_for("rtc_tr")[1]
    assert refer.body == {"target_uri": FRONT_DESK}
    # The refer came only after the agent's words (audio_s long) had been played out.
    goodbye = [e for e in fake.client_events if e.call_id == "rtc_tr"][-1]
    assert refer.received_at - goodbye.received_at >= fake.audio_s
    assert outcome.end_reason == "transferred"
    assert outcome.transfer is not None
    assert (outcome.transfer.target_uri, outcome.transfer.status) == (FRONT_DESK, "ok")
    assert metrics.transfers.labels(outcome="ok")._value.get() == 1
    assert metrics.function_calls.labels(function="transfer_call", outcome="ok")._value.get() == 1


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (Respond(403, code="refer_not_allowed"), "failed"),
        (Respond(409, code="decision_already_made"), "unknown"),
    ],
)
async def test_a_refer_that_fails_tells_the_agent(
    fake: FakeOpenAI, http: httpx.AsyncClient, answer: Respond, status: str
) -> None:
    fake.script("rtc_rf", Respond(), answer)
    fake.script_sideband(
        "rtc_rf",
        [
            AwaitClient("response.create"),
            AgentCallsFunction("transfer_call", {"target": "front_desk"}, call_id="call_t"),
            AwaitClient("conversation.item.create", count=2),
            AwaitClient("response.create", count=3),
            HangUp(),
        ],
    )
    outcome = await drive(fake, http, "rtc_rf", control())
    outputs = function_outputs(fake, "rtc_rf")
    assert [call_id for call_id, _ in outputs] == ["call_t", "call_t"]
    assert "transfer to front_desk failed" in json.loads(outputs[1][1])["error"]
    assert types_sent(fake, "rtc_rf")[-1] == "response.create"
    assert fake.verbs_for("rtc_rf") == ["accept", "refer"]
    assert outcome.end_reason == "caller_hung_up"
    assert outcome.transfer is not None
    assert outcome.transfer.status == status


async def test_end_call_hangs_up_after_the_goodbye(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    fake.script_sideband(
        "rtc_end",
        [AwaitClient("response.create"), AgentCallsFunction("end_call", call_id="call_e")],
    )
    outcome = await drive(fake, http, "rtc_end", control())
    assert fake.verbs_for("rtc_end") == ["accept", "hangup"]
    goodbye = [e for e in fake.client_events if e.call_id == "rtc_end"][-1]
    assert goodbye.event is not None
    assert goodbye.event["type"] == "response.create"
    assert fake.requests_for("rtc_end")[1].received_at - goodbye.received_at >= fake.audio_s
    assert outcome.end_reason == "hangup"
    assert fake.call_state("rtc_end") == "ended"


async def test_a_function_is_answered_by_the_company_service(
    fake: FakeOpenAI, http: httpx.AsyncClient, function_service: Any
) -> None:
    service = await function_service(json_answer({"next": "Tuesday 9:00"}))
    fake.script_sideband(
        "rtc_fn",
        [
            AwaitClient("response.create"),
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_f"),
            AwaitClient("conversation.item.create"),
            AwaitClient("response.create", count=2),
            HangUp(),
        ],
    )
    metrics = Metrics()
    await drive(fake, http, "rtc_fn", with_function(service.url), metrics=metrics)
    assert function_outputs(fake, "rtc_fn") == [("call_f", '{"next": "Tuesday 9:00"}')]
    [(headers, body)] = service.requests
    assert json.loads(body) == {
        "call_id": "rtc_fn",
        "function": "lookup_appointment",
        "arguments": {"date_of_birth": "1980-02-03"},
        "caller": {"e164": "+15550001111"},
        "called": {"e164": "+15550002222"},
        "rule": "clinic",
        "profile": "desk",
    }
    # Signed like OpenAI's webhooks: any Standard Webhooks library verifies it.
    Webhook(SECRET).verify(body, headers)
    assert (
        metrics.function_calls.labels(function="lookup_appointment", outcome="ok")._value.get() == 1
    )


async def test_the_calls_work_waits_for_the_webhook_in_flight(
    fake: FakeOpenAI, http: httpx.AsyncClient, function_service: Any
) -> None:
    service = await function_service(json_answer({"next": "Tuesday 9:00"}))
    fake.script_sideband(
        "rtc_second",
        [
            AgentCallsFunction("lookup_appointment", {}, "call_f"),
            AwaitClient("conversation.item.create"),
            HangUp(),
        ],
    )
    webhooks = WebhooksFirst(max_defer_s=30.0)
    webhooks.started()  # a webhook is being decided
    driving = asyncio.ensure_future(
        drive(fake, http, "rtc_second", with_function(service.url), webhooks=webhooks)
    )
    while not fake.sideband_attempts_for("rtc_second"):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    # Attached, but neither the greeting nor the function's request goes before the webhook.
    assert fake.client_events_for("rtc_second") == []
    assert service.requests == []
    webhooks.finished()
    await driving
    assert types_sent(fake, "rtc_second")[0] == "response.create"  # the greeting
    assert function_outputs(fake, "rtc_second") == [("call_f", '{"next": "Tuesday 9:00"}')]
    assert len(service.requests) == 1


async def test_without_a_secret_function_requests_are_unsigned(
    fake: FakeOpenAI, http: httpx.AsyncClient, function_service: Any
) -> None:
    service = await function_service(json_answer({}))
    fake.script_sideband(
        "rtc_ns",
        [
            AgentCallsFunction("lookup_appointment", {}, "call_f"),
            AwaitClient("conversation.item.create"),
            HangUp(),
        ],
    )
    await drive(fake, http, "rtc_ns", with_function(service.url), secret=None)
    [(headers, _)] = service.requests
    assert "webhook-signature" not in headers


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((200, {"content-type": "application/json"}, b"{}", 2.0), "did not answer within 0.3 s"),
        ((500, {}, b"oops", 0.0), "answered HTTP 500"),
        ((302, {"location": "https://elsewhere.example/"}, b"", 0.0), "answered HTTP 302"),
        ((200, {"content-type": "application/json"}, b"{not json", 0.0), "not valid JSON"),
        ((200, {"content-type": "text/plain"}, b"\xff\xfe\x00", 0.0), "not UTF-8"),
        ((200, {}, b"x" * (MAX_ANSWER_BYTES + 1), 0.0), f"over {MAX_ANSWER_BYTES} bytes"),
    ],
    ids=["slow", "failing", "redirect", "garbage-json", "garbage-bytes", "too-big"],
)
async def test_a_function_that_does_not_answer_usefully_becomes_an_error_output(
    fake: FakeOpenAI,
    http: httpx.AsyncClient,
    function_service: Any,
    answer: tuple[int, dict[str, str], bytes, float],
    error: str,
) -> None:
    service = await function_service(lambda _request: answer)
    fake.script_sideband(
        "rtc_bad",
        [
            AgentCallsFunction("lookup_appointment", {}, "call_f"),
            AwaitClient("conversation.item.create"),
            HangUp(),
        ],
    )
    metrics = Metrics()
    await drive(fake, http, "rtc_bad", with_function(service.url, timeout_s=0.3), metrics=metrics)
    [(call_id, output)] = function_outputs(fake, "rtc_bad")
    assert call_id == "call_f"
    assert error in json.loads(output)["error"]
    assert (
        metrics.function_calls.labels(function="lookup_appointment", outcome="error")._value.get()
        == 1
    )


async def test_a_dropped_connection_reconnects_without_answering_twice(
    fake: FakeOpenAI, http: httpx.AsyncClient, function_service: Any
) -> None:
    # The answer takes longer than the connection lives: it is sent on the second one.
    service = await function_service(json_answer({"next": "Friday"}, delay=0.3))
    fake.script_sideband(
        "rtc_drop",
        [
            AwaitClient("response.create"),
            AgentCallsFunction("lookup_appointment", {}, "call_f"),
            DropConnection(),
        ],
        [
            # The same function call seen again after the reconnect.
            AgentCallsFunction("lookup_appointment", {}, "call_f"),
            AwaitClient("conversation.item.create"),
            Pause(0.3),
            HangUp(),
        ],
    )
    metrics = Metrics()
    outcome = await drive(fake, http, "rtc_drop", with_function(service.url), metrics=metrics)
    assert function_outputs(fake, "rtc_drop") == [("call_f", '{"next": "Friday"}')]
    assert len(service.requests) == 1
    assert [a.status for a in fake.sideband_attempts_for("rtc_drop")] == [101, 101]
    # Greeted once, not again on the second connection.
    greetings = [
        e for e in fake.client_events_for("rtc_drop") if "instructions" in e.get("response", {})
    ]
    assert len(greetings) == 1
    assert outcome.end_reason == "caller_hung_up"
    assert outcome.answered == frozenset({"call_f"})
    connections = metrics.sideband_connections
    assert connections.labels(api="realtime", outcome="dropped")._value.get() == 1
    assert connections.labels(api="realtime", outcome="connected")._value.get() == 2


async def test_malformed_and_unexpected_events_never_crash_the_call(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    fake.script_sideband(
        "rtc_mal",
        [
            Emit("{not json"),
            Emit("[1, 2, 3]"),
            Emit({"type": "something.new"}),
            Emit({"type": "response.done", "response": {"output": "nope"}}),
            Emit({"type": "output_audio_buffer.stopped"}),
            AgentCallsFunction("delete_records", {}, "call_unknown"),
            AgentCallsFunction("transfer_call", "{not json", "call_badargs"),
            AgentCallsFunction("end_call", {}, "call_end"),
        ],
    )
    outcome = await drive(fake, http, "rtc_mal", control())
    outputs = dict(function_outputs(fake, "rtc_mal"))
    assert json.loads(outputs["call_unknown"]) == {
        "error": "there is no function named 'delete_records'"
    }
    assert json.loads(outputs["call_badargs"]) == {"error": "the arguments are not a JSON object"}
    assert outcome.end_reason == "hangup"


async def test_a_message_over_the_size_cap_costs_the_connection_not_the_call(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    huge = {"type": "response.output_audio_transcript.done", "transcript": "x" * 8192}
    fake.script_sideband(
        "rtc_big",
        [AwaitClient("response.create"), Emit(huge), Pause(5)],
        [AgentCallsFunction("end_call", {}, "call_e")],
    )
    outcome = await drive(fake, http, "rtc_big", control(transcript=True), max_message_bytes=4096)
    assert [a.status for a in fake.sideband_attempts_for("rtc_big")] == [101, 101]
    assert outcome.transcript == ()
    assert outcome.end_reason == "hangup"


async def test_a_call_that_is_not_active_is_over(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    outcome = await drive(fake, http, "rtc_never", control(), accepted=False)
    assert outcome.end_reason == "caller_hung_up"
    assert [a.status for a in fake.sideband_attempts_for("rtc_never")] == [404]
    assert fake.client_events_for("rtc_never") == []


async def test_a_wrong_api_key_is_refused(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    outcome = await drive(fake, http, "rtc_key", control(), api_key="sk-wrong")
    assert outcome.end_reason == "sideband_refused_401"
    assert [a.status for a in fake.sideband_attempts_for("rtc_key")] == [401]


async def test_one_failing_call_does_not_touch_the_others_and_close_cancels_the_rest() -> None:
    ended: list[str] = []
    release = asyncio.Event()

    async def crashing() -> CallOutcome:
        raise RuntimeError("a bug in one call")

    async def waiting() -> CallOutcome:
        await release.wait()
        raise AssertionError("never released")

    async def finishing() -> CallOutcome:
        await asyncio.sleep(0)
        return CallOutcome("rtc_ok", "hangup", 0.0, 0.0, None, (), frozenset(), False)

    async def on_end(outcome: CallOutcome) -> None:
        ended.append(outcome.call_id)

    metrics = Metrics()
    async with ActiveCalls(metrics) as calls:
        assert calls.start("rtc_crash", crashing)
        assert calls.start("rtc_wait", waiting)
        assert calls.start("rtc_ok", finishing, on_end)
        assert not calls.start("rtc_wait", waiting)  # one owner per call
        await asyncio.sleep(0.05)
        assert "rtc_wait" in calls
        assert "rtc_crash" not in calls
        assert metrics.active_calls.labels(api="realtime")._value.get() == 1
    assert ended == ["rtc_ok"]
    assert len(calls) == 0
    assert not calls.start("rtc_late", finishing)
    assert metrics.active_calls.labels(api="realtime")._value.get() == 0
