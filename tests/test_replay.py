"""Replay of recorded calls against candidate rules: `POST /admin/replay`, `GET /admin/calls/{id}`
and `sip-router replay`, with calls recorded by three replicas sharing a real Redis."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.call_replay import replay_calls
from app.cli import main as cli_main
from app.recorded_calls import call_json
from app.rules.file_reading import UploadedRuleFiles
from app.rules.loader import load_ruleset
from app.rules.simulation import sip_headers_for
from app.store import MemoryStore, RedisStore
from app.webhook_signing import incoming_call_body, sign_delivery
from tests.conftest import app_settings, build_app, running
from tests.fake_openai import FakeOpenAI
from tests.loopback_service import serve_on_loopback
from tests.redis_server import delete_prefix

TOKEN = "replay-admin"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CALLER = "+14155550123"
OTHER = "+14155550177"
BLOCKED = "+12025550199"
LINE = "+18005550100"
# A Monday and a Sunday: a candidate with a weekend rule changes only the Sunday call.
MONDAY = int(datetime(2026, 3, 2, 10, 0, tzinfo=UTC).timestamp())
SUNDAY = int(datetime(2026, 3, 1, 10, 0, tzinfo=UTC).timestamp())

RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Answer politely."}
lists:
  blocked: {file: blocked.txt}
rules:
  - name: blocked-callers
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
default: {accept: {profile: desk}}
"""
BLOCKED_TXT = f"{BLOCKED}\n"

WEEKEND_RULES = RULES.replace(
    "rules:\n",
    """schedules:
  weekend: {weekly: [{days: sat-sun, from: "00:00", to: "24:00"}]}
rules:
  - name: closed-on-weekends
    when: {schedule: weekend}
    reject: {status_code: 480}
""",
)


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"test-replay-{os.urandom(6).hex()}:"
    yield prefix
    await delete_prefix(redis_url, prefix)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "rules.yaml").write_text(RULES, encoding="utf-8")
    (folder / "blocked.txt").write_text(BLOCKED_TXT, encoding="utf-8")
    return folder


def settings_for(rules_dir: Path, secret: str, **fields: Any) -> Any:
    return app_settings(
        rules_dir / "rules.yaml",
        secret,
        admin_token=TOKEN,
        action_deadline_s=0.5,
        # Calls recorded with their own (past) created_at are still decided.
        max_event_age_s=10**9,
        **fields,
    )


async def call(
    client: httpx.AsyncClient, secret: str, caller: str, created_at: int, call_id: str
) -> None:
    """One signed call arriving at `created_at` (signed now, as OpenAI signs a redelivery)."""
    headers = sip_headers_for(caller, LINE, {"X-Account": "A-17"})
    body = incoming_call_body(call_id, created_at, headers)
    signed = sign_delivery(secret, body, timestamp=int(time.time()))
    response = await client.post("/webhooks/openai", content=body, headers=signed)
    assert response.status_code == 200, response.text


def candidate(rules: str = RULES, blocked: str = BLOCKED_TXT) -> dict[str, Any]:
    return {"files": {"rules.yaml": rules, "blocked.txt": blocked}, "main": "rules.yaml"}


@pytest.mark.redis
async def test_replay_over_calls_recorded_by_three_replicas_on_redis(
    rules_dir: Path, secret: str, fake: FakeOpenAI, redis_url: str, redis_prefix: str
) -> None:
    replicas = [
        build_app(
            settings_for(rules_dir, secret, keep_call_inputs=keep),
            fake,
            store=RedisStore.from_url(redis_url, prefix=redis_prefix),
        )
        for keep in (True, True, False)
    ]
    async with AsyncExitStack() as stack:
        a, b, c = [await stack.enter_async_context(running(app)) for app in replicas]
        await call(a, secret, CALLER, MONDAY, "rtc_monday_a")
        await call(b, secret, CALLER, SUNDAY, "rtc_sunday_b")
        await call(b, secret, BLOCKED, SUNDAY, "rtc_blocked_b")
        await call(c, secret, OTHER, SUNDAY, "rtc_no_inputs_c")
        running_version = replicas[0].state.services.rules.current.version

        same = await a.post("/admin/replay", json=candidate(), headers=AUTH)
        weekend = await b.post("/admin/replay", json=candidate(WEEKEND_RULES), headers=AUTH)
        more_blocked = await a.post(
            "/admin/replay", json=candidate(blocked=f"{BLOCKED}\n{CALLER}\n"), headers=AUTH
        )
        refused = await c.post("/admin/replay", json=candidate(), headers=AUTH)
        after = (await a.get("/admin/rules", headers=AUTH)).json()

    assert same.status_code == 200, same.text
    assert same.json() == {
        "version": running_version,
        "warnings": [],
        "calls": 3,
        "skipped": 1,
        "changed": [],
    }
    assert weekend.status_code == 200, weekend.text
    report = weekend.json()
    assert (report["calls"], report["skipped"]) == (3, 1)
    # The blocked caller's Sunday call is decided by the new first rule too: it changes.
    assert {c["call_id"]: (c["before"], c["after"]) for c in report["changed"]} == {
        "rtc_sunday_b": (
            {"rule": "default", "action": "accept"},
            {"rule": "closed-on-weekends", "action": "reject"},
        ),
        "rtc_blocked_b": (
            {"rule": "blocked-callers", "action": "reject"},
            {"rule": "closed-on-weekends", "action": "reject"},
        ),
    }
    assert all(c["time"] for c in report["changed"])
    changed = {c["call_id"] for c in more_blocked.json()["changed"]}
    assert changed == {"rtc_monday_a", "rtc_sunday_b"}
    assert refused.status_code == 409
    # The running rules are untouched.
    assert after["version"] == running_version


