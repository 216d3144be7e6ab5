"""Hot reload of the rules: validate fully, swap atomically, keep the old rules on failure."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.app_factory import create_app
from app.metrics import Metrics
from app.rules.problems import RuleFileError
from app.rules.simulation import run_rule_tests, simulated_context
from app.rules_reloading import RulesHolder, load_checked_ruleset, load_in_process
from app.settings import Settings
from app.webhook_signing import signed_test_call
from tests.fake_openai import MOCK_BASE_URL, FakeOpenAI

WALL_CLOCK = 1_780_000_000.0  # 2026-05-28, a fixed "now" for tests without `at`
NOW = datetime.fromtimestamp(WALL_CLOCK, tz=UTC)

RULES = """\
version: 1
defaults: {region: US}
lists:
  blocked: {file: lists/blocked.txt}
rules:
  - name: blocked
    when: {caller: {in: blocked}}
    reject: {status_code: 603}
default: {reject: {status_code: 486}}
tests:
  - {from: "+12025550199", to: "+14155550100", expect: blocked}
"""

BLOCKED = "# robocallers\n+12025550199\n"


def rewrite(path: Path, text: str) -> None:
    """Write `text` and move the mtime on, so a change is visible even within one tick."""
    before = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    later = before + 1_000_000_000
    os.utime(path, ns=(later, later))


def rules_dir(tmp_path: Path, rules: str = RULES, blocked: str = BLOCKED) -> Path:
    rewrite(tmp_path / "lists" / "blocked.txt", blocked)
    rewrite(tmp_path / "rules.yaml", rules)
    return tmp_path / "rules.yaml"


def reloads(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("sip_router_rules_reloads_total", {"result": result})
    return value or 0.0


def ruleset_info(metrics: Metrics) -> dict[str, float]:
    return {
        sample.labels["version"]: sample.value
        for metric in metrics.registry.collect()
        if metric.name == "sip_router_ruleset_info"
        for sample in metric.samples
    }


def holder_for(path: Path) -> tuple[RulesHolder, Metrics]:
    metrics = Metrics()
    holder = RulesHolder(path, metrics, wall_clock=lambda: WALL_CLOCK)
    holder.load_now()
    return holder, metrics


def decided_status(holder: RulesHolder, caller: str) -> Any:
    ruleset = holder.current
    assert ruleset is not None
    ctx = simulated_context(ruleset, caller, "+14155550100", NOW)
    return ruleset.decide(ctx).body["status_code"]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- RulesHolder --------------------------------------------------------------------------


async def test_reload_swaps_keeps_old_rules_on_error_and_recovers(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    holder, metrics = holder_for(path)
    first = holder.status()
    assert first.version is not None
    assert first.last_error is None
    assert first.files == (str(path), str(tmp_path / "lists" / "blocked.txt"))
    assert ruleset_info(metrics) == {first.version: 1.0}

    rewrite(path, RULES.replace("486", "480"))
    second = await holder.reload("test")
    assert second.version != first.version
    assert holder.current is second
    assert decided_status(holder, "+14155550123") == 480
    assert reloads(metrics, "ok") == 1
    assert ruleset_info(metrics) == {second.version: 1.0}

    broken = RULES.replace("480", "486").replace("status_code: 603", "status_code: 999")
    rewrite(path, broken)
    with pytest.raises(RuleFileError) as caught:
        await holder.reload("test")
    assert str(caught.value.problems[0]).startswith(f"{path}:8: ")
    assert holder.current is second
    assert decided_status(holder, "+14155550123") == 480
    status = holder.status()
    assert status.version == second.version
    assert status.last_error is not None
    assert status.last_error.startswith(f"{path}:8: ")
    assert reloads(metrics, "error") == 1
    assert reloads(metrics, "ok") == 1
    assert ruleset_info(metrics) == {second.version: 1.0}

    rewrite(path, RULES)
    recovered = await holder.reload("test")
    assert recovered.version == first.version
    assert holder.status().last_error is None
    assert decided_status(holder, "+14155550123") == 486
    assert reloads(metrics, "ok") == 2


async def test_a_failing_tests_case_makes_the_reload_fail(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    holder, metrics = holder_for(path)
    before = holder.current
    rewrite(tmp_path / "lists" / "blocked.txt", "# emptied by mistake\n")
    with pytest.raises(RuleFileError) as caught:
        await holder.reload("test")
    problem = caught.value.problems[0]
    assert str(problem).startswith(f"{path}:11: test ")
    assert "expected rule blocked" in problem.message
    assert holder.current is before
    assert reloads(metrics, "error") == 1


async def test_a_failed_reload_reports_every_problem(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    holder, _ = holder_for(path)
    broken = (
        RULES.replace("defaults: {region: US}", "defaults: {region: US, timezone: Europe/Berln}")
        .replace("status_code: 603", "status_code: 999")
        .replace("status_code: 486}}", "status_code: 486}, accept: {profile: desk}}")
        .replace(
            "    when: {caller: {in: blocked}}", "    when: {caller: {in: blocked}}\n    x: 08:30"
        )
    )
    rewrite(path, broken)
    with pytest.raises(RuleFileError) as caught:
        await holder.reload("test")
    lines = [str(p) for p in caught.value.problems]
    assert len(lines) == 5, lines
    assert lines[0].startswith(f"{path}:2: unknown time zone 'Europe/Berln'")
    assert lines[1].startswith(f"{path}:8: ")
    assert "08:30" in lines[1]
    assert lines[2] == f"{path}:8: rule 'blocked': unknown key 'x'"
    assert lines[3].startswith(f"{path}:9: rule 'blocked' reject.status_code: ")
    assert lines[4].startswith(f"{path}:10: default: takes exactly one of accept, refer, reject")
    status = holder.status()
    assert status.last_error is not None
    assert status.last_error.splitlines() == lines


def test_load_checked_ruleset_runs_the_tests(tmp_path: Path) -> None:
    path = rules_dir(tmp_path, RULES.replace("expect: blocked", "expect: default"))
    with pytest.raises(RuleFileError, match="expected rule default, got reject by blocked"):
        load_checked_ruleset(path, NOW)


def test_changed_files_notices_every_file_read(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    holder, _ = holder_for(path)
    assert not holder.changed_files()
    rewrite(tmp_path / "unrelated.txt", "not referenced")
    assert not holder.changed_files()
    rewrite(tmp_path / "lists" / "blocked.txt", BLOCKED + "+12025550188\n")
    assert holder.changed_files()
    holder.load_now()
    assert not holder.changed_files()
    (tmp_path / "lists" / "blocked.txt").unlink()
    assert holder.changed_files()


async def test_watcher_reloads_by_itself(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    holder, metrics = holder_for(path)
    first = holder.status().version
    watcher = asyncio.create_task(holder.watch(interval_s=0.05))
    try:
        rewrite(tmp_path / "lists" / "blocked.txt", BLOCKED + "+14155550123\n")
        await wait_for(lambda: holder.status().version != first)
        assert decided_status(holder, "+14155550123") == 603

        rewrite(path, RULES.replace("status_code: 603", "status_code: 6033"))
        await wait_for(lambda: reloads(metrics, "error") == 1)
        await asyncio.sleep(0.3)  # several ticks: a broken file is not retried every tick
        assert reloads(metrics, "error") == 1
        assert decided_status(holder, "+14155550123") == 603

        rewrite(path, RULES.replace("486", "480"))
        await wait_for(lambda: holder.status().last_error is None)
        assert decided_status(holder, "+12025550199") == 603
        assert decided_status(holder, "+16505550123") == 480
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def configmap_generation(volume: Path, name: str, blocked: str) -> None:
    """Lay out one ConfigMap generation and point `..data` at it atomically, as kubelet does."""
    generation = volume / name
    generation.mkdir()
    (generation / "rules.yaml").write_text(RULES.replace("lists/blocked.txt", "blocked.txt"))
    (generation / "blocked.txt").write_text(blocked)
    staged = volume / "..data_tmp"
    staged.symlink_to(name)
    os.replace(staged, volume / "..data")
    for key in ("rules.yaml", "blocked.txt"):
        if not (volume / key).is_symlink():
            (volume / key).symlink_to(Path("..data") / key)


async def test_configmap_symlink_swap_is_noticed(tmp_path: Path) -> None:
    volume = tmp_path / "rules"
    volume.mkdir()
    configmap_generation(volume, "..2026_01_01_00_00_00.1", BLOCKED)
    holder, metrics = holder_for(volume / "rules.yaml")
    first = holder.status().version
    assert decided_status(holder, "+14155550123") == 486

    configmap_generation(volume, "..2026_01_02_00_00_00.2", BLOCKED + "+14155550123\n")
    shutil.rmtree(volume / "..2026_01_01_00_00_00.1")
    assert holder.changed_files()

    watcher = asyncio.create_task(holder.watch(interval_s=0.05))
    try:
        await wait_for(lambda: holder.status().version != first)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert decided_status(holder, "+14155550123") == 603
    assert reloads(metrics, "ok") == 1
    assert not holder.changed_files()


async def test_list_file_created_after_a_failed_reload_is_noticed(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    holder, _ = holder_for(path)
    with_vip = RULES.replace("lists:\n", "lists:\n  vip: {file: lists/vip.txt}\n").replace(
        "rules:\n",
        "rules:\n  - {name: vip, when: {caller: {in: vip}}, reject: {status_code: 480}}\n",
    )
    rewrite(path, with_vip)
    with pytest.raises(RuleFileError, match=r"vip\.txt"):
        await holder.reload("file changed")
    rewrite(tmp_path / "lists" / "vip.txt", "+14155550123\n")
    assert holder.changed_files()


# --- through the app ----------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"reload-tests-secret-0123456789ab").decode()
ADMIN = {"authorization": "Bearer admin-token"}


@contextlib.asynccontextmanager
async def running_app(
    rules: Path, fake: FakeOpenAI, **fields: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        _env_file=None,
        **fields,
        openai_api_key="sk-test",
        openai_webhook_secret=SECRET,
        openai_base_url=MOCK_BASE_URL,
        rules=rules,
        dry_run=False,
        admin_token="admin-token",
        action_deadline_s=1.0,
    )
    app = create_app(settings, transport=fake.mock_transport(), watch_interval_s=None)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sip-router") as client:
            yield client


async def call(client: httpx.AsyncClient, caller: str) -> dict[str, Any]:
    delivery = signed_test_call(SECRET, caller, "+14155550100", now=int(time.time()))
    response = await client.post(
        "/webhooks/openai", content=delivery.body, headers=delivery.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["call_id"] == delivery.call_id
    return body


async def test_admin_reload_and_decisions_carry_the_ruleset_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sip_router")
    path = rules_dir(tmp_path)
    fake = FakeOpenAI("sk-test")
    async with running_app(path, fake) as client:
        first = (await client.get("/admin/rules", headers=ADMIN)).json()["version"]
        before = await call(client, "+14155550123")
        assert before["status"] == "processed"
        assert fake.requests_for(before["call_id"])[0].body == {"status_code": 486}

        rewrite(path, RULES.replace("486", "480"))
        reloaded = await client.post("/admin/reload", headers=ADMIN)
        assert reloaded.status_code == 200
        second = reloaded.json()["version"]
        assert reloaded.json()["status"] == "ok"
        assert second != first
        assert (await client.get("/admin/rules", headers=ADMIN)).json()["version"] == second
        after = await call(client, "+14155550123")
        assert fake.requests_for(after["call_id"])[0].body == {"status_code": 480}

        rewrite(path, RULES.replace("status_code: 603", "status_code: 399"))
        refused = await client.post("/admin/reload", headers=ADMIN)
        assert refused.status_code == 422
        errors = refused.json()["errors"]
        assert len(errors) == 1
        assert errors[0].startswith(f"{path}:8: ")
        rules = (await client.get("/admin/rules", headers=ADMIN)).json()
        assert rules["version"] == second
        assert rules["last_error"].startswith(f"{path}:8: ")
        still = await call(client, "+12025550199")
        assert fake.requests_for(still["call_id"])[0].body == {"status_code": 603}

        metrics_text = (await client.get("/metrics")).text
        assert 'sip_router_rules_reloads_total{result="ok"} 1.0' in metrics_text
        assert 'sip_router_rules_reloads_total{result="error"} 1.0' in metrics_text
        assert f'sip_router_ruleset_info{{version="{second}"}} 1.0' in metrics_text

        calls = (await client.get("/admin/calls?limit=10", headers=ADMIN)).json()["calls"]
        by_call = {entry["call_id"]: entry["ruleset"] for entry in calls}
        assert by_call == {
            before["call_id"]: first,
            after["call_id"]: second,
            still["call_id"]: second,
        }
    logged = {
        r.fields["call_id"]: r.fields["ruleset"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "sip_router.webhook" and "call_id" in getattr(r, "fields", {})
    }
    assert logged == by_call


# --- the load runs in its own process, with a time and a memory limit ------------------------


def test_a_reload_in_its_own_process_gives_the_same_ruleset() -> None:
    """Compiled parts (templates, regexes, lists, holiday calendars) survive the trip back."""
    path = Path("routing_rules/rules.yaml")
    here = load_checked_ruleset(path, NOW)
    there = load_in_process(path, NOW)
    assert there.version == here.version
    assert there.files == here.files
    assert [r.name for r in there.rules] == [r.name for r in here.rules]
    assert all(result.passed for result in run_rule_tests(there, NOW))
    for caller in ("+12025550199", "+14155550123", "anonymous"):
        ctx = simulated_context(here, caller, "+14155550100", NOW)
        assert there.decide(ctx).rule == here.decide(ctx).rule
        assert there.decide(ctx).body == here.decide(ctx).body


async def test_a_load_over_its_time_limit_is_a_counted_reload_error_not_retried(
    tmp_path: Path,
) -> None:
    path = rules_dir(tmp_path)
    metrics = Metrics()
    holder = RulesHolder(path, metrics, wall_clock=lambda: WALL_CLOCK, load_timeout_s=0.001)
    holder.load_now()
    first = holder.status().version
    watcher = asyncio.create_task(holder.watch(interval_s=0.05))
    try:
        rewrite(path, RULES.replace("486", "480"))
        await wait_for(lambda: reloads(metrics, "error") == 1)
        await asyncio.sleep(0.3)  # several ticks: unchanged files are not loaded again
        assert reloads(metrics, "error") == 1
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    status = holder.status()
    assert status.version == first
    assert status.last_error == f"{path}: loading took longer than 0.001 s; stopped"
    assert decided_status(holder, "+14155550123") == 486


async def test_the_reload_limits_are_settings(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    async with running_app(
        path, FakeOpenAI("sk-test"), reload_timeout_s=0.001, reload_memory_mb=100
    ) as client:
        rewrite(path, RULES.replace("486", "480"))
        response = await client.post(
            "/admin/reload", headers={"Authorization": "Bearer admin-token"}
        )
    assert response.status_code == 422
    assert response.json()["errors"] == [f"{path}: loading took longer than 0.001 s; stopped"]


async def test_a_load_over_its_memory_limit_is_a_counted_reload_error(tmp_path: Path) -> None:
    # 2,000,000 numbers fit the size caps (27 MB) but not 256 MiB of address space.
    numbers = "".join(f"+1202{n:07d}\n" for n in range(2_000_000))
    path = rules_dir(tmp_path)
    metrics = Metrics()
    holder = RulesHolder(
        path, metrics, wall_clock=lambda: WALL_CLOCK, load_memory_bytes=256 * 1024**2
    )
    holder.load_now()
    rewrite(tmp_path / "lists" / "blocked.txt", numbers)
    with pytest.raises(RuleFileError) as caught:
        await holder.reload("file changed")
    assert reloads(metrics, "error") == 1
    assert holder.status().last_error == str(caught.value)
    assert str(caught.value) in (
        f"{path}: loading needs more than 256 MiB of memory; stopped",
        # Memory can run out where no answer can be sent any more.
        f"{path}: the loading process ended without an answer (exit code 1)",
    )
    assert decided_status(holder, "+12025550199") == 603


async def test_dev_zero_as_instructions_file_is_a_reported_reload_error(tmp_path: Path) -> None:
    path = rules_dir(tmp_path)
    fake = FakeOpenAI("sk-test")
    async with running_app(path, fake) as client:
        (tmp_path / "prompt.md").symlink_to("/dev/zero")
        rewrite(
            path,
            RULES.replace(
                "default: {reject: {status_code: 486}}",
                "profiles:\n  desk: {model: gpt-realtime, instructions_file: prompt.md}\n"
                "default: {accept: {profile: desk}}",
            ).replace(
                'tests:\n  - {from: "+12025550199", to: "+14155550100", expect: blocked}\n', ""
            ),
        )
        refused = await client.post("/admin/reload", headers=ADMIN)
        assert refused.status_code == 422
        expected = f"{path}:10: cannot read {tmp_path}/prompt.md: outside the rule file's folder"
        assert refused.json()["errors"] == [expected]
        rules = (await client.get("/admin/rules", headers=ADMIN)).json()
        assert rules["last_error"] == expected
        metrics_text = (await client.get("/metrics")).text
        assert 'sip_router_rules_reloads_total{result="error"} 1.0' in metrics_text
