"""Structured logs: one line per webhook, masked numbers, no secrets or raw SIP headers."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from app.app_factory import create_app
from app.asgi import app_from_environment
from app.log_format import JsonFormatter, TextFormatter
from app.webhook_signing import incoming_call_body, sign_delivery, signed_test_call
from tests.conftest import app_settings, build_app, deliver, new_webhook_secret, running
from tests.fake_openai import Drop, FakeOpenAI, Respond

CALLER = "+14155550123"
BLOCKED = "+12025550199"
MAIN_LINE = "+14155550100"
API_KEY = "sk-live-key-" + "9f8e7d6c5b4a"
ADMIN_TOKEN = "admin-token-" + "a1b2c3d4e5"
RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk:
    model: gpt-realtime
    instructions: "Caller {{ caller.e164 }} on {{ headers.get('x-account', 'none') }}."
lists:
  blocked: ["+12025550199"]
rules:
  - name: blocked-callers
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
  - name: partners
    when: {header: {X-Partner-Id: {regex: "^PH"}}}
    refer: {target_uri: "sip:partners@pbx.example"}
default: {accept: {profile: desk}}
on_error: {reject: {status_code: 503}}
"""
WEBHOOK_FIELDS = {
    "webhook_id",
    "call_id",
    "caller",
    "called",
    "rule",
    "action",
    "outcome",
    "http_status",
    "upstream_status",
    "latency_ms",
    "ruleset",
}
RAW_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI(api_key=API_KEY)


def build(rules: Path, secret: str, fake: FakeOpenAI, **overrides: Any) -> FastAPI:
    settings = app_settings(
        rules,
        secret,
        openai_api_key=API_KEY,
        admin_token=ADMIN_TOKEN,
        action_deadline_s=0.3,
        **overrides,
    )
    return build_app(settings, fake)


def signed(secret: str, body: bytes, now: int, **kwargs: Any) -> dict[str, str]:
    return sign_delivery(secret, body, timestamp=now, **kwargs)


def other_event(event_type: str, now: int) -> bytes:
    return json.dumps(
        {"object": "event", "id": "evt_x", "type": event_type, "created_at": now, "data": {}}
    ).encode()