async def test_a_broken_candidate_is_answered_422_with_file_and_line(
    rules_dir: Path, secret: str, fake: FakeOpenAI
) -> None:
    broken = RULES.replace("{in: blocked}", "{in: blockd}")
    app = build_app(settings_for(rules_dir, secret), fake, store=MemoryStore())
    async with running(app) as client:
        response = await client.post("/admin/replay", json=candidate(broken), headers=AUTH)
        missing = await client.post(
            "/admin/replay",
            json={"files": {"rules.yaml": RULES}, "main": "rules.yaml"},
            headers=AUTH,
        )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        "rules.yaml:9: rule 'blocked-callers' when.caller: unknown list 'blockd'"
        " (did you mean 'blocked'?)"
    ]
    # blocked.txt lies next to the running rules on disk, but a candidate reads only its
    # uploaded files.
    assert missing.status_code == 422
    assert missing.json()["errors"] == [
        "rules.yaml:6: cannot read blocked.txt: no such file among the uploaded files"
    ]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../secrets.txt", "outside the rule file's folder"),
        ("/etc/passwd", "an absolute path; name files relative to the rule file's folder"),
    ],
)
async def test_a_candidate_cannot_name_files_outside_its_upload(
    rules_dir: Path, secret: str, fake: FakeOpenAI, name: str, reason: str
) -> None:
    rules = RULES.replace("{file: blocked.txt}", f"{{file: {name}}}")
    app = build_app(settings_for(rules_dir, secret), fake, store=MemoryStore())
    files = {"rules.yaml": rules, name: "+12025550100\n"}
    async with running(app) as client:
        response = await client.post(
            "/admin/replay", json={"files": files, "main": "rules.yaml"}, headers=AUTH
        )
    assert response.status_code == 422
    assert response.json()["errors"] == [f"rules.yaml:6: cannot read {name}: {reason}"]


