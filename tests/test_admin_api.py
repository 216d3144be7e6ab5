"""The admin API through a whole app: token gate, rules, reload, simulate, calls, hangup."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.log_format import JsonFormatter, TextFormatter
from app.store import RedisStore, Store
from app.webhook_signing import SignedDelivery, signed_test_call
from tests.conftest import app_settings, build_app, running
from tests.fake_openai import FakeOpenAI, Respond
from tests.redis_server import free_port

TOKEN = "s3cret-admin-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CALLER = "+14155550123"
BLOCKED = "+12025550199"
MAIN_LINE = "+14155550100"
SPANISH_LINE = "+14155550177"
RULES = """\
version: 1
defaults: {timezone: America/Los_Angeles, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Answer politely."}
  desk_es: {model: gpt-realtime, instructions: "Responde con amabilidad."}
lists:
  blocked: ["+12025550199"]
schedules:
  office:
    weekly:
      - {days: mon-fri, from: "09:00", to: "17:00"}
rules:
  - name: blocked-callers
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
  - name: partners
    when: {header: {X-Partner-Id: {regex: "PH[0-9]{4}"}}}
    refer: {target_uri: "sip:partners@pbx.example", before_accept: true}
  - name: spanish-office
    when: {called: "+14155550177", schedule: office}
    accept: {profile: desk_es}
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 503}}
"""
CALL_FIELDS = {
    "time",
    "call_id",
    "api",
    "caller",
    "called",
    "rule",
    "action",
    "outcome",
    "latency_ms",
    "ruleset",
}


def build(
    rules: Path, secret: str, fake: FakeOpenAI, *, store: Store | None = None, **overrides: Any
) -> FastAPI:
    fields: dict[str, Any] = {"admin_token": TOKEN, "action_deadline_s": 1.0, **overrides}
    return build_app(app_settings(rules, secret, **fields), fake, store=store)


async def deliver(client: httpx.AsyncClient, delivery: SignedDelivery) -> httpx.Response:
    response = await client.post(
        "/webhooks/openai", content=delivery.body, headers=delivery.headers
    )
    assert response.status_code == 200, response.text
    return response


# Every admin endpoint with a request that would be valid with the right token.
ADMIN_REQUESTS = [
    ("GET", "/admin/rules", None),
    ("POST", "/admin/reload", None),
    ("POST", "/admin/simulate", {"from": CALLER, "to": MAIN_LINE}),
    ("GET", "/admin/calls", None),
    ("GET", "/admin/calls?limit=5", None),
    ("POST", "/admin/calls/rtc_abc123/hangup", None),
]
ADMIN_IDS = [f"{method} {path}" for method, path, _ in ADMIN_REQUESTS]


# -- the token gate ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_REQUESTS, ids=ADMIN_IDS)
@pytest.mark.parametrize("admin_token", [None, "", "   "], ids=["unset", "empty", "blank"])
@pytest.mark.parametrize(
    "headers", [{}, AUTH, {"authorization": "Bearer "}], ids=["no-auth", "bearer", "empty-bearer"]
)
async def test_without_a_configured_token_every_admin_path_is_404(
    rules_file: Path,
    secret: str,
    fake: FakeOpenAI,
    method: str,
    path: str,
    body: Any,
    admin_token: str | None,
    headers: dict[str, str],
) -> None:
    app = build(rules_file, secret, fake, admin_token=admin_token)
    async with running(app) as client:
        response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    assert "www-authenticate" not in response.headers
    assert fake.requests == []


@pytest.mark.parametrize("path", ["/admin/unknown", "/admin/calls/x", "/admin/console/x.js"])
async def test_unknown_admin_paths_are_404_with_or_without_a_token(
    rules_file: Path, secret: str, fake: FakeOpenAI, path: str
) -> None:
    async with running(build(rules_file, secret, fake, admin_token=None)) as client:
        assert (await client.get(path, headers=AUTH)).status_code == 404
    async with running(build(rules_file, secret, fake)) as client:
        assert (await client.get(path, headers=AUTH)).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/reload"), ("DELETE", "/admin/rules"), ("GET", "/admin/simulate")],
)
async def test_without_a_token_a_wrong_method_on_an_admin_path_is_also_404(
    rules_file: Path, secret: str, fake: FakeOpenAI, method: str, path: str
) -> None:
    async with running(build(rules_file, secret, fake, admin_token=None)) as client:
        response = await client.request(method, path)
    assert response.status_code == 404


WRONG_AUTH = [
    pytest.param({}, id="missing"),
    pytest.param({"authorization": ""}, id="empty"),
    pytest.param({"authorization": "Bearer"}, id="scheme-only"),
    pytest.param({"authorization": TOKEN}, id="no-scheme"),
    pytest.param({"authorization": f"Basic {TOKEN}"}, id="basic"),
    pytest.param({"authorization": "Bearer wrong"}, id="wrong"),
    pytest.param({"authorization": f"Bearer {TOKEN[:-1]}4"}, id="last-char-differs"),
    pytest.param({"authorization": f"Bearer {TOKEN[:-1]}"}, id="prefix"),
    pytest.param({"authorization": f"Bearer {TOKEN}0"}, id="longer"),
    pytest.param({"authorization": f"Bearer {TOKEN.upper()}"}, id="case"),
    pytest.param({"x-admin-token": TOKEN}, id="other-header"),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_REQUESTS, ids=ADMIN_IDS)
@pytest.mark.parametrize("headers", WRONG_AUTH)
async def test_a_missing_or_wrong_token_is_401_and_does_nothing(
    rules_file: Path,
    secret: str,
    fake: FakeOpenAI,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    app = build(rules_file, secret, fake)
    async with running(app) as client:
        rules_file.write_text(RULES.replace("603", "486"), encoding="utf-8")
        version = app.state.services.rules.current.version
        response = await client.request(method, path, json=body, headers=headers)
        assert app.state.services.rules.current.version == version
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text
    assert fake.requests == []


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_REQUESTS, ids=ADMIN_IDS)
async def test_the_right_token_is_let_through(
    rules_file: Path, secret: str, fake: FakeOpenAI, method: str, path: str, body: Any
) -> None:
    app = build(rules_file, secret, fake)
    delivery = signed_test_call(
        secret, CALLER, MAIN_LINE, now=int(time.time()), call_id="rtc_abc123"
    )
    async with running(app) as client:
        await deliver(client, delivery)
        response = await client.request(method, path, json=body, headers=AUTH)
    assert response.status_code == 200, response.text


# -- /admin/rules and /admin/reload -----------------------------------------------------------


async def test_rules_describe_the_active_ruleset(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build(rules_file, secret, fake)
    async with running(app) as client:
        response = await client.get("/admin/rules", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"version", "files", "loaded_at", "last_error", "warnings", "rule_hits"}
    assert body["version"] == app.state.services.rules.current.version
    assert [Path(name).resolve() for name in body["files"]] == [rules_file.resolve()]
    loaded_at = body["loaded_at"]
    assert isinstance(loaded_at, str)
    assert abs(datetime.fromisoformat(loaded_at).timestamp() - time.time()) < 60
    assert body["last_error"] is None
    assert body["warnings"] == []


async def test_rules_show_warnings_and_hits_per_rule_since_start(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    # A second catch-all after the partners rule can never match: a warning, still valid.
    shadowed = RULES.replace(
        "default: {accept",
        "  - name: never\n    when: {header: {X-Partner-Id: {regex: 'PH[0-9]{4}'}}}\n"
        "    reject: {status_code: 486}\ndefault: {accept",
    )
    rules_file.write_text(shadowed, encoding="utf-8")
    app = build(rules_file, secret, fake)
    now = int(time.time())
    partner = {"X-Partner-Id": "PH0042"}
    async with running(app) as client:
        await deliver(client, signed_test_call(secret, BLOCKED, MAIN_LINE, now=now))
        await deliver(client, signed_test_call(secret, CALLER, MAIN_LINE, now=now))
        await deliver(client, signed_test_call(secret, CALLER, MAIN_LINE, now=now))
        await deliver(
            client, signed_test_call(secret, CALLER, MAIN_LINE, now=now, extra_headers=partner)
        )
        body = (await client.get("/admin/rules", headers=AUTH)).json()
        # A simulation is not a call: it does not count.
        await client.post("/admin/simulate", json={"from": BLOCKED, "to": MAIN_LINE}, headers=AUTH)
        again = (await client.get("/admin/rules", headers=AUTH)).json()
    assert body["rule_hits"] == {
        "blocked-callers": 1,
        "partners": 1,
        "spanish-office": 0,
        "never": 0,
        "default": 2,
    }
    assert again["rule_hits"] == body["rule_hits"]
    [warning] = body["warnings"]
    line = shadowed.splitlines().index("  - name: never") + 1
    assert warning.startswith(f"{rules_file}:{line}: ")
    assert "'never'" in warning


async def test_a_failed_reload_keeps_the_rules_and_reports_the_error_until_a_good_one(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build(rules_file, secret, fake)
    blocked_call = {"from": BLOCKED, "to": MAIN_LINE}
    async with running(app) as client:
        before = (await client.get("/admin/rules", headers=AUTH)).json()

        rules_file.write_text(RULES.replace("{profile: desk}", "{profile: missing}"), "utf-8")
        failed = await client.post("/admin/reload", headers=AUTH)
        assert failed.status_code == 422
        errors = failed.json()["errors"]
        assert failed.json()["status"] == "error"
        assert errors
        assert all(e.startswith(f"{rules_file}:") for e in errors), errors
        during = (await client.get("/admin/rules", headers=AUTH)).json()
        assert during["version"] == before["version"]
        assert during["loaded_at"] == before["loaded_at"]
        assert during["last_error"]
        still = await client.post("/admin/simulate", json=blocked_call, headers=AUTH)
        assert still.json()["request"]["body"] == {"status_code": 603}

        rules_file.write_text(RULES.replace("603", "486"), encoding="utf-8")
        fixed = await client.post("/admin/reload", headers=AUTH)
        assert fixed.status_code == 200
        assert fixed.json()["status"] == "ok"
        after = (await client.get("/admin/rules", headers=AUTH)).json()
        now = await client.post("/admin/simulate", json=blocked_call, headers=AUTH)
    assert after["version"] == fixed.json()["version"] != before["version"]
    assert after["last_error"] is None
    assert now.json()["request"]["body"] == {"status_code": 486}
    assert now.json()["ruleset"] == after["version"]


# -- /admin/simulate --------------------------------------------------------------------------

SIMULATIONS = [
    pytest.param(
        {"from": BLOCKED, "to": MAIN_LINE},
        "blocked-callers",
        "reject",
        {"status_code": 603},
        id="blocked",
    ),
    pytest.param(
        {"from": CALLER, "to": MAIN_LINE, "headers": {"X-Partner-Id": "PH0042"}},
        "partners",
        "refer",
        {"target_uri": "sip:partners@pbx.example"},
        id="header",
    ),
    pytest.param(
        {"from": CALLER, "to": SPANISH_LINE, "at": "2026-12-01T10:00:00-08:00"},
        "spanish-office",
        "accept",
        {"type": "realtime", "model": "gpt-realtime", "instructions": "Responde con amabilidad."},
        id="open",
    ),
    pytest.param(
        # Without an offset `at` is read in the rules' time zone (10:00 in Los Angeles).
        {"from": CALLER, "to": SPANISH_LINE, "at": "2026-12-01T10:00:00"},
        "spanish-office",
        "accept",
        {"type": "realtime", "model": "gpt-realtime", "instructions": "Responde con amabilidad."},
        id="naive-at",
    ),
    pytest.param(
        # 10:00 UTC is 02:00 in Los Angeles: the office is closed.
        {"from": CALLER, "to": SPANISH_LINE, "at": "2026-12-01T10:00:00Z"},
        None,
        "accept",
        {"type": "realtime", "model": "gpt-realtime", "instructions": "Answer politely."},
        id="closed",
    ),
]


@pytest.mark.parametrize(("request_body", "rule", "action", "upstream_body"), SIMULATIONS)
async def test_simulate_answers_the_decision_json(
    rules_file: Path,
    secret: str,
    fake: FakeOpenAI,
    request_body: dict[str, Any],
    rule: str | None,
    action: str,
    upstream_body: dict[str, Any],
) -> None:
    app = build(rules_file, secret, fake)
    async with running(app) as client:
        response = await client.post("/admin/simulate", json=request_body, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert {"rule", "action", "request", "trace", "ruleset"} <= set(body)
    assert body["rule"] == rule
    assert body["action"] == action
    assert body["request"] == {
        "path": f"/realtime/calls/rtc_simulated/{action}",
        "body": upstream_body,
    }
    assert body["ruleset"] == app.state.services.rules.current.version
    names = ["blocked-callers", "partners", "spanish-office"]
    tried = names[: names.index(rule) + 1] if rule else names
    assert [step["rule"] for step in body["trace"]] == tried
    assert [step["matched"] for step in body["trace"]] == [False] * (len(tried) - 1) + [
        rule is not None
    ]
    assert all(isinstance(step["reason"], str) and step["reason"] for step in body["trace"])
    assert fake.requests == []


MARKER = "ECHO-MARKER-7f3a"
BAD_SIMULATE_BODIES = [
    pytest.param(f"not json {MARKER}".encode(), id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(json.dumps([MARKER]).encode(), id="array"),
    pytest.param(json.dumps({"from": MARKER}).encode(), id="missing-to"),
    pytest.param(json.dumps({"to": MARKER}).encode(), id="missing-from"),
    pytest.param(json.dumps({"from": "", "to": MARKER}).encode(), id="empty-from"),
    pytest.param(json.dumps({"from": CALLER, "to": MAIN_LINE, MARKER: 1}).encode(), id="extra"),
    pytest.param(
        json.dumps({"from": CALLER, "to": MAIN_LINE, "headers": {"X": 1, MARKER: 2}}).encode(),
        id="header-not-text",
    ),
    pytest.param(
        json.dumps({"from": CALLER, "to": MAIN_LINE, "headers": [MARKER]}).encode(),
        id="headers-list",
    ),
    pytest.param(
        json.dumps({"from": CALLER, "to": MAIN_LINE, "headers": {"X": MARKER * 200}}).encode(),
        id="header-too-long",
    ),
    pytest.param(
        json.dumps({"from": CALLER, "to": MAIN_LINE, "at": f"tomorrow {MARKER}"}).encode(),
        id="bad-at",
    ),
    pytest.param(json.dumps({"from": MARKER * 10, "to": MAIN_LINE}).encode(), id="from-too-long"),
    pytest.param(json.dumps({"from": 14155550123, "to": MAIN_LINE}).encode(), id="from-number"),
    pytest.param(b'{"from": "\xff\xfe", "to": "x"}', id="not-utf8"),
    pytest.param(b"[" * 100_000, id="deeply-nested"),
]


@pytest.mark.parametrize("content", BAD_SIMULATE_BODIES)
async def test_simulate_answers_422_for_a_bad_body_without_echoing_it(
    rules_file: Path, secret: str, fake: FakeOpenAI, content: bytes
) -> None:
    app = build(rules_file, secret, fake)
    async with running(app, raise_app_exceptions=False) as client:
        response = await client.post(
            "/admin/simulate",
            content=content,
            headers={**AUTH, "content-type": "application/json"},
        )
    assert response.status_code == 422
    assert MARKER not in response.text
    assert "error" in response.json()


async def test_simulate_decides_a_call_of_the_api_given(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build(rules_file, secret, fake)
    call = {"from": BLOCKED, "to": MAIN_LINE}
    async with running(app) as client:
        live = await client.post(
            "/admin/simulate", json={**call, "api": "live", "media_security": "srtp"}, headers=AUTH
        )
        default = await client.post("/admin/simulate", json=call, headers=AUTH)
        bad = await client.post("/admin/simulate", json={**call, "api": "sip"}, headers=AUTH)
    assert live.status_code == 200
    assert live.json()["api"] == "live"
    assert live.json()["request"] == {
        "path": "/live/sessions/live_simulated/reject",
        "body": {"status_code": 603},
    }
    assert default.json()["api"] == "realtime"
    assert default.json()["request"]["path"] == "/realtime/calls/rtc_simulated/reject"
    assert bad.status_code == 422
    assert '"api"?: "realtime"|"live"' in bad.json()["error"]


# -- /admin/calls -----------------------------------------------------------------------------


async def test_calls_are_newest_first_with_exact_fields_and_masked_numbers(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build(rules_file, secret, fake, mask_numbers=True)
    now = int(time.time())
    sent = [
        signed_test_call(secret, CALLER, MAIN_LINE, now=now),
        signed_test_call(secret, BLOCKED, MAIN_LINE, now=now),
        signed_test_call(secret, "+447700900958", MAIN_LINE, now=now),
    ]
    async with running(app) as client:
        for delivery in sent:
            await deliver(client, delivery)
        response = await client.get("/admin/calls", headers=AUTH)
    assert response.status_code == 200
    calls = response.json()["calls"]
    assert list(response.json()) == ["calls"]
    assert [c["call_id"] for c in calls] == [d.call_id for d in reversed(sent)]
    for entry in calls:
        assert set(entry) == CALL_FIELDS | (
            {"status_code"} if entry["action"] == "reject" else {"profile"}
        )
        assert entry["called"] == "+1******0100"
        assert entry["ruleset"] == app.state.services.rules.current.version
        assert isinstance(entry["latency_ms"], int | float)
        assert entry["latency_ms"] >= 0
        assert entry["outcome"] == "processed"
    assert [(c["caller"], c["rule"], c["action"]) for c in calls] == [
        ("+44******0958", "default", "accept"),
        ("+1******0199", "blocked-callers", "reject"),
        ("+1******0123", "default", "accept"),
    ]
    assert [c.get("profile") or c.get("status_code") for c in calls] == ["desk", 603, "desk"]
    times = [c["time"] for c in calls]
    assert times == sorted(times, reverse=True)
    assert "4155550123" not in response.text
    assert "2025550199" not in response.text


async def test_calls_show_the_profile_status_code_or_target_of_each_action(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build(rules_file, secret, fake, dry_run=True)
    now = int(time.time())
    sent = [
        signed_test_call(secret, CALLER, MAIN_LINE, now=now),
        signed_test_call(secret, BLOCKED, MAIN_LINE, now=now),
        signed_test_call(
            secret, CALLER, MAIN_LINE, now=now, extra_headers={"X-Partner-Id": "PH0042"}
        ),
    ]
    async with running(app) as client:
        for delivery in sent:
            await deliver(client, delivery)
        calls = (await client.get("/admin/calls", headers=AUTH)).json()["calls"]
    shown = [{k: v for k, v in c.items() if k not in CALL_FIELDS} for c in reversed(calls)]
    assert shown == [
        {"profile": "desk"},
        {"status_code": 603},
        {"target_uri": "sip:partners@pbx.example"},
    ]


async def test_calls_show_full_numbers_when_masking_is_off(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build(rules_file, secret, fake, mask_numbers=False)
    async with running(app) as client:
        await deliver(client, signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time())))
        calls = (await client.get("/admin/calls", headers=AUTH)).json()["calls"]
    assert [(c["caller"], c["called"]) for c in calls] == [(CALLER, MAIN_LINE)]


@pytest.mark.parametrize(("limit", "expected"), [(1, 1), (3, 3), (4, 4), (1000, 5)])
async def test_calls_respect_the_limit(
    rules_file: Path, secret: str, fake: FakeOpenAI, limit: int, expected: int
) -> None:
    app = build(rules_file, secret, fake, dry_run=True)
    sent = [signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time())) for _ in range(5)]
    async with running(app) as client:
        for delivery in sent:
            await deliver(client, delivery)
        response = await client.get(f"/admin/calls?limit={limit}", headers=AUTH)
    assert response.status_code == 200
    calls = response.json()["calls"]
    assert [c["call_id"] for c in calls] == [d.call_id for d in reversed(sent)][:expected]
    assert {c["outcome"] for c in calls} == {"dry_run"}


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "5000", "abc", "1.5", ""])
async def test_calls_refuse_a_limit_out_of_range_with_422(
    rules_file: Path, secret: str, fake: FakeOpenAI, limit: str
) -> None:
    async with running(build(rules_file, secret, fake)) as client:
        response = await client.get(f"/admin/calls?limit={limit}", headers=AUTH)
    assert response.status_code == 422


async def test_calls_answer_503_when_the_shared_store_is_down(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    async with running(build(rules_file, secret, fake, store=store)) as client:
        response = await client.get("/admin/calls", headers=AUTH)
    assert response.status_code == 503
    assert "error" in response.json()


# -- /admin/calls/{call_id}/hangup ------------------------------------------------------------


class AuditLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def audit_lines() -> Iterator[AuditLines]:
    """The records of the `sip_router.audit` logger, whatever earlier configuration said."""
    logger = logging.getLogger("sip_router.audit")
    level, disabled = logger.level, logger.disabled
    handler = AuditLines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.disabled = False
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.disabled = disabled


@pytest.mark.parametrize(
    ("setup", "dry_run", "outcome", "status"),
    [
        pytest.param("active", False, "ok", 200, id="ok"),
        pytest.param("gone", False, "gone", 404, id="gone"),
        pytest.param("refused", False, "failed", 400, id="refused"),
        pytest.param("active", True, "dry_run", None, id="dry-run"),
    ],
)
async def test_every_hangup_writes_one_audit_line_without_the_token(
    rules_file: Path,
    secret: str,
    fake: FakeOpenAI,
    audit_lines: AuditLines,
    setup: str,
    dry_run: bool,
    outcome: str,
    status: int | None,
) -> None:
    call_id = "rtc_audit0001"
    if setup == "gone":
        fake.mark_gone(call_id)
    elif setup == "refused":
        fake.script(call_id, Respond(400, code="invalid_state"))
    async with running(build(rules_file, secret, fake, dry_run=dry_run)) as client:
        if setup == "active":
            now = int(time.time())
            await deliver(
                client, signed_test_call(secret, CALLER, MAIN_LINE, now=now, call_id=call_id)
            )
        await client.post(f"/admin/calls/{call_id}/hangup", headers=AUTH)
        # Refused before any hangup: not a call id, or not the admin.
        await client.post("/admin/calls/a..b/hangup", headers=AUTH)
        await client.post(f"/admin/calls/{call_id}/hangup", headers={"authorization": "Bearer x"})
    [record] = audit_lines.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "admin hangup"
    fields = {
        "audit": True,
        "client": "127.0.0.1",
        "call_id": call_id,
        "api": "realtime",
        "outcome": outcome,
    }
    assert record.fields == {**fields, "upstream_status": status}  # type: ignore[attr-defined]
    for line in (JsonFormatter().format(record), TextFormatter().format(record)):
        assert TOKEN not in line
        assert call_id in line


async def test_hangup_reaches_the_upstream_for_that_call(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build(rules_file, secret, fake, openai_api_key="sk-admin-test")
    fake.api_key = "sk-admin-test"
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    async with running(app) as client:
        await deliver(client, delivery)
        assert fake.call_state(delivery.call_id) == "active"
        response = await client.post(f"/admin/calls/{delivery.call_id}/hangup", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "call_id": delivery.call_id}
    assert fake.verbs_for(delivery.call_id) == ["accept", "hangup"]
    hangup = fake.requests_for(delivery.call_id)[-1]
    assert hangup.valid, hangup.problems
    assert hangup.headers["authorization"] == "Bearer sk-admin-test"
    assert fake.call_state(delivery.call_id) == "ended"


@pytest.mark.parametrize("known", [True, False], ids=["marked-gone", "never-seen"])
async def test_hangup_is_404_when_the_upstream_says_the_call_is_gone(
    rules_file: Path, secret: str, fake: FakeOpenAI, known: bool
) -> None:
    call_id = "rtc_gone0001"
    if known:
        fake.mark_gone(call_id)
    async with running(build(rules_file, secret, fake)) as client:
        response = await client.post(f"/admin/calls/{call_id}/hangup", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"status": "gone", "call_id": call_id}
    assert fake.verbs_for(call_id) == ["hangup"]


async def test_hangup_is_502_when_the_upstream_refuses_it(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    call_id = "rtc_refused01"
    fake.script(call_id, Respond(400, code="invalid_state"))
    async with running(build(rules_file, secret, fake)) as client:
        response = await client.post(f"/admin/calls/{call_id}/hangup", headers=AUTH)
    assert response.status_code == 502
    assert response.json()["status"] == "failed"
    assert fake.verbs_for(call_id) == ["hangup"]


@pytest.mark.parametrize(
    "call_id",
    ["a..b", "%2E%2E", "a%20b", "rtc_%3Cscript%3E", "rtc%0Aforged", "x" * 161, "rtc_%C3%A9"],
)
async def test_hangup_refuses_an_illegal_call_id_with_400_and_sends_nothing(
    rules_file: Path, secret: str, fake: FakeOpenAI, call_id: str
) -> None:
    async with running(build(rules_file, secret, fake)) as client:
        response = await client.post(f"/admin/calls/{call_id}/hangup", headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {"error": "not a call id"}
    assert fake.requests == []


@pytest.mark.parametrize("call_id", ["a%2Fb", "..%2F..%2Frtc_x", "a%2F..%2Fb"])
async def test_hangup_never_forwards_a_percent_encoded_slash(
    rules_file: Path, secret: str, fake: FakeOpenAI, call_id: str
) -> None:
    async with running(build(rules_file, secret, fake)) as client:
        response = await client.post(f"/admin/calls/{call_id}/hangup", headers=AUTH)
    assert response.status_code >= 400
    assert response.json().get("status") != "gone"
    assert fake.requests == []


async def test_hangup_in_dry_run_sends_nothing_upstream(
    rules_file: Path, secret: str, fake: FakeOpenAI
) -> None:
    async with running(build(rules_file, secret, fake, dry_run=True)) as client:
        response = await client.post("/admin/calls/rtc_dry0001/hangup", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"status": "dry_run", "call_id": "rtc_dry0001"}
    assert fake.requests == []
