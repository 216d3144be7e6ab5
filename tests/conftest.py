"""Shared fixtures: settings, the fake OpenAI, the service driven in process over ASGI, Redis.

`service` yields a running app (lifespan entered) with an httpx client bound to it, the
fake behind the app's upstream client, and `send(caller, called)` to post a signed call.
Modules that build their own apps use `app_settings`, `build_app`, `running` and `deliver`.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.app_factory import create_app
from app.settings import Settings
from app.store import Store
from app.webhook_signing import SignedDelivery, signed_test_call
from tests.fake_openai import MOCK_BASE_URL, Behaviour, FakeOpenAI
from tests.redis_server import REDIS_SERVER, RedisServer

API_KEY = "sk-test"
ADMIN_TOKEN = "admin-test-token"
SERVICE_URL = "http://sip-router"
WEBHOOK_PATH = "/webhooks/openai"

# A small rule file with one rule per action; the accept's instructions are a template.
# The small rule file the operations tests (health, metrics, call log) share.
OPS_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Answer politely."}
lists:
  blocked: ["+12025550199"]
rules:
  - name: blocked-callers
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 503}}
"""

DEFAULT_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk:
    model: gpt-realtime
    instructions: "Caller {{ caller.e164 }} called {{ called.e164 }} on {{ call_id }}."
    audio: {output: {voice: marin}}
rules:
  - name: withheld
    when: {caller: anonymous}
    reject: {status_code: 433}
  - name: blocked
    when: {caller: "+12025550199"}
    reject: {status_code: 603}
  - name: transfer
    when: {called: "+14155550177"}
    refer: {target_uri: "sip:desk@pbx.example.com", before_accept: true}
default: {accept: {profile: desk}}
"""


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def write_rules_file(directory: Path, text: str) -> Path:
    """`directory`/rules.yaml holding `text`."""
    path = directory / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def app_settings(rules: Path, secret: str, /, **fields: Any) -> Settings:
    """Settings with no .env read, against the fake upstream; `fields` set any other field."""
    values: dict[str, Any] = {
        "openai_api_key": API_KEY,
        "openai_webhook_secret": secret,
        "openai_base_url": MOCK_BASE_URL,
        "rules": rules,
        **fields,
    }
    return Settings(_env_file=None, **values)


def build_app(settings: Settings, fake: FakeOpenAI, *, store: Store | None = None) -> FastAPI:
    """The app with the fake's MockTransport as its network and no rule-file watcher."""
    return create_app(settings, transport=fake.mock_transport(), store=store, watch_interval_s=None)


