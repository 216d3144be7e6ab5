"""`sip-router serve` as real processes against the fake OpenAI on loopback and real Redis:
replicas sharing Redis, SIGTERM with actions in flight, a Redis outage, a sender's retry."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.rules.loader import load_ruleset
from app.store.redis_backend import KEY_PREFIX
from app.webhook_signing import SignedDelivery, incoming_call_body, sign_delivery, signed_test_call
from tests.conftest import SharedRedis
from tests.fake_openai import AgentCallsFunction, AwaitClient, Delay, FakeOpenAI, Pause, Respond
from tests.function_service import function_services, json_answer
from tests.redis_server import REDIS_SERVER, RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-test"
CALLER, CALLED = "+14155550123", "+14155550100"
CI_REDIS_DB = 14
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

# Always accepts, so every call has exactly one expected action whatever the time of day.
RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Thank you for calling."}
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 503}}
"""


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any OPENAI_*/SIP_ROUTER_* variable, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SIP_ROUTER_"))}
    env.update(variables)
    return env


class ServiceProcess:
    """One `sip-router serve --workers N` process; its stdout and stderr go to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.env = env
        self.log_path = log_path
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_url = f"{self.url}/webhooks/openai"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "app.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Return once /healthz answers 200; fail with the logs if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer /healthz within {timeout_s} s:\n{self.logs()}")
            time.sleep(0.05)

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """The exit code; kills the process and fails if it outlives `timeout_s`."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"serve did not exit within {timeout_s} s:\n{self.logs()}")

    def stop(self) -> int | None:
        """SIGTERM and wait; None if it had not been started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
        return self.wait()

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (anything else, such as a traceback, is skipped)."""
        records = []
        for line in self.logs().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def webhook_records(self, call_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.log_records()
            if r.get("logger") == "sip_router.webhook" and r.get("call_id") == call_id
        ]


def _with_db(url: str, db: int) -> str:
    return urllib.parse.urlsplit(url)._replace(path=f"/{db}").geturl()


_own_db_numbers = itertools.count(1)


def _clear_db(url: str, own: bool) -> None:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        if own:
            client.flushdb()
        else:
            # CI's server is shared with other test modules: drop only the service's keys.
            keys = list(client.scan_iter(match=f"{KEY_PREFIX}*"))
            if keys:
                client.delete(*keys)


@pytest.fixture
def redis_db_url(shared_redis: SharedRedis) -> Iterator[str]:
    """A Redis database for one test: a fresh db number on our server, db 14 on CI's."""
    own = shared_redis.own
    db = next(_own_db_numbers) % 16 if own else CI_REDIS_DB
    target = _with_db(shared_redis.url, db)
    _clear_db(target, own)
    yield target
    _clear_db(target, own)


@pytest.fixture
def fake_url(fake: FakeOpenAI) -> Iterator[str]:
    with fake.serve_on_loopback() as url:
        yield url


StartServices = Callable[..., list[ServiceProcess]]


@pytest.fixture
def start_services(
    tmp_path: Path, fake_url: str, secret: str, rules_file: Path
) -> Iterator[StartServices]:
    """`start_services(count=1, workers=1, **variables)`: processes started in parallel, ready."""
    started: list[ServiceProcess] = []

    def start(count: int = 1, workers: int = 1, **variables: str) -> list[ServiceProcess]:
        env = clean_env(
            OPENAI_API_KEY=API_KEY,
            OPENAI_WEBHOOK_SECRET=secret,
            OPENAI_BASE_URL=fake_url,
            SIP_ROUTER_RULES=str(rules_file),
            # Pinned so that a stray .env cannot change what these tests rely on.
            SIP_ROUTER_DRY_RUN="false",
            SIP_ROUTER_REDIS_URL="",
            SIP_ROUTER_ADMIN_TOKEN="",
            SIP_ROUTER_LOG_FORMAT="json",
            SIP_ROUTER_LOG_LEVEL="info",
        )
        env.update(variables)
        batch = [
            ServiceProcess(env, tmp_path / f"serve-{len(started) + i}.log", workers)
            for i in range(count)
        ]
        for service in batch:
            started.append(service)
            service.start()
        for service in batch:
            service.wait_ready()
        return batch

    yield start
    for service in started:
        code = service.stop()
        # Shown by pytest when the test failed.
        print(f"--- serve on port {service.port} (exit {code}) ---\n{service.logs()}")


