"""Shared fixtures: settings, the fake OpenAI, and the service driven in process over ASGI.

`service` yields a running app (lifespan entered) with an httpx client bound to it, the
fake behind the app's upstream client, and `send(caller, called)` to post a signed call.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
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

API_KEY = "sk-test"
ADMIN_TOKEN = "admin-test-token"
SERVICE_URL = "http://sip-router"
WEBHOOK_PATH = "/webhooks/openai"

# A small rule file with one rule per action; the accept's instructions are a template.
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
    refer: {target_uri: "sip:desk@pbx.example.com"}
default: {accept: {profile: desk}}
"""


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


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
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_RULES, encoding="utf-8")
    return path


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
            "openai_api_key": API_KEY,
            "openai_webhook_secret": webhook_secret,
            "openai_base_url": MOCK_BASE_URL,
            "rules": rules_path,
            "dry_run": False,
            "admin_token": ADMIN_TOKEN,
            "action_deadline_s": 1.0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def fake_openai() -> FakeOpenAI:
    return FakeOpenAI(API_KEY)


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
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=SERVICE_URL
            ) as client,
        ):
            yield Service(app, client, fake_openai, settings, webhook_secret, transport)

    return start


@pytest.fixture
async def service(service_factory: ServiceFactory) -> AsyncIterator[Service]:
    async with service_factory() as running:
        yield running