class Collector(logging.Handler):
    """Keeps every record it is handed (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def webhook_lines(self) -> list[str]:
        formatter = JsonFormatter()
        return [formatter.format(r) for r in self.records if r.name == "sip_router.webhook"]

    def webhook_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.webhook_lines():
            assert "\n" not in line
            entries.append(json.loads(line))
        return entries


@pytest.fixture
def webhook_log() -> Iterator[Collector]:
    """The records of the `sip_router.webhook` logger at INFO and above."""
    logger = logging.getLogger("sip_router.webhook")
    level, disabled = logger.level, logger.disabled
    collector = Collector()
    logger.addHandler(collector)
    logger.setLevel(logging.INFO)
    logger.disabled = False
    yield collector
    logger.removeHandler(collector)
    logger.setLevel(level)
    logger.disabled = disabled


@pytest.fixture
def everything_logged() -> Iterator[Collector]:
    """Every record of every logger at DEBUG, whatever earlier configuration said."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    loggers = [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [(lg, lg.level, lg.propagate, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.NOTSET)
        lg.propagate = True
        lg.disabled = False
    collector = Collector()
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    yield collector
    root.removeHandler(collector)
    root.setLevel(saved_root[0])
    for lg, level, propagate, disabled in saved:
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Undo `configure_logging` (it replaces handlers of the root and of named loggers)."""
    names = ["", "sip_router", "sip_router.webhook", "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = []
    for name in names:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate, lg.disabled, list(lg.handlers)))
    yield
    for lg, level, propagate, disabled, handlers in saved:
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
        for handler in handlers:
            lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


# -- one line per webhook ---------------------------------------------------------------------


async def test_each_webhook_logs_exactly_one_json_line_with_its_fields(
    rules_file: Path, secret: str, fake: FakeOpenAI, webhook_log: Collector
) -> None:
    app = build(rules_file, secret, fake)
    now = int(time.time())
    accepted = signed_test_call(secret, CALLER, MAIN_LINE, now=now)
    rejected = signed_test_call(secret, BLOCKED, MAIN_LINE, now=now)
    ignored = other_event("realtime.call.ended", now)
    async with running(app) as client:
        await deliver(client, accepted)
        await deliver(client, rejected)
        await deliver(client, accepted)
        await client.post("/webhooks/openai", content=ignored, headers=signed(secret, ignored, now))
        await client.get("/readyz")
        await client.get("/metrics")
    version = app.state.services.rules.current.version
    entries = webhook_log.webhook_entries()
    assert [e["outcome"] for e in entries] == ["processed", "processed", "duplicate", "ignored"]
    assert {e["message"] for e in entries} == {"webhook"}
    assert {e["logger"] for e in entries} == {"sip_router.webhook"}
    assert {e["level"] for e in entries} == {"info"}

    first = entries[0]
    assert set(first) >= WEBHOOK_FIELDS
    assert isinstance(first["latency_ms"], int | float)
    assert first["latency_ms"] >= 0
    assert {k: v for k, v in first.items() if k in WEBHOOK_FIELDS - {"latency_ms"}} == {
        "webhook_id": accepted.webhook_id,
        "call_id": accepted.call_id,
        "caller": "+1******0123",
        "called": "+1******0100",
        "rule": "default",
        "action": "accept",
        "outcome": "processed",
        "http_status": 200,
        "upstream_status": 200,
        "ruleset": version,
    }
    second = entries[1]
    assert (second["call_id"], second["rule"], second["action"], second["caller"]) == (
        rejected.call_id,
        "blocked-callers",
        "reject",
        "+1******0199",
    )
    assert (entries[2]["webhook_id"], entries[2]["http_status"]) == (accepted.webhook_id, 200)
    assert entries[3]["http_status"] == 200


@pytest.mark.parametrize(
    ("caller", "mask", "shown"),
    [
        (CALLER, True, "+1******0123"),
        ("+447700900958", True, "+44******0958"),
        ("anonymous", True, "anonymous"),
        (CALLER, False, CALLER),
        ("+447700900958", False, "+447700900958"),
    ],
)
async def test_numbers_are_masked_unless_masking_is_off(
    rules_file: Path,
    secret: str,
    fake: FakeOpenAI,
    webhook_log: Collector,
    caller: str,
    mask: bool,
    shown: str,
) -> None:
    app = build(rules_file, secret, fake, mask_numbers=mask)
    async with running(app) as client:
        await deliver(client, signed_test_call(secret, caller, MAIN_LINE, now=int(time.time())))
    [entry] = webhook_log.webhook_entries()
    assert entry["caller"] == shown
    assert entry["called"] == ("+1******0100" if mask else MAIN_LINE)
    if mask and caller.startswith("+"):
        assert caller[-7:] not in webhook_log.webhook_lines()[0]


async def test_a_bad_signature_is_logged_without_echoing_the_delivery(
    rules_file: Path, secret: str, fake: FakeOpenAI, webhook_log: Collector
) -> None:
    app = build(rules_file, secret, fake)
    now = int(time.time())
    marker = "DELIVERY-MARKER-51c0"
    body = incoming_call_body(f"rtc_{marker.replace('-', '_')}", now, [("From", marker)])
    headers = signed(new_webhook_secret(), body, now, webhook_id=f"wh_{marker}")
    headers["x-forwarded-for"] = marker
    async with running(app) as client:
        answer = await client.post("/webhooks/openai", content=body, headers=headers)
        missing = dict(headers)
        del missing["webhook-signature"]
        malformed = await client.post("/webhooks/openai", content=body, headers=missing)
    assert (answer.status_code, malformed.status_code) == (401, 400)
    entries = webhook_log.webhook_entries()
    assert [(e["outcome"], e["http_status"]) for e in entries] == [
        ("bad_signature", 401),
        ("malformed", 400),
    ]
    for line in webhook_log.webhook_lines():
        assert marker not in line
        assert headers["webhook-signature"].split(",", 1)[1] not in line
    assert fake.requests == []


async def test_a_delivery_over_64_kib_is_logged_too(
    rules_file: Path, secret: str, fake: FakeOpenAI, webhook_log: Collector
) -> None:
    app = build(rules_file, secret, fake)
    now = int(time.time())
    body = incoming_call_body("rtc_big", now, [("X-Pad", "x" * 70_000)])
    async with running(app) as client:
        answer = await client.post(
            "/webhooks/openai", content=body, headers=signed(secret, body, now)
        )
    assert answer.status_code == 413
    assert [(e["outcome"], e["http_status"]) for e in webhook_log.webhook_entries()] == [
        ("too_large", 413)
    ]


# -- nothing secret, nothing raw --------------------------------------------------------------


async def test_no_log_line_holds_a_secret_a_raw_sip_header_or_a_full_number(
    rules_file: Path, secret: str, fake: FakeOpenAI, everything_logged: Collector
) -> None:
    from_marker = "FROM-DISPLAY-MARKER-3e1d"
    header_marker = "X-HEADER-MARKER-88aa"
    now = int(time.time())
    sip_headers = [
        ("From", f'"{from_marker}" <sip:{CALLER}@trunk.example>;tag=1'),
        ("To", f"<sip:{MAIN_LINE}@trunk.example>"),
        ("X-Account", header_marker),
        ("X-Partner-Id", f"PH-{header_marker}"),
        ("Call-ID", f"{header_marker}@trunk.example"),
    ]
    plain = incoming_call_body("rtc_plain01", now, sip_headers[:3] + sip_headers[4:])
    # Another phone call (its own Call-ID), so it is decided rather than a duplicate of plain.
    partner_headers = [*sip_headers[:4], ("Call-ID", f"{header_marker}-2@trunk.example")]
    partner = incoming_call_body("rtc_partner01", now, partner_headers)
    failing = incoming_call_body("rtc_failing01", now, sip_headers[:3])
    fake.script("rtc_failing01", Respond(500), Respond(400, code="invalid_request"))
    with fake.serve_on_loopback() as base_url:
        app = create_app(
            app_settings(
                rules_file,
                secret,
                openai_api_key=API_KEY,
                openai_base_url=base_url,
                admin_token=ADMIN_TOKEN,
                action_deadline_s=1.0,
            ),
            watch_interval_s=None,
        )
        async with running(app) as client:
            for body in (plain, partner, failing):
                answer = await client.post(
                    "/webhooks/openai", content=body, headers=signed(secret, body, now)
                )
                assert answer.status_code == 200, answer.text
            await client.post("/webhooks/openai", content=plain, headers=signed(secret, plain, now))
            forged = signed(new_webhook_secret(), plain, now)
            await client.post("/webhooks/openai", content=plain, headers=forged)
            auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            await client.get("/admin/calls", headers=auth)
            await client.get("/admin/rules", headers=auth)
            await client.post(
                "/admin/simulate",
                json={"from": CALLER, "to": MAIN_LINE, "headers": {"X-Account": header_marker}},
                headers=auth,
            )
            await client.post("/admin/calls/rtc_plain01/hangup", headers=auth)
            await client.get("/admin/calls", headers={"authorization": f"Bearer {ADMIN_TOKEN}x"})
            await client.post("/admin/reload", headers=auth)
    assert fake.verbs_for("rtc_plain01") == ["accept", "hangup"]
    assert len(fake.verbs_for("rtc_partner01")) == 1
    assert fake.verbs_for("rtc_failing01") == ["accept", "accept", "reject"]
    # The key the secret encodes, in any of the spellings a log could use.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    forbidden = {
        "webhook secret": secret.removeprefix("whsec_"),
        "webhook key hex": key.hex(),
        "api key": API_KEY,
        "admin token": ADMIN_TOKEN,
        "From display name": from_marker,
        "X- header": header_marker,
        "full caller number": "4155550123",
    }
    records = everything_logged.records
    assert any(r.name == "sip_router.webhook" for r in records)
    assert any(r.name.startswith("httpx") for r in records), "the DEBUG capture saw no client"
    formatters = [JsonFormatter(), TextFormatter()]
    for record in records:
        texts = [f.format(record) for f in formatters] + [repr(record.__dict__)]
        for what, value in forbidden.items():
            for text in texts:
                assert value not in text, f"{what} in a log record of {record.name}: {text}"


# -- control characters -----------------------------------------------------------------------

NASTY = "evil\nlevel=error forged=1\r\x1b[31m\x00\u2028\u0085end"


async def test_control_characters_from_the_sender_stay_escaped_in_json(
    rules_file: Path, secret: str, fake: FakeOpenAI, webhook_log: Collector
) -> None:
    app = build(rules_file, secret, fake)
    now = int(time.time())
    body = other_event(NASTY, now)
    async with running(app) as client:
        answer = await client.post(
            "/webhooks/openai", content=body, headers=signed(secret, body, now)
        )
    assert answer.json()["status"] == "ignored"
    [line] = webhook_log.webhook_lines()
    assert RAW_CONTROLS.search(line) is None
    assert line.isascii()
    assert json.loads(line)["detail"] == NASTY


async def test_control_characters_from_the_upstream_stay_escaped_in_both_formats(
    rules_file: Path, secret: str, fake: FakeOpenAI, webhook_log: Collector
) -> None:
    app = build(rules_file, secret, fake)
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    fake.script(delivery.call_id, Respond(400, code="bad\nlevel=error\x1b[2J"))
    async with running(app) as client:
        assert (await deliver(client, delivery)).json()["status"] == "on_error"
    [record] = [r for r in webhook_log.records if r.name == "sip_router.webhook"]
    json_line = JsonFormatter().format(record)
    text_line = TextFormatter().format(record)
    for line in (json_line, text_line):
        assert RAW_CONTROLS.search(line) is None
    assert "bad\nlevel=error\x1b[2J" in json.loads(json_line)["failure"]
    assert 'failure="HTTP 400 bad\\nlevel=error\\x1b[2J"' in text_line


async def test_text_format_escapes_control_characters_and_keeps_one_line(
    rules_file: Path, secret: str, fake: FakeOpenAI, webhook_log: Collector
) -> None:
    app = build(rules_file, secret, fake)
    now = int(time.time())
    body = other_event(NASTY, now)
    async with running(app) as client:
        await client.post("/webhooks/openai", content=body, headers=signed(secret, body, now))
    [record] = [r for r in webhook_log.records if r.name == "sip_router.webhook"]
    line = TextFormatter().format(record)
    assert RAW_CONTROLS.search(line) is None
    assert 'detail="evil\\nlevel=error forged=1\\r\\x1b[31m\\x00\\u2028\\x85end"' in line
    fields = {"webhook_id", "outcome", "latency_ms", "http_status", "detail"}
    assert set(logfmt_fields(line, "webhook")) == fields


LOGFMT_PAIR = re.compile(r'([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|[^\s"]+)(?: |$)')


def logfmt_fields(line: str, message: str = "text") -> dict[str, str]:
    """The key=value pairs after `logger: message `, quoted values unescaped."""
    _, _, rest = line.partition(f": {message} ")
    fields = {}
    position = 0
    while position < len(rest):
        match = LOGFMT_PAIR.match(rest, position)
        assert match is not None, rest[position:]
        value = match.group(2)
        if value.startswith('"'):
            # The escapes are Python's (backslash, quote, \n, \x1b...); the values are ASCII.
            value = value[1:-1].encode("ascii").decode("unicode_escape")
        fields[match.group(1)] = value
        position = match.end()
    return fields


def text_record(fields: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord("sip_router.test", logging.INFO, __file__, 1, "text", None, None)
    record.fields = fields
    return record


@pytest.mark.parametrize(
    "value",
    [
        "two words",
        'say "hi"',
        "back\\slash",
        'tricky\\" forged=1',
        "a=b",
        "",
        "tab\there",
        "x forged=1 y",
        "[1, 'a b']",
    ],
)
def test_text_format_quotes_values_that_would_read_as_more_than_one(value: str) -> None:
    line = TextFormatter().format(text_record({"first": value, "plain": "ok", "n": 3}))
    assert f"first={value} " not in line
    parsed = logfmt_fields(line)
    assert parsed == {"first": value, "plain": "ok", "n": "3"}


def test_text_format_leaves_single_word_values_bare() -> None:
    line = TextFormatter().format(text_record({"call_id": "rtc_1", "caller": "+1******0123"}))
    assert line.endswith(" text call_id=rtc_1 caller=+1******0123")


# -- formats chosen by the environment --------------------------------------------------------


@pytest.fixture
def environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rules_file: Path,
    secret: str,
    restored_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[FakeOpenAI]:
    """The service's environment (no .env is read from tmp_path); a loopback fake upstream.

    The fake stops before the logging configuration and the captured stderr are undone.
    """
    fake = FakeOpenAI(api_key=API_KEY)
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("SIP_ROUTER_", "OPENAI_")):
            monkeypatch.delenv(name)
    with fake.serve_on_loopback() as base_url:
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", secret)
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
        monkeypatch.setenv("SIP_ROUTER_RULES", str(rules_file))
        yield fake


def webhook_text_fields(line: str) -> dict[str, str]:
    _, _, rest = line.partition(" sip_router.webhook: webhook ")
    assert rest, line
    return dict(pair.split("=", 1) for pair in rest.split(" "))


async def test_text_format_writes_key_value_lines(
    environment: FakeOpenAI,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SIP_ROUTER_LOG_FORMAT", "text")
    app = app_from_environment()
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    async with running(app) as client:
        assert (await deliver(client, delivery)).json()["status"] == "processed"
        version = app.state.services.rules.current.version
    lines = [line for line in capsys.readouterr().err.splitlines() if "sip_router.webhook" in line]
    assert len(lines) == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 info    ", lines[0])
    fields = webhook_text_fields(lines[0])
    latency = fields.pop("latency_ms")
    assert float(latency) >= 0
    assert fields == {
        "webhook_id": delivery.webhook_id,
        "call_id": delivery.call_id,
        "api": "realtime",
        "caller": "+1******0123",
        "called": "+1******0100",
        "rule": "default",
        "action": "accept",
        "outcome": "processed",
        "http_status": "200",
        "upstream_status": "200",
        "ruleset": version,
    }
    assert environment.verbs_for(delivery.call_id) == ["accept"]


@pytest.mark.usefixtures("environment")
async def test_json_format_writes_one_json_object_per_line(
    secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = app_from_environment()
    delivery = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    async with running(app) as client:
        await deliver(client, delivery)
        await deliver(client, delivery)
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert any(e["message"] == "sip-router started" for e in entries)
    webhooks = [e for e in entries if e["logger"] == "sip_router.webhook"]
    assert [(w["call_id"], w["outcome"]) for w in webhooks] == [
        (delivery.call_id, "processed"),
        (delivery.call_id, "duplicate"),
    ]


async def test_the_log_level_from_the_environment_hides_routine_lines(
    environment: FakeOpenAI,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SIP_ROUTER_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("SIP_ROUTER_ACTION_DEADLINE_S", "0.3")
    app = app_from_environment()
    routine = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    lost = signed_test_call(secret, CALLER, MAIN_LINE, now=int(time.time()))
    environment.script(lost.call_id, *[Drop(applied=True)] * 500)
    async with running(app) as client:
        assert (await deliver(client, routine)).json()["status"] == "processed"
        assert (await deliver(client, lost)).json()["status"] == "unknown"
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    webhooks = [e for e in entries if e["logger"] == "sip_router.webhook"]
    assert [(w["call_id"], w["outcome"], w["level"]) for w in webhooks] == [
        (lost.call_id, "unknown", "error")
    ]