def now() -> int:
    return int(time.time())


def other_delivery_for(secret: str, delivery: SignedDelivery) -> SignedDelivery:
    """Another event (new webhook-id and event id) about the same call."""
    event = json.loads(delivery.body)
    headers = [(h["name"], h["value"]) for h in event["data"]["sip_headers"]]
    body = incoming_call_body(delivery.call_id, event["created_at"], headers)
    signed = sign_delivery(secret, body, timestamp=now())
    return SignedDelivery(signed, body, delivery.call_id, signed["webhook-id"])


async def post_all(
    services: Sequence[ServiceProcess], deliveries: Sequence[SignedDelivery]
) -> list[httpx.Response]:
    """Send every delivery at once, the i-th to services[i % len(services)]."""
    limits = httpx.Limits(max_connections=len(deliveries), max_keepalive_connections=0)
    clients = [httpx.AsyncClient(timeout=20, limits=limits) for _ in services]
    try:
        return await asyncio.gather(
            *(
                clients[i % len(services)].post(
                    services[i % len(services)].webhook_url, content=d.body, headers=d.headers
                )
                for i, d in enumerate(deliveries)
            )
        )
    finally:
        for client in clients:
            await client.aclose()


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def upstream(fake: FakeOpenAI, call_id: str) -> list[tuple[str, int | None]]:
    return [(r.verb, r.status) for r in fake.requests_for(call_id)]


def storm(secret: str, copies: int, others: int, seed: int) -> list[SignedDelivery]:
    """`copies` of one delivery and `others` other deliveries for the same call, shuffled."""
    first = signed_test_call(secret, CALLER, CALLED, now=now())
    deliveries = [first] * copies + [other_delivery_for(secret, first) for _ in range(others)]
    random.Random(seed).shuffle(deliveries)
    return deliveries


def check_one_action_per_call(
    fake: FakeOpenAI,
    services: Sequence[ServiceProcess],
    deliveries: Sequence[SignedDelivery],
    answers: Sequence[httpx.Response],
) -> None:
    by_call: dict[str, list[httpx.Response]] = {}
    for delivery, answer in zip(deliveries, answers, strict=True):
        by_call.setdefault(delivery.call_id, []).append(answer)
    for call_id, call_answers in by_call.items():
        codes = sorted({a.status_code for a in call_answers})
        assert set(codes) <= {200, 409}, (call_id, codes, [a.text for a in call_answers])
        statuses = [a.json()["status"] for a in call_answers]
        assert statuses.count("processed") == 1, (call_id, statuses)
        assert set(statuses) <= {"processed", "duplicate", "in_flight"}, statuses
        # The overlap this test is about did happen: some copies arrived mid-action.
        assert "in_flight" in statuses, statuses
        assert upstream(fake, call_id) == [("accept", 200)]
        processed_lines = [
            r for s in services for r in s.webhook_records(call_id) if r["outcome"] == "processed"
        ]
        assert len(processed_lines) == 1, processed_lines
    assert {r.call_id for r in fake.requests} == set(by_call)


@pytest.mark.redis
async def test_three_processes_sharing_redis_act_once_per_call(
    fake: FakeOpenAI, secret: str, start_services: StartServices, redis_db_url: str
) -> None:
    # A slow upstream keeps the first action in flight while the copies arrive.
    fake.default = Delay(1.0)
    services = start_services(3, SIP_ROUTER_REDIS_URL=redis_db_url)

    one_call = storm(secret, copies=50, others=10, seed=1)
    answers = await post_all(services, one_call)
    check_one_action_per_call(fake, services, one_call, answers)

    fake.reset()
    fake.default = Delay(1.0)
    several = [d for seed in range(4) for d in storm(secret, copies=50, others=10, seed=seed)]
    random.Random(99).shuffle(several)
    answers = await post_all(services, several)
    check_one_action_per_call(fake, services, several, answers)
    assert len({d.call_id for d in several}) == 4
    assert len(fake.requests) == 4