def client_for(app: FastAPI, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    """An httpx client that talks to `app` over ASGI (no lifespan of its own)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url=SERVICE_URL)


@asynccontextmanager
async def running(
    app: FastAPI, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """`app` with its lifespan entered, and a client bound to it."""
    async with (
        app.router.lifespan_context(app),
        client_for(app, raise_app_exceptions=raise_app_exceptions) as client,
    ):
        yield client


async def deliver(client: httpx.AsyncClient, delivery: SignedDelivery) -> httpx.Response:
    """Post a signed delivery to the webhook endpoint, whatever the answer."""
    return await client.post(WEBHOOK_PATH, content=delivery.body, headers=delivery.headers)


class VerbScriptedTransport(httpx.AsyncBaseTransport):
    """The fake's MockTransport, plus a standing answer per verb (`behaviours`).

    The fake scripts answers per call, not per verb; an "accept always fails, reject
    works" upstream is made by queueing the verb's answer just before each request.
    """

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self.behaviours: dict[str, Behaviour] = {}
        self._inner = fake.mock_transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call_id, _, verb = request.url.path.rpartition("/")
        behaviour = self.behaviours.get(verb)
        if behaviour is not None:
            self.fake.script(call_id.rpartition("/")[2], behaviour)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Sent:
    """One posted delivery and the service's answer."""

    delivery: SignedDelivery
    response: httpx.Response

    @property
    def call_id(self) -> str:
        return self.delivery.call_id

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def answer(self) -> dict[str, Any]:
        body: dict[str, Any] = self.response.json()
        return body


@dataclass
class Service:
    """A running app, its client, and the fake OpenAI behind it."""

    app: FastAPI
    client: httpx.AsyncClient
    fake: FakeOpenAI
    settings: Settings
    secret: str
    transport: VerbScriptedTransport
    sent: list[Sent] = field(default_factory=list)

    @property
    def behaviours(self) -> dict[str, Behaviour]:
        """Standing upstream answers per verb (e.g. `{"accept": Respond(503)}`)."""
        return self.transport.behaviours

    async def send(
        self,
        caller: str,
        called: str,
        *,
        extra_headers: dict[str, str] | None = None,
        call_id: str | None = None,
        now: int | None = None,
    ) -> Sent:
        """Sign a `realtime.call.incoming` for this call and post it."""
        delivery = signed_test_call(
            self.secret,
            caller,
            called,
            now=int(time.time()) if now is None else now,
            extra_headers=extra_headers,
            call_id=call_id,
        )
        return await self.deliver(delivery)

    async def deliver(self, delivery: SignedDelivery) -> Sent:
        """Post an already signed delivery (again, for redeliveries)."""
        response = await self.post(delivery.body, delivery.headers)
        sent = Sent(delivery, response)
        self.sent.append(sent)
        return sent

    async def post(self, body: Any, headers: Mapping[str, str]) -> httpx.Response:
        """Post raw content (bytes, or an async iterator for a body without length)."""
        return await self.client.post(WEBHOOK_PATH, content=body, headers=dict(headers))


ServiceFactory = Callable[..., AbstractAsyncContextManager[Service]]


@pytest.fixture
def webhook_secret() -> str:
    return new_webhook_secret()


@pytest.fixture
def secret(webhook_secret: str) -> str:
    """`webhook_secret` under the name the modules that build their own apps use."""
    return webhook_secret


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    return write_rules_file(tmp_path, DEFAULT_RULES)


@pytest.fixture
def rules_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """tmp_path/rules.yaml holding the requesting module's `RULES`."""
    text: str = request.module.RULES
    return write_rules_file(tmp_path, text)


@pytest.fixture
def write_rules(tmp_path: Path) -> Callable[[str], Path]:
    """Write a rule file into tmp_path and return its path."""
    counter = iter(range(1_000_000))

    def write(text: str) -> Path:
        path = tmp_path / f"rules-{next(counter)}.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def settings_factory(webhook_secret: str, rules_path: Path) -> Callable[..., Settings]:
    """Settings for tests (no .env read): fake upstream, small deadline; override any field."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "dry_run": False,
            "admin_token": ADMIN_TOKEN,
            "action_deadline_s": 1.0,
            **overrides,
        }
        return app_settings(rules_path, webhook_secret, **values)

    return make


@pytest.fixture
def fake_openai() -> FakeOpenAI:
    return FakeOpenAI(API_KEY)


@pytest.fixture
def fake(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """`fake_openai` under the name the modules that build their own apps use."""
    return fake_openai


@pytest.fixture
def service_factory(
    settings_factory: Callable[..., Settings],
    fake_openai: FakeOpenAI,
    webhook_secret: str,
    write_rules: Callable[[str], Path],
) -> ServiceFactory:
    """`async with service_factory(rules_text=..., **settings) as service:` (lifespan run)."""

    @asynccontextmanager
    async def start(
        *,
        rules_text: str | None = None,
        store: Store | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Service]:
        if rules_text is not None:
            overrides["rules"] = write_rules(rules_text)
        settings = settings_factory(**overrides)
        transport = VerbScriptedTransport(fake_openai)
        app = create_app(settings, transport=transport, store=store, watch_interval_s=None)
        async with running(app) as client:
            yield Service(app, client, fake_openai, settings, webhook_secret, transport)

    return start


@pytest.fixture
async def service(service_factory: ServiceFactory) -> AsyncIterator[Service]:
    async with service_factory() as running:
        yield running


@dataclass(frozen=True)
class SharedRedis:
    """The Redis that test modules share; tests keep to their own key prefix or database."""

    url: str
    # Started for this session (its databases may be flushed), rather than CI's server.
    own: bool


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRedis]:
    """SIP_ROUTER_TEST_REDIS_URL, else a redis-server started for this session, else a skip."""
    url = os.environ.get("SIP_ROUTER_TEST_REDIS_URL")
    if url:
        yield SharedRedis(url, own=False)
        return
    if REDIS_SERVER is None:
        pytest.skip("SIP_ROUTER_TEST_REDIS_URL is unset and redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield SharedRedis(server.url, own=True)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(shared_redis: SharedRedis) -> str:
    return shared_redis.url
