"""The calls process's entry (`python -m app.calls_process_main FD`), started by the
service's process (app/calls/calls_process.py) with its end of a socket pair as FD.

It drives the calls it is handed until told to stop, or until the service's process is
gone (the socket closes): then it hands every call over and exits. Stop signals are the
service's to act on, not this process's (a Ctrl-C reaches the whole process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import sys
from collections.abc import Coroutine, Mapping
from typing import Any

from app.calls.call_attendant import CallAttendant
from app.calls.call_ownership import CallTicket
from app.calls.calls_process_link import LINE_LIMIT_BYTES, CallsConfig, encode, read_messages
from app.calls.cpu_priority import yield_to_webhooks
from app.calls_wiring import calls_process_attendant, tuned_collector
from app.log_format import configure_logging
from app.store import StoreUnavailable

log = logging.getLogger("sip_router.sideband")

# How long a call's later life waits for the service's process to record it.
RECORD_ANSWER_WITHIN_S = 10.0


class ServiceCallLog:
    """The call log as the calls process sees it: `add_to_call` asks the service's process."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def add_to_call(self, call_id: str, fields: Mapping[str, Any]) -> bool:
        number = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        try:
            message = {"type": "add_to_call", "id": number, "call_id": call_id, "fields": fields}
            self._writer.write(encode(message))
            await self._writer.drain()
            result = await asyncio.wait_for(answer, RECORD_ANSWER_WITHIN_S)
        except (TimeoutError, ConnectionError) as exc:
            raise StoreUnavailable("the service's process did not answer") from exc
        finally:
            self._waiting.pop(number, None)
        if result.get("unavailable"):
            raise StoreUnavailable("the store is unavailable")
        return result.get("ok") is True

    def answered(self, message: Mapping[str, Any]) -> None:
        waiting = self._waiting.get(message.get("id"))  # type: ignore[arg-type]
        if waiting is not None and not waiting.done():
            waiting.set_result(dict(message))

    def fail_waiting(self) -> None:
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the service's process is gone"))


async def serve_calls(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT_BYTES)
    incoming = read_messages(reader, "the service's process")
    first = await anext(incoming, None)
    if first is None:
        return
    config = CallsConfig.from_json(first["config"])
    configure_logging(config.log_format, config.log_level)
    priority = yield_to_webhooks()
    log.info("calls process started", extra={"fields": {"cpu_priority": priority}})
    call_log = ServiceCallLog(writer)
    attendant, close = calls_process_attendant(config, call_log)
    starting: set[asyncio.Task[None]] = set()
    await attendant.start()
    with tuned_collector():
        writer.write(encode({"type": "ready"}))
        async for message in incoming:
            kind = message["type"]
            if kind == "ticket":
                task = asyncio.create_task(_attend(attendant, message.get("ticket"), writer))
                starting.add(task)
                task.add_done_callback(starting.discard)
            elif kind == "added":
                call_log.answered(message)
            elif kind == "stop":
                break
        # Handed over: their leases are released, another replica takes them.
        if starting:
            await asyncio.wait(starting)
        handed_over = await attendant.stop()
        call_log.fail_waiting()
        with contextlib.suppress(ConnectionError):
            writer.write(encode({"type": "stopped", "handed_over": handed_over}))
            await writer.drain()
        writer.close()
        await close()


async def _attend(attendant: CallAttendant, data: object, writer: asyncio.StreamWriter) -> None:
    """Take one call: drive it (or leave it to the replica that owns it), then say so."""
    call_id = data.get("call_id") if isinstance(data, dict) else None
    try:
        try:
            ticket = CallTicket(**data) if isinstance(data, dict) else None
        except TypeError:
            ticket = None
        if ticket is None:
            log.error("the service's process sent a ticket that cannot be read")
            return
        await attendant.attend(ticket)
    except Exception:  # one call's failure is that call's, never the process's
        log.exception("could not take a call", extra={"fields": {"call_id": call_id}})
    finally:
        if not writer.is_closing():
            writer.write(encode({"type": "taken", "call_id": call_id}))


def main(argv: list[str]) -> int:
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    run_event_loop(serve_calls(sock))
    return 0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop, the service's own event loop under `serve` (uvicorn picks it
    where it is installed), or on asyncio's where it is not."""
    try:
        import uvloop
    except ImportError:  # not on Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