async def test_sigterm_finishes_every_action_in_flight(
    fake: FakeOpenAI, secret: str, start_services: StartServices
) -> None:
    deliveries = [signed_test_call(secret, CALLER, CALLED, now=now()) for _ in range(20)]
    for delivery in deliveries:
        fake.script(delivery.call_id, Delay(1.0))
    (service,) = start_services()

    answers = asyncio.ensure_future(post_all([service], deliveries))
    try:
        await wait_until(lambda: len(fake.requests) == 20, 10, "20 actions upstream")
        service.terminate()
        await wait_until(lambda: "Shutting down" in service.logs(), 5, "the shutdown to begin")
        # uvicorn closes its listening socket right after that line; leave it a moment.
        await asyncio.sleep(0.2)
        late = signed_test_call(secret, CALLER, CALLED, now=now())
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                late_answer: int | None = (
                    await client.post(service.webhook_url, content=late.body, headers=late.headers)
                ).status_code
        except httpx.ConnectError:
            late_answer = None
        assert late_answer in (None, 503)
        results = await asyncio.wait_for(answers, 15)
    finally:
        answers.cancel()

    assert [r.status_code for r in results] == [200] * 20
    assert [r.json() for r in results] == [
        {"status": "processed", "call_id": d.call_id, "action": "accept"} for d in deliveries
    ]
    code = await asyncio.to_thread(service.wait, 15)
    # The exit status itself is pinned by test_sigterm_exits_zero.
    assert code in (0, -signal.SIGTERM), service.logs()
    assert sorted(r.call_id for r in fake.requests) == sorted(d.call_id for d in deliveries)
    assert all((r.verb, r.status) == ("accept", 200) for r in fake.requests)
    assert not fake.requests_for(late.call_id)
    stopped = [r for r in service.log_records() if r.get("message") == "sip-router stopped"]
    assert len(stopped) == 1
    assert stopped[0]["in_flight_finished"] is True


def test_sigterm_exits_zero(start_services: StartServices) -> None:
    (service,) = start_services()
    service.terminate()
    assert service.wait() == 0


@pytest.mark.redis
async def test_redis_outage_answers_503_then_recovers(
    tmp_path: Path, fake: FakeOpenAI, secret: str, start_services: StartServices
) -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (this test stops and restarts its own)")
    server = RedisServer(tmp_path / "redis-outage", db=0)
    server.start()
    try:
        (service,) = start_services(SIP_ROUTER_REDIS_URL=server.url)
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
            # Concurrent calls leave several Redis connections in the service's pool.
            before = [signed_test_call(secret, CALLER, CALLED, now=now()) for _ in range(6)]
            answers = await post_all([service], before)
            assert [a.status_code for a in answers] == [200] * 6
            fake.reset()

            await asyncio.to_thread(server.stop)
            delivery = signed_test_call(secret, CALLER, CALLED, now=now())
            started = time.monotonic()
            answer = await client.post(
                "/webhooks/openai", content=delivery.body, headers=delivery.headers
            )
            elapsed = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert elapsed < 3
            assert fake.requests == []
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "redis" in ready.json()["reason"].lower()

            await asyncio.to_thread(server.start)
            # The first delivery after Redis is back succeeds: no ping or readyz first.
            again = sign_delivery(
                secret, delivery.body, webhook_id=delivery.webhook_id, timestamp=now()
            )
            answer = await client.post("/webhooks/openai", content=delivery.body, headers=again)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "status": "processed",
                "call_id": delivery.call_id,
                "action": "accept",
            }
            assert upstream(fake, delivery.call_id) == [("accept", 200)]
            assert len(fake.requests) == 1
            # Every pooled connection was closed by the restart; each recovers by itself.
            after = [signed_test_call(secret, CALLER, CALLED, now=now()) for _ in range(6)]
            answers = await post_all([service], after)
            assert [a.status_code for a in answers] == [200] * 6
            assert (await client.get("/readyz")).status_code == 200
    finally:
        server.stop()


