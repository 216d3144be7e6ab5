"""/healthz, /readyz and /metrics of a whole app: readiness transitions and exact counters."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.app_factory import create_app
from app.metrics import MAX_BOUND_CHILDREN, Metrics
from app.rules.problems import RuleFileError
from app.settings import Settings
from app.store import RedisStore
from app.webhook_signing import incoming_call_body, sign_delivery, signed_test_call
from tests.conftest import (
    OPS_RULES,
    app_settings,
    client_for,
    deliver,
    new_webhook_secret,
    running,
    write_rules_file,
)
from tests.fake_openai import Delay, Drop, FakeOpenAI, Respond
from tests.redis_server import REDIS_SERVER, RedisServer, free_port

RULES = OPS_RULES
CALLER = "+14155550123"
BLOCKED = "+12025550199"
CLINIC = "+14155550100"


def make_settings(rules: Path, secret: str, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {"admin_token": "admin-token", "action_deadline_s": 1.0}
    return app_settings(rules, secret, **{**fields, **overrides})


def other_event(secret: str, now: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "object": "event",
            "id": "evt_ended",
            "type": "realtime.call.ended",
            "created_at": now,
            "data": {"call_id": "rtc_ended"},
        }
    ).encode()
    return body, sign_delivery(secret, body, timestamp=now)


def stale_call(secret: str, now: int, age_s: int) -> tuple[bytes, dict[str, str]]:
    """A call event created `age_s` ago, delivered (signed) now: a redelivery of an old call."""
    body = incoming_call_body(
        "rtc_stale",
        now - age_s,
        [("From", f"<sip:{CALLER}@t.example>"), ("To", f"<sip:{CLINIC}@t.example>")],
    )
    return body, sign_delivery(secret, body, timestamp=now)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` in an exposition text, keyed by its sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by_label(text: str, name: str, *labels: str) -> dict[Any, float]:
    """`samples` keyed by the values of `labels` (one label: the bare value)."""
    result: dict[Any, float] = {}
    for key, value in samples(text, name).items():
        as_dict = dict(key)
        assert set(as_dict) == set(labels), f"{name} has labels {sorted(as_dict)}"
        picked = tuple(as_dict[label] for label in labels)
        result[picked[0] if len(picked) == 1 else picked] = value
    return result


async def metrics_text(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# -- /healthz and /readyz ------------------------------------------------------------------


async def test_healthz_answers_ok_before_start_while_running_and_after_shutdown(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    async with client_for(app) as client:
        before = await client.get("/healthz")
        async with app.router.lifespan_context(app):
            during = await client.get("/healthz")
        after = await client.get("/healthz")
    for response in (before, during, after):
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_readyz_is_503_until_the_rules_are_loaded_then_200_with_the_version(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    async with client_for(app) as client:
        before = await client.get("/readyz")
        assert before.status_code == 503
        assert before.json() == {"status": "unavailable", "reason": "routing rules are not loaded"}
        async with app.router.lifespan_context(app):
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            version = app.state.services.rules.current.version
            assert ready.json() == {"status": "ok", "ruleset": version}


async def test_a_lifespan_with_invalid_rules_does_not_start_and_readyz_stays_503(
    tmp_path: Path, secret: str, fake: FakeOpenAI
) -> None:
    broken = tmp_path / "rules.yaml"
    broken.write_text("version: 1\nrules: [{name: x}]\n", encoding="utf-8")
    app = create_app(make_settings(broken, secret), transport=fake.mock_transport())
    with pytest.raises(RuleFileError, match=r"rules\.yaml"):
        async with app.router.lifespan_context(app):
            pass
    async with client_for(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reason"] == "routing rules are not loaded"


async def test_readyz_is_503_naming_redis_when_the_configured_redis_is_down(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    # Nothing listens on a port just released by the OS.
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(
        make_settings(rules_file, secret), transport=fake.mock_transport(), store=store
    )
    async with running(app) as client:
        response = await client.get("/readyz")
        healthz = await client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "redis" in body["reason"]
    assert healthz.status_code == 200


async def test_a_redis_that_is_down_is_a_warning_at_start_and_its_503s_are_errors(
    rules_file: Path, secret: str, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sip_router")
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(
        make_settings(rules_file, secret), transport=fake.mock_transport(), store=store
    )
    async with running(app) as client:
        started = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
        delivery = signed_test_call(secret, CALLER, CLINIC, now=int(time.time()))
        answer = await deliver(client, delivery)
    assert ("sip_router", logging.INFO, "sip-router started") in started
    warnings = [m for name, level, m in started if level == logging.WARNING]
    assert warnings == ["the shared store does not answer: webhooks are answered 503 until it does"]
    assert answer.status_code == 503
    [webhook] = [r for r in caplog.records if r.name == "sip_router.webhook"]
    assert webhook.levelno == logging.ERROR
    assert webhook.fields["http_status"] == 503  # type: ignore[attr-defined]


async def test_a_webhook_refused_while_shutting_down_stays_at_info(
    rules_file: Path, secret: str, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sip_router")
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    async with running(app) as client:
        await app.state.services.processor.drain(0)
        delivery = signed_test_call(secret, CALLER, CLINIC, now=int(time.time()))
        assert (await deliver(client, delivery)).status_code == 503
    [webhook] = [r for r in caplog.records if r.name == "sip_router.webhook"]
    assert webhook.levelno == logging.INFO


@pytest.mark.parametrize(
    ("base_url", "warned"),
    [
        ("http://fake-openai/v1", False),
        ("http://fake-openai", True),
        ("http://fake-openai/openai", True),
    ],
)
async def test_a_base_url_without_v1_is_one_warning_at_start(
    rules_file: Path,
    secret: str,
    fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    base_url: str,
    warned: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="sip_router")
    settings = make_settings(rules_file, secret, openai_base_url=base_url)
    app = create_app(settings, transport=fake.mock_transport())
    async with running(app):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if warned else 0), warnings
    if warned:
        assert warnings[0].startswith("OPENAI_BASE_URL path ")
        assert "/v1" in warnings[0]


@pytest.mark.redis
async def test_readyz_is_200_with_a_real_redis(
    rules_file: Path, secret: str, fake: FakeOpenAI, redis_url: str
) -> None:
    store = RedisStore.from_url(redis_url, prefix=f"test-readyz-{os.urandom(4).hex()}:")
    app = create_app(
        make_settings(rules_file, secret), transport=fake.mock_transport(), store=store
    )
    async with running(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.redis
async def test_readyz_follows_redis_going_down_and_coming_back(
    rules_file: Path, secret: str, fake: FakeOpenAI, tmp_path: Path
) -> None:
    if REDIS_SERVER is None:
        pytest.skip("needs a redis-server binary to stop and start")
    server = RedisServer(tmp_path)
    server.start()
    store = RedisStore.from_url(server.url)
    app = create_app(
        make_settings(rules_file, secret), transport=fake.mock_transport(), store=store
    )
    try:
        async with running(app) as client:
            assert (await client.get("/readyz")).status_code == 200
            server.stop()
            down = await client.get("/readyz")
            assert down.status_code == 503
            assert "redis" in down.json()["reason"]
            server.start()
            assert (await client.get("/readyz")).status_code == 200
    finally:
        server.stop()


async def test_readyz_says_shutting_down_once_draining_and_new_webhooks_get_503(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    async with running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        await app.state.services.processor.drain(0)
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "reason": "shutting down"}
        delivery = signed_test_call(secret, CALLER, CLINIC, now=int(time.time()))
        refused = await deliver(client, delivery)
        assert refused.status_code == 503
        assert (await client.get("/healthz")).status_code == 200
    assert fake.requests == []


async def test_readyz_says_shutting_down_after_the_lifespan_exits(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    async with client_for(app) as client:
        async with app.router.lifespan_context(app):
            assert (await client.get("/readyz")).status_code == 200
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reason"] == "shutting down"


async def test_draining_lets_the_in_flight_webhook_finish_while_readyz_is_503(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    processor = app.state.services.processor
    delivery = signed_test_call(secret, CALLER, CLINIC, now=int(time.time()))
    fake.script(delivery.call_id, Delay(0.3, Respond(200)))
    async with running(app) as client:
        in_flight = asyncio.create_task(deliver(client, delivery))
        while processor.in_flight == 0:
            await asyncio.sleep(0.005)
        drained = asyncio.create_task(processor.drain(5))
        await asyncio.sleep(0.05)
        assert not drained.done()
        assert (await client.get("/readyz")).json()["reason"] == "shutting down"
        answer = await in_flight
        assert await drained is True
    assert answer.status_code == 200
    assert answer.json()["status"] == "processed"
    assert fake.verbs_for(delivery.call_id) == ["accept"]


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_count_each_kind_of_delivery_exactly(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    now = int(time.time())
    accepted = signed_test_call(secret, CALLER, CLINIC, now=now)
    rejected = signed_test_call(secret, BLOCKED, CLINIC, now=now)
    forged = signed_test_call(new_webhook_secret(), CALLER, CLINIC, now=now)
    async with running(app) as client:
        assert (await deliver(client, accepted)).json()["status"] == "processed"
        assert (await deliver(client, rejected)).json()["action"] == "reject"
        assert (await deliver(client, accepted)).json()["status"] == "duplicate"
        assert (await deliver(client, forged)).status_code == 401
        body, headers = stale_call(secret, now, age_s=600)
        stale = await client.post("/webhooks/openai", content=body, headers=headers)
        assert stale.json()["status"] == "stale"
        body, headers = other_event(secret, now)
        ignored = await client.post("/webhooks/openai", content=body, headers=headers)
        assert ignored.json()["status"] == "ignored"
        text = await metrics_text(client)

    assert by_label(text, "sip_router_webhooks_total", "outcome") == {
        "processed": 2,
        "duplicate": 1,
        "bad_signature": 1,
        "stale": 1,
        "ignored": 1,
    }
    # An accept names its profile; other actions have an empty one.
    assert by_label(text, "sip_router_decisions_total", "rule", "action", "profile") == {
        ("default", "accept", "desk"): 1,
        ("blocked-callers", "reject", ""): 1,
    }
    assert by_label(text, "sip_router_upstream_requests_total", "verb", "status") == {
        ("accept", "200"): 1,
        ("reject", "200"): 1,
    }
    # Only the two deliveries that reached a decision and an upstream answer are timed.
    assert samples(text, "sip_router_decision_seconds_count") == {(): 2}
    assert samples(text, "sip_router_decision_seconds_sum")[()] > 0
    assert [r.verb for r in fake.requests] == ["accept", "reject"]


async def test_metrics_count_upstream_failures_by_status_and_on_error_decisions(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    now = int(time.time())
    refused = signed_test_call(secret, CALLER, CLINIC, now=now)
    dropped = signed_test_call(secret, CALLER, CLINIC, now=now)
    fake.script(refused.call_id, Respond(400, code="invalid_request"))
    fake.script(dropped.call_id, Drop(applied=True))
    async with running(app) as client:
        assert (await deliver(client, refused)).json()["status"] == "on_error"
        # A connection lost after sending is retried inside the deadline; the retry succeeds.
        assert (await deliver(client, dropped)).json()["status"] == "processed"
        text = await metrics_text(client)

    assert by_label(text, "sip_router_upstream_requests_total", "verb", "status") == {
        ("accept", "400"): 1,
        ("reject", "200"): 1,
        ("accept", "error"): 1,
        ("accept", "200"): 1,
    }
    # One decision per call, as the rules made it; the on_error reject is a fallback.
    assert by_label(text, "sip_router_decisions_total", "rule", "action", "profile") == {
        ("default", "accept", "desk"): 2,
    }
    assert by_label(text, "sip_router_fallbacks_total", "rule", "action") == {
        ("default", "reject"): 1,
    }
    assert by_label(text, "sip_router_webhooks_total", "outcome") == {
        "on_error": 1,
        "processed": 1,
    }


async def test_a_call_released_for_redelivery_is_decided_once_when_it_is_settled(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(
        make_settings(rules_file, secret, action_deadline_s=0.3), transport=fake.mock_transport()
    )
    delivery = signed_test_call(secret, CALLER, CLINIC, now=int(time.time()))
    async with running(app) as client:
        # The accept and on_error's reject both fail without effect: 503, OpenAI retries.
        fake.default = Respond(503)
        assert (await deliver(client, delivery)).status_code == 503
        fake.default = Respond(200)
        retried = sign_delivery(
            secret, delivery.body, webhook_id=delivery.webhook_id, timestamp=int(time.time())
        )
        again = await client.post("/webhooks/openai", content=delivery.body, headers=retried)
        assert again.json()["status"] == "processed"
        text = await metrics_text(client)

    assert by_label(text, "sip_router_webhooks_total", "outcome") == {"failed": 1, "processed": 1}
    assert by_label(text, "sip_router_decisions_total", "rule", "action", "profile") == {
        ("default", "accept", "desk"): 1
    }
    assert samples(text, "sip_router_fallbacks_total") == {}


async def test_an_action_that_cannot_be_rendered_is_the_rules_decision_and_a_fallback(
    tmp_path: Path, secret: str, fake: FakeOpenAI
) -> None:
    rules = RULES.replace(
        'instructions: "Answer politely."', "instructions: \"{{ headers['x-missing'] }}\""
    )
    app = create_app(
        make_settings(write_rules_file(tmp_path, rules), secret), transport=fake.mock_transport()
    )
    async with running(app) as client:
        delivery = signed_test_call(secret, CALLER, CLINIC, now=int(time.time()))
        assert (await deliver(client, delivery)).json()["status"] == "on_error"
        text = await metrics_text(client)

    assert [(r.verb, r.status) for r in fake.requests] == [("reject", 200)]
    assert by_label(text, "sip_router_decisions_total", "rule", "action", "profile") == {
        ("default", "accept", "desk"): 1
    }
    assert by_label(text, "sip_router_fallbacks_total", "rule", "action") == {
        ("default", "reject"): 1
    }


async def test_metrics_count_reloads_and_show_only_the_current_ruleset_version(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    auth = {"authorization": "Bearer admin-token"}
    async with running(app) as client:
        first = app.state.services.rules.current.version
        text = await metrics_text(client)
        assert by_label(text, "sip_router_ruleset_info", "version") == {first: 1}
        assert samples(text, "sip_router_rules_reloads_total") == {}

        rules_file.write_text(RULES.replace("603", "486"), encoding="utf-8")
        reloaded = await client.post("/admin/reload", headers=auth)
        assert reloaded.status_code == 200
        second = reloaded.json()["version"]
        assert second != first

        rules_file.write_text("version: 1\nrules: [{name: broken}]\n", encoding="utf-8")
        failed = await client.post("/admin/reload", headers=auth)
        assert failed.status_code == 422
        text = await metrics_text(client)

    assert by_label(text, "sip_router_rules_reloads_total", "result") == {"ok": 1, "error": 1}
    # The failed reload kept the second version in service; the first is gone.
    assert by_label(text, "sip_router_ruleset_info", "version") == {second: 1}


async def test_two_apps_in_one_process_keep_separate_counters(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    busy = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    idle = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    assert busy.state.services.metrics.registry is not idle.state.services.metrics.registry
    async with running(busy) as busy_client, running(idle) as idle_client:
        delivery = signed_test_call(secret, CALLER, CLINIC, now=int(time.time()))
        assert (await deliver(busy_client, delivery)).status_code == 200
        busy_text = await metrics_text(busy_client)
        idle_text = await metrics_text(idle_client)
    assert by_label(busy_text, "sip_router_webhooks_total", "outcome") == {"processed": 1}
    assert samples(idle_text, "sip_router_webhooks_total") == {}
    assert samples(idle_text, "sip_router_decision_seconds_count") == {(): 0}
    # Both still expose the same (loaded) ruleset.
    assert by_label(idle_text, "sip_router_ruleset_info", "version") == by_label(
        busy_text, "sip_router_ruleset_info", "version"
    )


# -- /metrics of several worker processes ----------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
# A worker: serves the versions given as arguments in turn, decides one call, then waits.
WORKER = """\
import sys
from app.metrics import Metrics
metrics = Metrics()
for version in sys.argv[1:]:
    metrics.set_ruleset(version)
