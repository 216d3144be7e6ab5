"""The calls process: the calls sip-router stays with, driven outside the service's process.

The service runs in process with `calls_process=True`; its calls process is a real child
process (`python -m app.calls_process_main`) that reaches the fake OpenAI (call endpoints
and the sideband) and the company's function over loopback. Its own link is tested by
starting it directly on a socket pair.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from app.calls.calls_process import CallsProcess
from app.calls.calls_process_link import LINE_LIMIT_BYTES, CallsConfig, decode, encode
from app.calls.cpu_priority import usable_cpus
from tests import test_call_control_end_to_end as end_to_end
from tests.fake_openai import AgentCallsFunction, AwaitClient, FakeOpenAI, HangUp, Pause
from tests.function_service import FunctionService
from tests.test_call_control_end_to_end import Replica, outputs, replica, settings_for

REPO_ROOT = Path(__file__).resolve().parent.parent
# The fake OpenAI on loopback and the company's function service of the end-to-end tests.
fake = end_to_end.fake
function_service = end_to_end.function_service


def calls_process_of(service: Replica) -> CallsProcess:
    keeper = service.app.state.services.processor._keeper
    assert isinstance(keeper, CallsProcess)
    return keeper


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.02)


def lives(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def greeted(fake: FakeOpenAI, call_id: str) -> bool:
    return any(e["type"] == "response.create" for e in fake.client_events_for(call_id))


async def test_a_call_is_driven_by_the_calls_process_and_its_end_recorded_here(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(
        call_id,
        [
            AwaitClient("response.create"),
            AgentCallsFunction("lookup_appointment", {"date_of_birth": "1980-02-03"}, "call_f"),
            AwaitClient("response.create", count=2),
            HangUp(),
        ],
    )
    settings = settings_for(tmp_path, fake, function_service)
    async with replica(settings, calls_process=True) as service:
        calls = calls_process_of(service)
        assert calls.pid is not None
        assert calls.pid != os.getpid()
        # Below the webhooks' priority where that cannot starve it (app/calls/cpu_priority.py).
        idle = usable_cpus() >= 2
        assert os.sched_getscheduler(calls.pid) == (os.SCHED_IDLE if idle else os.SCHED_OTHER)
        answer = await service.call(call_id=call_id)
        assert answer.json() == {"status": "processed", "call_id": call_id, "action": "accept"}
        # The call's later life, recorded by the calls process, joins this process's log.
        entry = await service.ended(call_id)
        # Nothing of the call ran here: this process's registry saw no sideband.
        connected = {"api": "realtime", "outcome": "connected"}
        assert service.metric("sip_router_sideband_connections_total", **connected) == 0

    assert entry["end_reason"] == "caller_hung_up"
    assert entry["duration_s"] >= 0
    assert outputs(fake, call_id) == [("call_f", {"next": "Tuesday 9:00"})]
    [(headers, _)] = function_service.requests
    assert headers["webhook-signature"].startswith("v1,")
    assert fake.verbs_for(call_id) == ["accept"]


async def test_stopping_hands_the_calls_over_and_the_calls_process_exits(
    tmp_path: Path,
    fake: FakeOpenAI,
    function_service: FunctionService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    call_id = "rtc_" + uuid4().hex
    fake.script_sideband(call_id, [AwaitClient("response.create"), Pause(60)])
    settings = settings_for(tmp_path, fake, function_service)
    with caplog.at_level(logging.INFO, logger="sip_router"):
        async with replica(settings, calls_process=True) as service:
            pid = calls_process_of(service).pid
            assert pid is not None
            await service.call(call_id=call_id)
            await wait_until(lambda: greeted(fake, call_id), 10, "the greeting")
    stopped = [r for r in caplog.records if r.getMessage() == "sip-router stopped"]
    assert [r.fields["calls_handed_over"] for r in stopped] == [1]  # type: ignore[attr-defined]
    assert not lives(pid)


async def test_a_killed_calls_process_is_started_again_with_the_calls_it_had_not_taken(
    tmp_path: Path, fake: FakeOpenAI, function_service: FunctionService
) -> None:
    before, during = "rtc_" + uuid4().hex, "rtc_" + uuid4().hex
    for call_id in (before, during):
        fake.script_sideband(call_id, [AwaitClient("response.create"), HangUp()])
    settings = settings_for(tmp_path, fake, function_service)
    async with replica(settings, calls_process=True) as service:
        calls = calls_process_of(service)
        first = calls.pid
        assert first is not None
        await service.call(call_id=before)
        await service.ended(before)
        # Accepted while the calls process hangs: its ticket is sent and never taken...
        os.kill(first, signal.SIGSTOP)
        answer = await service.call(call_id=during)
        assert answer.json()["action"] == "accept"
        # ...and goes to the next calls process once this one is gone.
        os.kill(first, signal.SIGKILL)
        entry = await service.ended(during, timeout_s=30)
        assert calls.pid not in (None, first)
    assert entry["end_reason"] == "caller_hung_up"
    assert len(fake.sideband_attempts_for(during)) == 1


# --- the calls process on its own socket pair ----------------------------------------------


class Link:
    def __init__(self, process: subprocess.Popen[bytes], reader: Any, writer: Any) -> None:
        self.process = process
        self.reader: asyncio.StreamReader = reader
        self.writer: asyncio.StreamWriter = writer

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(encode(message))

    async def receive(self, timeout_s: float = 10) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), timeout_s)
        assert line, "the calls process closed the link"
        return decode(line)

    async def exit_code(self, timeout_s: float = 15) -> int:
        return await asyncio.to_thread(self.process.wait, timeout_s)


@asynccontextmanager
async def calls_process(fake: FakeOpenAI) -> AsyncIterator[Link]:
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.calls_process_main", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    try:
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=LINE_LIMIT_BYTES)
        config = CallsConfig(
            openai_base_url=fake.base_url,  # type: ignore[attr-defined]
            openai_api_key="sk-test",
            outbound_secret=None,
            keep_transcripts=False,
            redis_url=None,
            action_deadline_s=2.0,
            log_format="json",
            log_level="info",
        )
        writer.write(encode({"type": "start", "config": config.to_json()}))
        link = Link(process, reader, writer)
        assert await link.receive(30) == {"type": "ready"}
        yield link
        writer.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_the_calls_process_exits_when_the_service_is_gone(fake: FakeOpenAI) -> None:
    async with calls_process(fake) as link:
        link.writer.close()  # the service's process died: its end of the pair closes
        assert await link.exit_code() == 0


async def test_the_calls_process_reads_past_what_it_cannot_read(fake: FakeOpenAI) -> None:
    async with calls_process(fake) as link:
        link.writer.write(b"not json\n")
        link.send({"no": "type"})
        link.send({"type": "ticket", "ticket": {"call_id": "rtc_bad", "unknown": 1}})
        link.send({"type": "ticket", "ticket": "rtc_not_an_object"})
        control = {"refer": {"no": "on_error"}}
        ticket = {"call_id": "rtc_nocontrol", "rule": "r", "profile": "p", "control": control}
        link.send({"type": "ticket", "ticket": ticket})
        link.send({"type": "added", "id": 12345, "ok": True})  # answers nothing it asked
        # Each ticket is answered, readable or not, so the service forgets it.
        taken = [await link.receive() for _ in range(3)]
        assert sorted(json.dumps(t["call_id"]) for t in taken) == sorted(
            json.dumps(c) for c in ("rtc_bad", None, "rtc_nocontrol")
        )
        link.send({"type": "stop"})
        assert await link.receive() == {"type": "stopped", "handed_over": 0}
        assert await link.exit_code() == 0


def test_the_calls_process_imports_neither_the_web_framework_nor_the_rules_engine() -> None:
    # Each worker has a calls process: what it imports is memory on every replica.
    heavy = ["fastapi", "starlette", "pydantic", "app.rules.ruleset", "phonenumbers", "holidays"]
    probe = (
        "import sys, app.calls_process_main; "
        f"print([name for name in {heavy!r} if name in sys.modules])"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert imported.stdout.strip() == "[]", imported.stdout