async def test_redis_away_from_the_start_is_a_warning_and_its_503s_are_errors(
    fake: FakeOpenAI, secret: str, start_services: StartServices
) -> None:
    (service,) = start_services(SIP_ROUTER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    delivery = signed_test_call(secret, CALLER, CALLED, now=now())
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            service.webhook_url, content=delivery.body, headers=delivery.headers
        )
    assert answer.status_code == 503
    store_lines = [r for r in service.log_records() if r.get("logger") == "sip_router.store"]
    assert [(r["level"], r["error"]) for r in store_lines] == [
        ("warning", "redis is unavailable (ConnectionError)")
    ]
    [webhook] = service.webhook_records(delivery.call_id)
    assert (webhook["level"], webhook["http_status"]) == ("error", 503)
    assert fake.requests == []


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_retry_after_failed_first_attempt_acts_once(
    store: str,
    request: pytest.FixtureRequest,
    fake: FakeOpenAI,
    secret: str,
    start_services: StartServices,
) -> None:
    variables = {"SIP_ROUTER_ACTION_DEADLINE_S": "0.5"}
    if store == "redis":
        variables["SIP_ROUTER_REDIS_URL"] = request.getfixturevalue("redis_db_url")
    (service,) = start_services(**variables)
    delivery = signed_test_call(secret, CALLER, CALLED, now=now())

    # Every attempt of the action and of on_error fails for the whole first delivery.
    fake.default = Respond(503)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        first = await client.post(
            "/webhooks/openai", content=delivery.body, headers=delivery.headers
        )
        assert first.status_code == 503, first.text
        failed = upstream(fake, delivery.call_id)
        assert failed[0] == ("accept", 503)
        assert ("reject", 503) in failed
        assert {status for _, status in failed} == {503}

        fake.default = Respond()
        retry_headers = sign_delivery(
            secret, delivery.body, webhook_id=delivery.webhook_id, timestamp=now() + 1
        )
        retry = await client.post("/webhooks/openai", content=delivery.body, headers=retry_headers)
        assert retry.status_code == 200, retry.text
        assert retry.json() == {
            "status": "processed",
            "call_id": delivery.call_id,
            "action": "accept",
        }

        # A further redelivery is a duplicate, with no new upstream request.
        third = await client.post(
            "/webhooks/openai",
            content=delivery.body,
            headers=sign_delivery(
                secret, delivery.body, webhook_id=delivery.webhook_id, timestamp=now() + 2
            ),
        )
        assert third.status_code == 200
        assert third.json()["status"] == "duplicate"

    assert upstream(fake, delivery.call_id) == [*failed, ("accept", 200)]
    successful = [r for r in fake.requests_for(delivery.call_id) if r.status == 200]
    assert len(successful) == 1


def ruleset_info(text: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sip_router_ruleset_info"
    ]


@pytest.mark.redis
async def test_workers_metrics_show_only_the_version_in_service_after_a_reload(
    start_services: StartServices, rules_file: Path, redis_db_url: str
) -> None:
    first = load_ruleset(rules_file).version
    (service,) = start_services(workers=2, SIP_ROUTER_REDIS_URL=redis_db_url)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        # Each request reaches one worker; both read every worker's files.
        for _ in range(4):
            text = (await client.get("/metrics")).text
            assert ruleset_info(text) == [({"version": first}, 1.0)], text

        # Every worker's file watcher reloads the changed rules.
        rules_file.write_text(RULES.replace("Thank you", "Thanks"), encoding="utf-8")
        second = load_ruleset(rules_file).version
        assert second != first

        async def reloaded() -> bool:
            answers = [(await client.get("/metrics")).text for _ in range(4)]
            return all(second in text and f'"{first}"' not in text for text in answers)

        deadline = time.monotonic() + 20
        while not await reloaded():
            assert time.monotonic() < deadline, (await client.get("/metrics")).text
            await asyncio.sleep(0.2)
        text = (await client.get("/metrics")).text
    assert ruleset_info(text) == [({"version": second}, 1.0)], text


# -- staying with the call across replicas -------------------------------

CALL_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk:
    model: gpt-realtime
    instructions: "You answer the phone for Lakeside Clinic."
    greeting: "Lakeside Clinic, how can I help?"
    end_call: true
    functions: [lookup_appointment]
