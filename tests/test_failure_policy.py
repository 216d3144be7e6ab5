"""What the service does when the upstream or a template fails."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import pytest

from tests.conftest import DEFAULT_RULES, Service, ServiceFactory
from tests.fake_openai import Delay, Drop, Respond

CALLER = "+14155550123"
MAIN_LINE = "+14155550100"
DEADLINE_S = 0.5


def new_call_id() -> str:
    return "rtc_" + secrets.token_hex(16)


def upstream(service: Service, call_id: str) -> list[tuple[str, int | None]]:
    """(verb, status the fake answered) for each request about the call."""
    requests = service.fake.requests_for(call_id)
    assert [r.problems for r in requests if not r.valid] == []
    return [(r.verb, r.status) for r in requests]


def effective(service: Service, call_id: str) -> list[str]:
    """The verbs the fake answered with a 2xx: the actions that took effect."""
    return [v for v, s in upstream(service, call_id) if s is not None and 200 <= s < 300]


def rules_with(on_error: str | None = None, profile: str = "", default: str = "") -> str:
    text = DEFAULT_RULES
    if profile:
        # Replaces the desk profile's `instructions:` line.
        lines = text.splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if line.startswith("    instructions:"))
        lines[at] = f"    {profile}\n"
        text = "".join(lines)
    if default:
        text = text.replace("default: {accept: {profile: desk}}", default)
    if on_error is not None:
        text += f"on_error: {on_error}\n"
    return text


async def test_a_503_then_success_is_processed_with_one_effective_action(
    service_factory: ServiceFactory,
) -> None:
    async with service_factory(action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()
        service.fake.script(call_id, Respond(503))

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)

        assert sent.answer == {"status": "processed", "call_id": call_id, "action": "accept"}
        assert upstream(service, call_id) == [("accept", 503), ("accept", 200)]


@pytest.mark.parametrize(
    ("on_error", "verb", "body"),
    [
        pytest.param(None, "reject", {"status_code": 503}, id="default-reject-503"),
        pytest.param("{reject: {status_code: 486}}", "reject", {"status_code": 486}, id="reject"),
        pytest.param(
            '{refer: {target_uri: "tel:+14155550150", before_accept: true}}',
            "refer",
            {"target_uri": "tel:+14155550150"},
            id="refer",
        ),
    ],
)
async def test_5xx_until_the_deadline_runs_on_error(
    service_factory: ServiceFactory, on_error: str | None, verb: str, body: dict[str, object]
) -> None:
    rules = rules_with(on_error)
    async with service_factory(rules_text=rules, action_deadline_s=DEADLINE_S) as service:
        service.behaviours["accept"] = Respond(503)
        call_id = new_call_id()

        started = time.monotonic()
        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)
        elapsed = time.monotonic() - started

        assert sent.status_code == 200
        assert sent.answer == {"status": "on_error", "call_id": call_id, "action": verb}
        seen = upstream(service, call_id)
        accepts, fallback = seen[:-1], seen[-1]
        assert len(accepts) >= 2
        assert set(accepts) == {("accept", 503)}
        assert fallback == (verb, 200)
        assert service.fake.requests_for(call_id)[-1].body == body
        # The retries stayed inside the action's deadline.
        assert elapsed < DEADLINE_S + 1.0
        again = await service.deliver(sent.delivery)
        assert again.answer == {"status": "duplicate", "call_id": call_id, "action": verb}
        assert len(upstream(service, call_id)) == len(seen)


async def test_when_action_and_on_error_fail_the_delivery_is_answered_503_and_retried(
    service_factory: ServiceFactory,
) -> None:
    async with service_factory(action_deadline_s=DEADLINE_S) as service:
        service.behaviours.update(accept=Respond(503), reject=Respond(503))
        call_id = new_call_id()

        first = await service.send(CALLER, MAIN_LINE, call_id=call_id)

        assert first.status_code == 503
        assert first.answer["status"] == "failed"
        failed = upstream(service, call_id)
        assert effective(service, call_id) == []
        # on_error got its own deadline, with retries of its own.
        assert [v for v, _ in failed].count("reject") >= 2

        # The upstream recovers; OpenAI delivers the same webhook again.
        service.behaviours.clear()
        second = await service.deliver(first.delivery)
        third = await service.deliver(first.delivery)

        assert second.answer == {"status": "processed", "call_id": call_id, "action": "accept"}
        assert third.answer == {"status": "duplicate", "call_id": call_id, "action": "accept"}
        assert upstream(service, call_id)[len(failed) :] == [("accept", 200)]
        assert effective(service, call_id) == ["accept"]


async def test_a_slow_upstream_past_the_deadline_is_unknown_and_not_contradicted(
    service_factory: ServiceFactory,
) -> None:
    async with service_factory(action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()
        service.fake.script(call_id, Delay(DEADLINE_S * 10))

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)

        assert sent.status_code == 200
        assert sent.answer == {"status": "unknown", "call_id": call_id, "action": "accept"}
        assert service.fake.verbs_for(call_id) == ["accept"]
        # A redelivery must not try again either: the accept may have happened.
        again = await service.deliver(sent.delivery)
        assert again.answer["status"] == "duplicate"
        assert service.fake.verbs_for(call_id) == ["accept"]


async def test_an_upstream_that_always_drops_gets_three_identical_requests_per_call(
    service_factory: ServiceFactory,
) -> None:
    async with service_factory(action_deadline_s=5.0) as service:
        service.fake.default = Drop()
        call_ids = [new_call_id() for _ in range(20)]

        sent = await asyncio.gather(
            *(service.send(CALLER, MAIN_LINE, call_id=call_id) for call_id in call_ids)
        )
        again = await asyncio.gather(*(service.deliver(s.delivery) for s in sent))

        assert [s.status_code for s in sent] == [200] * 20
        assert [s.answer for s in sent] == [
            {"status": "unknown", "call_id": c, "action": "accept"} for c in call_ids
        ]
        assert [a.answer["status"] for a in again] == ["duplicate"] * 20
        # 3 requests per call (it was 11 to 17 before attempts were bounded), all the same.
        assert len(service.fake.requests) == 60
        for call_id in call_ids:
            requests = service.fake.requests_for(call_id)
            assert [(r.verb, r.status) for r in requests] == [("accept", None)] * 3
            assert len({json.dumps(r.body, sort_keys=True) for r in requests}) == 1


@pytest.mark.parametrize("status", [400, 409])
async def test_decision_already_made_is_a_duplicate_without_on_error(
    service_factory: ServiceFactory, status: int
) -> None:
    async with service_factory(action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()
        service.fake.script(call_id, Respond(status, code="decision_already_made"))

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)
        again = await service.deliver(sent.delivery)

        assert sent.status_code == 200
        assert sent.answer == {"status": "duplicate", "call_id": call_id, "action": "accept"}
        assert again.answer == {"status": "duplicate", "call_id": call_id, "action": "accept"}
        assert upstream(service, call_id) == [("accept", status)]


async def test_404_is_gone_without_on_error(service_factory: ServiceFactory) -> None:
    async with service_factory(action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()
        service.fake.mark_gone(call_id)

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)

        assert sent.status_code == 200
        assert sent.answer == {"status": "gone", "call_id": call_id, "action": "accept"}
        assert upstream(service, call_id) == [("accept", 404)]


async def test_a_400_on_accept_runs_on_error_at_once(service_factory: ServiceFactory) -> None:
    async with service_factory(action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()
        service.fake.script(call_id, Respond(400, code="invalid_value"))

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)

        assert sent.answer == {"status": "on_error", "call_id": call_id, "action": "reject"}
        assert upstream(service, call_id) == [("accept", 400), ("reject", 200)]
        assert service.fake.requests_for(call_id)[-1].body == {"status_code": 503}


RENDER_ERRORS = [
    pytest.param(
        "instructions: \"Hi {{ headers['x-missing'].upper() }}\"", "", id="missing-header"
    ),
    pytest.param('instructions: "{{ headers.clear() }}"', "", id="sandbox-mutation"),
    pytest.param('instructions: "{{ headers.__class__.__mro__ }}"', "", id="sandbox-dunder"),
    pytest.param('instructions: "{{ 1 // 0 }}"', "", id="division-by-zero"),
    pytest.param(
        "instructions: Hi",
        "default: {refer: {target_uri: \"sip:{{ headers['x-ext'] }}@pbx.example.com\"}}",
        id="rendered-uri-invalid",
    ),
]


@pytest.mark.parametrize(("profile", "default"), RENDER_ERRORS)
async def test_a_template_error_at_render_time_applies_on_error(
    service_factory: ServiceFactory, profile: str, default: str
) -> None:
    rules = rules_with(profile=profile, default=default)
    async with service_factory(rules_text=rules, action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()

        sent = await service.send(
            CALLER, MAIN_LINE, call_id=call_id, extra_headers={"X-Ext": "two words"}
        )

        assert sent.status_code == 200
        assert sent.answer["action"] == "reject"
        assert upstream(service, call_id) == [("reject", 200)]
        assert service.fake.requests_for(call_id)[0].body == {"status_code": 503}


async def test_an_on_error_that_cannot_render_falls_back_to_reject_503(
    service_factory: ServiceFactory,
) -> None:
    rules = rules_with(
        on_error="{refer: {target_uri: \"tel:{{ headers['x-missing'] }}\"}}",
        profile="instructions: \"{{ headers['x-missing'] }}\"",
    )
    async with service_factory(rules_text=rules, action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)

        assert sent.answer["action"] == "reject"
        assert [r.body for r in service.fake.requests_for(call_id)] == [{"status_code": 503}]


async def test_a_template_error_is_answered_on_error(service_factory: ServiceFactory) -> None:
    rules = rules_with(profile="instructions: \"{{ headers['x-missing'] }}\"")
    async with service_factory(rules_text=rules, action_deadline_s=DEADLINE_S) as service:
        sent = await service.send(CALLER, MAIN_LINE)

        assert sent.answer["status"] == "on_error"


async def test_max_duration_hangs_up_after_a_successful_accept(
    service_factory: ServiceFactory,
) -> None:
    rules = rules_with(profile="instructions: Hi\n    max_duration_s: 0.2")
    async with service_factory(rules_text=rules, action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)

        assert sent.answer["status"] == "processed"
        assert service.fake.verbs_for(call_id) == ["accept"]
        for _ in range(100):
            if len(service.fake.requests_for(call_id)) > 1:
                break
            await asyncio.sleep(0.02)
        accept, hangup = service.fake.requests_for(call_id)
        assert (hangup.verb, hangup.body, hangup.status, hangup.valid) == (
            "hangup",
            None,
            200,
            True,
        )
        assert hangup.received_at - accept.received_at >= 0.2
        assert service.fake.call_state(call_id) == "ended"


async def test_max_duration_does_not_hang_up_a_call_that_was_not_accepted(
    service_factory: ServiceFactory,
) -> None:
    rules = rules_with(profile="instructions: Hi\n    max_duration_s: 0.1")
    async with service_factory(rules_text=rules, action_deadline_s=DEADLINE_S) as service:
        call_id = new_call_id()
        service.fake.mark_gone(call_id)

        sent = await service.send(CALLER, MAIN_LINE, call_id=call_id)
        await asyncio.sleep(0.3)

        assert sent.answer["status"] == "gone"
        assert service.fake.verbs_for(call_id) == ["accept"]