metrics.decided("default", "accept", "desk")
print("ready", flush=True)
sys.stdin.readline()
"""
RENDER = "import sys\nfrom app.metrics import Metrics\nsys.stdout.buffer.write(Metrics().render())"


def worker_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def start_worker(directory: Path, *versions: str) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, *versions],
        cwd=REPO_ROOT,
        env=worker_env(directory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    assert worker.stdout.readline() == "ready\n"
    return worker


def test_workers_metrics_show_the_versions_live_workers_serve_without_a_pid(
    tmp_path: Path,
) -> None:
    files = tmp_path / "metrics"
    files.mkdir()
    # A worker that served `v-dead` and exited (crashed: nobody marked it dead).
    dead = start_worker(files, "v-dead")
    dead.communicate("\n", timeout=30)
    # A living worker that served `v-old`, then reloaded to `v-new`.
    alive = start_worker(files, "v-old", "v-new")
    try:
        rendered = subprocess.run(
            [sys.executable, "-c", RENDER],
            cwd=REPO_ROOT,
            env=worker_env(files),
            capture_output=True,
            check=True,
            timeout=30,
        )
    finally:
        alive.communicate("\n", timeout=30)
    text = rendered.stdout.decode()
    assert by_label(text, "sip_router_ruleset_info", "version") == {"v-new": 1}
    # Counters still add up every worker that ever ran, the dead one included.
    assert by_label(text, "sip_router_decisions_total", "rule", "action", "profile") == {
        ("default", "accept", "desk"): 2
    }


async def test_start_up_objects_leave_the_collectors_full_walks_while_the_service_runs(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    assert gc.get_freeze_count() == 0
    async with app.router.lifespan_context(app):
        ruleset = app.state.services.rules.current
        assert gc.get_freeze_count() > 0
        assert not any(tracked is ruleset for tracked in gc.get_objects())
    # Stopped, nothing stays frozen (a process may start the service again).
    assert gc.get_freeze_count() == 0


async def test_full_collections_come_after_fewer_middle_generation_collections_while_running(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = create_app(make_settings(rules_file, secret), transport=fake.mock_transport())
    before = gc.get_threshold()
    async with app.router.lifespan_context(app):
        young, middle, full = gc.get_threshold()
        assert (young, full) == (before[0], before[2])
        assert middle == 50  # young collections per middle-generation one (CPython: 10)
    # Stopped, the process's own settings are back.
    assert gc.get_threshold() == before


def test_counts_through_bound_children_add_up_and_the_kept_children_stay_bounded() -> None:
    metrics = Metrics()
    for status in range(100, 100 + 2 * MAX_BOUND_CHILDREN):
        metrics.upstream_answered("accept", status)
    metrics.upstream_answered("accept", 200)
    metrics.upstream_answered("accept", None)
    metrics.decided("default", "accept", "desk")
    metrics.decided("default", "accept", "desk")
    metrics.webhook_handled("processed")
    assert len(metrics._upstream) <= MAX_BOUND_CHILDREN

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    upstream = "sip_router_upstream_requests_total"
    assert value(upstream, verb="accept", status="200") == 2
    assert value(upstream, verb="accept", status="101") == 1
    assert value(upstream, verb="accept", status="error") == 1
    assert value("sip_router_decisions_total", rule="default", action="accept", profile="desk") == 2
    assert value("sip_router_webhooks_total", outcome="processed") == 1