functions:
  lookup_appointment:
    description: Find the caller's next appointment.
    parameters: {type: object, properties: {date_of_birth: {type: string}}}
    url: FUNCTION_URL
    timeout_s: 10
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 503}}
"""
LOST = {"error": "the answer was lost when the call moved; ask again if needed"}
TAKEOVER_WITHIN_S = 15.0


def function_outputs(fake: FakeOpenAI, call_id: str) -> list[tuple[str, Any]]:
    return [
        (e["item"]["call_id"], json.loads(e["item"]["output"]))
        for e in fake.client_events_for(call_id)
        if e["type"] == "conversation.item.create"
    ]


def attached(services: Sequence[ServiceProcess], call_id: str) -> list[ServiceProcess]:
    """The replicas that started driving the call."""
    return [
        s
        for s in services
        if any(
            r.get("message") == "call_attached" and r.get("call_id") == call_id
            for r in s.log_records()
        )
    ]


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize("killed", ["while_asking", "after_answering"])
async def test_a_killed_owners_call_is_taken_over_and_its_function_answered_once(
    fake: FakeOpenAI,
    secret: str,
    start_services: StartServices,
    redis_db_url: str,
    tmp_path: Path,
    killed: str,
) -> None:
    delivery = signed_test_call(secret, CALLER, CALLED, now=now())
    call_id = delivery.call_id
    asking = killed == "while_asking"
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_1"),
            Pause(60),
        ],
        [
            # The agent's earlier function call shows up again on the new connection.
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_1"),
            AgentCallsFunction("end_call", {}, "call_2"),
        ],
    )
    async with function_services() as start_function:
        # While asking: the company's function answers only long after the owner died.
        function = await start_function(json_answer({"next": "Tuesday 9:00"}, 8 if asking else 0))
        rules = tmp_path / "call-rules.yaml"
        rules.write_text(CALL_RULES.replace("FUNCTION_URL", function.url), encoding="utf-8")
        services = start_services(3, SIP_ROUTER_REDIS_URL=redis_db_url, SIP_ROUTER_RULES=str(rules))
        owner, others = services[0], services[1:]
        answer = await post_all([owner], [delivery])
        assert answer[0].json()["action"] == "accept"
        if asking:
            await wait_until(lambda: bool(function.requests), 10, "the function request")
        else:
            await wait_until(
                lambda: bool(function_outputs(fake, call_id)), 10, "the function's answer"
            )
        await asyncio.sleep(0.2)  # what the owner knows reaches Redis
        assert owner.process is not None
        owner.process.kill()  # SIGKILL: nothing is released
        killed_at = time.monotonic()
        await wait_until(
            lambda: len(fake.sideband_attempts_for(call_id)) == 2,
            TAKEOVER_WITHIN_S,
            "another replica to take the call over",
        )
        took_s = time.monotonic() - killed_at
        await wait_until(lambda: fake.verbs_for(call_id) == ["accept", "hangup"], 10, "the hangup")
        await wait_until(lambda: len(attached(others, call_id)) == 1, 5, "the takeover's log line")

    first = LOST if asking else {"next": "Tuesday 9:00"}
    assert function_outputs(fake, call_id) == [
        ("call_1", first),
        ("call_2", {"status": "ending the call; say goodbye"}),
    ]
    assert len(function.requests) == 1
    greetings = [
        e for e in fake.client_events_for(call_id) if "instructions" in e.get("response", {})
    ]
    assert len(greetings) == 1
    assert took_s < TAKEOVER_WITHIN_S
    print(f"taken over {took_s:.1f} s after the owner was killed")


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize(("replicas", "workers"), [(3, 1), (2, 2)])
async def test_a_replica_stopped_with_sigterm_hands_its_call_to_another(
    fake: FakeOpenAI,
    secret: str,
    start_services: StartServices,
    redis_db_url: str,
    tmp_path: Path,
    replicas: int,
    workers: int,
) -> None:
    delivery = signed_test_call(secret, CALLER, CALLED, now=now())
    call_id = delivery.call_id
    fake.script_sideband(
        call_id,
        [AwaitClient("response.create"), Pause(60)],
        [AgentCallsFunction("end_call", {}, "call_bye")],
    )
    rules = tmp_path / "call-rules.yaml"
    rules.write_text(
        CALL_RULES.replace("FUNCTION_URL", "http://127.0.0.1:9/functions"), encoding="utf-8"
    )
    services = start_services(
        replicas, workers, SIP_ROUTER_REDIS_URL=redis_db_url, SIP_ROUTER_RULES=str(rules)
    )
    owner, others = services[0], services[1:]
    answer = await post_all([owner], [delivery])
    assert answer[0].json()["action"] == "accept"
    await wait_until(lambda: bool(fake.client_events_for(call_id)), 10, "the greeting")
    owner.terminate()
    # The lease is released at once: no waiting for it to run out (10 s).
    await wait_until(
        lambda: len(fake.sideband_attempts_for(call_id)) == 2, 8, "another replica to take over"
    )
    assert owner.wait() == 0
    await wait_until(lambda: fake.verbs_for(call_id) == ["accept", "hangup"], 10, "the hangup")
    await wait_until(lambda: len(attached(others, call_id)) == 1, 5, "the takeover's log line")
    # Taken over once, by a running replica (not by a worker of the stopping one).
    assert len(fake.sideband_attempts_for(call_id)) == 2
    greetings = [
        e for e in fake.client_events_for(call_id) if "instructions" in e.get("response", {})
    ]
    assert len(greetings) == 1


@pytest.mark.slow
@pytest.mark.redis
async def test_a_killed_workers_call_is_taken_over_on_the_same_machine(
    fake: FakeOpenAI,
    secret: str,
    start_services: StartServices,
    redis_db_url: str,
    tmp_path: Path,
) -> None:
    delivery = signed_test_call(secret, CALLER, CALLED, now=now())
    call_id = delivery.call_id
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_1"),
            Pause(60),
        ],
        [
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_1"),
            AgentCallsFunction("end_call", {}, "call_2"),
        ],
    )
    async with function_services() as start_function:
        function = await start_function(json_answer({"next": "Tuesday 9:00"}))
        rules = tmp_path / "call-rules.yaml"
        rules.write_text(CALL_RULES.replace("FUNCTION_URL", function.url), encoding="utf-8")
        (service,) = start_services(
            1, workers=2, SIP_ROUTER_REDIS_URL=redis_db_url, SIP_ROUTER_RULES=str(rules)
        )
        answer = await post_all([service], [delivery])
        assert answer[0].json()["action"] == "accept"
        await wait_until(lambda: bool(function_outputs(fake, call_id)), 10, "the function's answer")
        await asyncio.sleep(0.2)
        with redis.Redis.from_url(redis_db_url) as client:
            owner = client.get(f"{KEY_PREFIX}sideband:owner:{call_id}")
        assert owner is not None
        # The owner is "host:pid:token": kill that worker only.
        os.kill(int(owner.decode().split(":")[-2]), signal.SIGKILL)
        await wait_until(
            lambda: len(fake.sideband_attempts_for(call_id)) == 2,
            TAKEOVER_WITHIN_S,
            "another worker to take the call over",
        )
        await wait_until(lambda: fake.verbs_for(call_id) == ["accept", "hangup"], 10, "the hangup")
    assert function_outputs(fake, call_id) == [
        ("call_1", {"next": "Tuesday 9:00"}),
        ("call_2", {"status": "ending the call; say goodbye"}),
    ]
    assert len(function.requests) == 1


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample's value in a /metrics text, None when it is not there."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


async def test_serve_drives_its_calls_in_a_calls_process_and_serves_their_metrics(
    fake: FakeOpenAI, secret: str, start_services: StartServices, tmp_path: Path
) -> None:
    delivery = signed_test_call(secret, CALLER, CALLED, now=now())
    call_id = delivery.call_id
    fake.script_sideband(call_id, [AwaitClient("response.create"), Pause(60)])
    rules = tmp_path / "call-rules.yaml"
    rules.write_text(
        CALL_RULES.replace("FUNCTION_URL", "http://127.0.0.1:9/functions"), encoding="utf-8"
    )
    (service,) = start_services(SIP_ROUTER_RULES=str(rules))
    [ready] = [r for r in service.log_records() if r.get("message") == "calls process ready"]
    assert service.process is not None
    assert ready["pid"] != service.process.pid
    answer = await post_all([service], [delivery])
    assert answer[0].json()["action"] == "accept"
    await wait_until(lambda: bool(fake.client_events_for(call_id)), 10, "the greeting")

    # The calls process's metrics are served by the service's /metrics.
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    assert sample(text, "sip_router_active_calls", api="realtime") == 1.0, text
    connected = sample(
        text, "sip_router_sideband_connections_total", api="realtime", outcome="connected"
    )
    assert connected == 1.0, text
    assert (
        sample(text, "sip_router_decisions_total", rule="default", action="accept", profile="desk")
        == 1.0
    )

    assert service.stop() == 0
    [stopped] = [r for r in service.log_records() if r.get("message") == "sip-router stopped"]
    assert stopped["calls_handed_over"] == 1
    with pytest.raises(ProcessLookupError):
        os.kill(ready["pid"], 0)
