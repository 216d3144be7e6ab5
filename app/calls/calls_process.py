"""The calls process: the calls sip-router stays with, driven outside the service's process.

A call's sideband (events in, function calls out, the company's answers read) is steady
work; in the process that answers webhooks it delays decisions while callers wait. So
each replica (each worker of `serve --workers N`) starts one calls process
(app/calls_process_main.py) and hands it every call accepted to stay with. The calls
process owns the calls' leases, drives them and hands them over; what it records of a
call's later life comes back here to the call log, and its metrics are written to the
multiprocess directory that /metrics reads.

If the calls process dies it is started again (backoff up to 10 s): with Redis, the calls
it drove are taken over when their leases run out, by it or by another replica; with the
in-memory store they are left to OpenAI (the agent goes on without sip-router).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess
from websockets.client import backoff

from app.calls.call_attendant import AcceptedDecision, call_ticket
from app.calls.calls_process_link import (
    LINE_LIMIT_BYTES,
    CallsConfig,
    encode,
    read_messages,
)
from app.store import CallLog, StoreUnavailable

log = logging.getLogger("sip_router.sideband")

# Calls accepted while the calls process is (re)starting wait for it, up to this many.
MAX_WAITING_TICKETS = 10_000
# What may wait unread in the socket pair before a new call is refused: a stuck process.
MAX_UNREAD_BYTES = 16 * 1024 * 1024
# Restarts of a calls process that keeps dying back off (up to 10 s apart), and start
# over after a long run.
RAN_LONG_ENOUGH_S = 60.0
EXIT_WITHIN_S = 5.0
MAIN_MODULE = "app.calls_process_main"


class CallsProcess:
    """This replica's calls process: started with the service, started again if it dies,
    handed the calls accepted here, and stopped (its calls handed over) at shutdown."""

    def __init__(
        self,
        config: CallsConfig,
        *,
        call_log: CallLog,
        metrics_dir: str | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._call_log = call_log
        self._metrics_dir = metrics_dir
        self._wall_clock = wall_clock
        self._waiting: deque[_Ticket] = deque()
        # Tickets sent and not yet taken: sent again (once) to the next calls process if
        # this one dies first.
        self._untaken: dict[str, _Ticket] = {}
        # The link to the running calls process (it takes tickets once `_ready` is set).
        self._link: asyncio.StreamWriter | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped: asyncio.Future[int] | None = None
        self._replies: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        """The running calls process's pid (None between restarts)."""
        return self._process.pid if self._process is not None else None

    async def start(self, ready_within_s: float = 30.0) -> None:
        """Start the calls process and wait (at most `ready_within_s`) until it is ready;
        calls accepted before then wait for it."""
        self._supervisor = asyncio.create_task(self._supervise())
        try:
            await asyncio.wait_for(self._ready.wait(), ready_within_s)
        except TimeoutError:
            log.error(
                "the calls process is not ready yet; accepted calls wait for it",
                extra={"fields": {"waited_s": ready_within_s}},
            )

    async def stay_with(
        self,
        call_id: str,
        decision: AcceptedDecision,
        caller: Mapping[str, Any],
        called: Mapping[str, Any],
    ) -> None:
        """Hand a call just accepted for `decision` to the calls process (returns at once)."""
        made = call_ticket(
            call_id,
            decision,
            caller,
            called,
            now=self._wall_clock(),
            keep_transcripts=self._config.keep_transcripts,
        )
        if made is None:
            return
        line = encode({"type": "ticket", "ticket": asdict(made[0])})
        self._send_ticket(_Ticket(call_id, line))

    def _send_ticket(self, ticket: _Ticket) -> None:
        writer = self._link if self._ready.is_set() else None
        if writer is None:
            if len(self._waiting) >= MAX_WAITING_TICKETS:
                _not_stayed_with(ticket.call_id, "the calls process is not running")
                return
            self._waiting.append(ticket)
            return
        if writer.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            _not_stayed_with(ticket.call_id, "the calls process is not keeping up")
            return
        self._untaken[ticket.call_id] = ticket
        writer.write(ticket.line)

    async def stop(self, within_s: float = 30.0) -> int:
        """Have the calls process hand its calls over and exit; how many it handed over."""
        self._stopping.set()
        handed_over = 0
        if self._link is not None:  # also one still starting: it reads `stop` once started
            self._stopped = asyncio.get_running_loop().create_future()
            self._link.write(encode({"type": "stop"}))
            try:
                handed_over = await asyncio.wait_for(asyncio.shield(self._stopped), within_s)
            except TimeoutError:
                log.error("the calls process did not hand its calls over in time")
        if self._supervisor is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._supervisor), EXIT_WITHIN_S * 2)
            except TimeoutError:
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._supervisor
        for reply in list(self._replies):
            reply.cancel()
        never_taken = len(self._waiting) + len(self._untaken)
        if never_taken:
            log.error(
                "accepted calls were never taken by a calls process: not stayed with",
                extra={"fields": {"calls": never_taken}},
            )
        return handed_over

    async def _supervise(self) -> None:
        delays = _restart_delays()
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                code = await self._run_once()
            except OSError as exc:
                log.error(
                    "could not start the calls process", extra={"fields": {"error": str(exc)}}
                )
                code = None
            if self._stopping.is_set():
                return
            if time.monotonic() - started > RAN_LONG_ENOUGH_S:
                delays = _restart_delays()
            delay_s = next(delays)
            log.error(
                "the calls process ended; starting it again",
                extra={"fields": {"exit_code": code, "restart_in_s": delay_s}},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def _run_once(self) -> int | None:
        """Run one calls process until it exits; its exit code."""
        ours, theirs = socket.socketpair()
        try:
            # subprocess, not asyncio's: under uvloop that one leaves every inheritable
            # descriptor open in the child, the service's listening sockets among them.
            process = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-m", MAIN_MODULE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=_child_environment(),
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._process = process
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=LINE_LIMIT_BYTES)
            writer.write(encode({"type": "start", "config": self._config.to_json()}))
            self._link = writer
            try:
                await self._listen(reader, writer)
            finally:
                self._link = None
                self._ready.clear()
                writer.close()
                self._resend_untaken()
            return await _exit_code(process)
        finally:
            if process.poll() is None:  # cancelled: not left running on its own
                process.kill()
                await asyncio.to_thread(process.wait)
            self._process = None
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(0)
            if self._metrics_dir is not None:
                # Its gauges (active calls) are no longer anybody's.
                multiprocess.mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for message in read_messages(reader, "the calls process"):
            kind = message["type"]
            if kind == "ready":
                self._ready.set()
                while self._waiting:
                    self._send_ticket(self._waiting.popleft())
                log.info("calls process ready", extra={"fields": {"pid": self.pid}})
            elif kind == "taken":
                self._untaken.pop(str(message.get("call_id")), None)
            elif kind == "add_to_call":
                reply = asyncio.create_task(self._add_to_call(message, writer))
                self._replies.add(reply)
                reply.add_done_callback(self._replies.discard)
            elif kind == "stopped" and self._stopped is not None and not self._stopped.done():
                handed_over = message.get("handed_over")
                self._stopped.set_result(handed_over if isinstance(handed_over, int) else 0)

    def _resend_untaken(self) -> None:
        """What the calls process that died had not taken goes to the next one first; a
        ticket two processes died with is not sent a third time."""
        again = [t for t in self._untaken.values() if not t.resent]
        for ticket in self._untaken.values():
            if ticket.resent:
                _not_stayed_with(ticket.call_id, "two calls processes died with the call")
        self._untaken.clear()
        self._waiting.extendleft(reversed([replace(t, resent=True) for t in again]))

    async def _add_to_call(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        answer: dict[str, Any] = {"type": "added", "id": message.get("id")}
        call_id, fields = message.get("call_id"), message.get("fields")
        if not isinstance(call_id, str) or not isinstance(fields, dict):
            answer["ok"] = False
        else:
            try:
                answer["ok"] = await self._call_log.add_to_call(call_id, fields)
            except StoreUnavailable:
                answer["unavailable"] = True
        if not writer.is_closing():
            writer.write(encode(answer))


@dataclass(frozen=True, slots=True)
class _Ticket:
    call_id: str
    line: bytes
    resent: bool = False


def _not_stayed_with(call_id: str, why: str) -> None:
    log.error(f"{why}: an accepted call is not stayed with", extra={"fields": {"call_id": call_id}})


def _restart_delays() -> Iterator[float]:
    return backoff(initial_delay=0.5, min_delay=0.5, max_delay=10.0)


def _child_environment() -> dict[str, str]:
    """This process's environment, with sip-router's package importable wherever it runs."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


async def _exit_code(process: subprocess.Popen[bytes]) -> int:
    """Its exit code once it has exited (killed if it outlives EXIT_WITHIN_S)."""
    try:
        return await asyncio.to_thread(process.wait, EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return await asyncio.to_thread(process.wait)