async def test_replay_bodies_over_4_mib_are_refused_413(
    rules_dir: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build_app(settings_for(rules_dir, secret), fake, store=MemoryStore())
    big = candidate(blocked="+12025550100\n" * 400_000)
    async with running(app) as client:
        response = await client.post("/admin/replay", json=big, headers=AUTH)
        unauthorized = await client.post("/admin/replay", json=candidate())
    assert response.status_code == 413
    assert unauthorized.status_code == 401


async def test_one_call_in_full_without_unmasked_numbers(
    rules_dir: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build_app(settings_for(rules_dir, secret), fake, store=MemoryStore())
    async with running(app) as client:
        await call(client, secret, BLOCKED, MONDAY, "rtc_detail")
        detail = await client.get("/admin/calls/rtc_detail", headers=AUTH)
        unknown = await client.get("/admin/calls/rtc_unknown", headers=AUTH)
        listed = await client.get("/admin/calls", headers=AUTH)
        exported = await client.get("/admin/calls?inputs=true", headers=AUTH)
    assert detail.status_code == 200
    shown = detail.json()
    assert shown["call_id"] == "rtc_detail"
    assert (shown["rule"], shown["action"], shown["outcome"]) == (
        "blocked-callers",
        "reject",
        "processed",
    )
    assert shown["caller"] == "+1******0199"
    assert shown["decision"]["trace"] == [
        {
            "rule": "blocked-callers",
            "matched": True,
            "reason": "caller +1******0199 is in list blocked",
        }
    ]
    assert shown["decision"]["action"] == "reject"
    [request] = shown["requests"]
    assert (request["verb"], request["status"], request["outcome"]) == ("reject", 200, "ok")
    assert request["latency_ms"] >= 0
    assert shown["inputs_kept"] is True
    for answer in (detail, listed):
        assert BLOCKED not in answer.text
        assert "2025550199" not in answer.text
    assert unknown.status_code == 404
    [export] = exported.json()["calls"]
    assert export["inputs"]["created_at"] == MONDAY
    assert ["X-Account", "A-17"] in export["inputs"]["sip_headers"]


async def test_without_keep_call_inputs_nothing_unmasked_is_kept(
    rules_dir: Path, secret: str, fake: FakeOpenAI
) -> None:
    app = build_app(
        settings_for(rules_dir, secret, keep_call_inputs=False), fake, store=MemoryStore()
    )
    async with running(app) as client:
        await call(client, secret, CALLER, MONDAY, "rtc_plain")
        detail = (await client.get("/admin/calls/rtc_plain", headers=AUTH)).json()
        exported = (await client.get("/admin/calls?inputs=true", headers=AUTH)).json()
    assert detail["inputs_kept"] is False
    assert "inputs" not in exported["calls"][0]
    assert CALLER not in json.dumps(exported)


def test_a_call_in_full_shows_its_later_life_only_when_recorded() -> None:
    record = {"call_id": "rtc_x", "entry": {"call_id": "rtc_x", "outcome": "processed"}}
    assert set(call_json(record)) == {"call_id", "outcome", "requests", "inputs_kept"}
    later = {"end_reason": "caller_hung_up", "events": [{"type": "greeting", "status": "ok"}]}
    assert call_json({**record, **later, "inputs": {}}) == {
        "call_id": "rtc_x",
        "outcome": "processed",
        "requests": [],
        "inputs_kept": True,
        **later,
    }


def test_uploaded_files_load_to_the_same_version_as_on_disk(rules_dir: Path) -> None:
    on_disk = load_ruleset(rules_dir / "rules.yaml")
    files = {"rules.yaml": RULES, "blocked.txt": BLOCKED_TXT}
    uploaded = load_ruleset("rules.yaml", source=UploadedRuleFiles(files, "rules.yaml"))
    assert uploaded.version == on_disk.version


async def test_the_call_log_keeps_records_only_as_long_as_its_entries() -> None:
    store = MemoryStore()
    for index in range(1005):
        call_id = f"rtc_{index}"
        await store.append({"call_id": call_id}, {"call_id": call_id, "inputs": {}})
    assert await store.call_record("rtc_4") is None
    assert await store.call_record("rtc_5") is not None
    records = await store.call_records(1000)
    assert len(records) == 1000
    assert records[0]["call_id"] == "rtc_1004"


@pytest.mark.redis
async def test_redis_keeps_records_only_as_long_as_its_entries(
    redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore.from_url(redis_url, prefix=redis_prefix)
    try:
        # The same call twice (a redelivery after a failure): dropping its older place
        # keeps the record its newer place still needs.
        await store.append({"call_id": "rtc_again"}, {"call_id": "rtc_again", "n": 1})
        await store.append({"call_id": "rtc_again"}, {"call_id": "rtc_again", "n": 2})
        for index in range(999):
            call_id = f"rtc_{index}"
            await store.append({"call_id": call_id}, {"call_id": call_id})
        assert await store.call_record("rtc_again") == {"call_id": "rtc_again", "n": 2}
        await store.append({"call_id": "rtc_last"}, {"call_id": "rtc_last"})
        assert await store.call_record("rtc_again") is None
        records = await store.call_records(1000)
        assert len(records) == 1000
        assert records[0]["call_id"] == "rtc_last"
    finally:
        await store.aclose()


# ---- sip-router replay ---------------------------------------------------------------


def recorded(call_id: str, caller: str, created_at: int, rule: str, action: str) -> str:
    headers = [list(pair) for pair in sip_headers_for(caller, LINE)]
    return json.dumps(
        {
            "time": "2026-03-02T10:00:01+00:00",
            "call_id": call_id,
            "rule": rule,
            "action": action,
            "decision": {"rule": rule, "action": action},
            "inputs": {"created_at": created_at, "sip_headers": headers},
        }
    )


@pytest.fixture
def calls_file(tmp_path: Path) -> Path:
    path = tmp_path / "calls.jsonl"
    lines = [
        recorded("rtc_mon", CALLER, MONDAY, "default", "accept"),
        recorded("rtc_sun", CALLER, SUNDAY, "default", "accept"),
        json.dumps({"call_id": "rtc_old", "rule": "default", "action": "accept"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_replay_exit_0_when_nothing_changes(
    rules_dir: Path, calls_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["replay", str(rules_dir / "rules.yaml"), "--calls", str(calls_file)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("0 of 2 recorded calls decided differently (1 skipped")


def test_cli_replay_exit_1_and_lists_the_changes(
    rules_dir: Path, calls_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (rules_dir / "rules.yaml").write_text(WEEKEND_RULES, encoding="utf-8")
    code = cli_main(["replay", str(rules_dir / "rules.yaml"), "--calls", str(calls_file)])
    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 of 2 recorded calls decided differently")
    assert lines[1].split() == [
        "rtc_sun",
        "2026-03-02T10:00:01+00:00",
        "default",
        "accept",
        "->",
        "closed-on-weekends",
        "reject",
    ]
    assert (
        cli_main(["replay", str(rules_dir / "rules.yaml"), "--calls", str(calls_file), "--json"])
        == 1
    )
    report = json.loads(capsys.readouterr().out)
    assert [c["call_id"] for c in report["changed"]] == ["rtc_sun"]


def test_cli_replay_exit_2_when_the_candidate_does_not_load(
    rules_dir: Path, calls_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (rules_dir / "blocked.txt").unlink()
    code = cli_main(["replay", str(rules_dir / "rules.yaml"), "--calls", str(calls_file)])
    assert code == 2
    err = capsys.readouterr().err
    assert "rules.yaml:6: cannot read" in err


def test_cli_replay_reads_the_calls_of_a_running_service(
    rules_dir: Path, secret: str, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    app = build_app(settings_for(rules_dir, secret), fake, store=MemoryStore())
    candidate_path = rules_dir / "candidate.yaml"
    candidate_path.write_text(WEEKEND_RULES, encoding="utf-8")
    with serve_on_loopback(app) as url:
        for call_id, created_at in (("rtc_cli_mon", MONDAY), ("rtc_cli_sun", SUNDAY)):
            headers = sip_headers_for(CALLER, LINE)
            body = incoming_call_body(call_id, created_at, headers)
            signed = sign_delivery(secret, body, timestamp=int(time.time()))
            assert httpx.post(f"{url}/webhooks/openai", content=body, headers=signed).is_success
        args = ["replay", str(candidate_path), "--url", url, "--json"]
        changed = cli_main([*args, "--token", TOKEN])
        report = json.loads(capsys.readouterr().out)
        refused = cli_main([*args, "--token", "wrong"])
    assert changed == 1
    assert [c["call_id"] for c in report["changed"]] == ["rtc_cli_sun"]
    assert refused == 2
    assert "answered HTTP 401" in capsys.readouterr().err


CONSULT_RULES = """\
version: 1
defaults: {timezone: UTC, region: US}
profiles:
  desk: {model: gpt-realtime, instructions: "Hello."}
services:
  crm: {url: "https://crm.example.com/decide", timeout_s: 2}
rules:
  - name: ask-crm
    when: {caller: "+1415*"}
    consult: crm
default: {accept: {profile: desk}}
"""


def consulted_record(call_id: str, notes: list[dict[str, Any]], rule: str, action: str) -> Any:
    headers = [list(pair) for pair in sip_headers_for(CALLER, LINE)]
    return {
        "call_id": call_id,
        "entry": {"call_id": call_id, "rule": rule, "action": action, "consulted": notes},
        "decision": {"rule": rule, "action": action},
        "inputs": {"created_at": MONDAY, "sip_headers": headers},
    }


def test_replay_answers_consult_rules_with_the_recorded_answers_never_the_service() -> None:
    files = {"rules.yaml": CONSULT_RULES}
    candidate = load_ruleset("rules.yaml", source=UploadedRuleFiles(files, "rules.yaml"))
    rejected = {"service": "crm", "rule": "ask-crm", "outcome": "answered"}
    records = [
        consulted_record(
            "rtc_rejected",
            [{**rejected, "answer": {"action": "reject", "status_code": 486}}],
            "ask-crm",
            "reject",
        ),
        consulted_record(
            "rtc_unanswered",
            [{"service": "crm", "rule": "ask-crm", "outcome": "timeout"}],
            "default",
            "accept",
        ),
        # Recorded before the rule consulted anyone: replay does not ask, the default decides.
        consulted_record("rtc_before", [], "default", "accept"),
    ]
    report = replay_calls(candidate, records)
    assert (report.calls, report.changed) == (3, [])
    changed = replay_calls(
        candidate,
        [consulted_record("rtc_x", [{**rejected, "answer": {"action": "continue"}}], "x", "refer")],
    ).changed
    assert [(c.before, c.after) for c in changed] == [
        ({"rule": "x", "action": "refer"}, {"rule": "default", "action": "accept"})
    ]
