"""Open-loop load generator: pre-signed webhooks sent at fixed times over a keep-alive pool.

Every request is built and signed before the clock starts. Request i is due at
`start + i / rate`; its latency is measured from that due time (not from when it was
actually written), so a slow server cannot slow the generator down and hide its own
delay (no coordinated omission). Runs as its own process; writes one JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import time
from collections import deque
from pathlib import Path

from bench.calls import PreparedCall, prepare_calls


class Results:
    def __init__(self, count: int) -> None:
        self.sent = [0.0] * count
        self.done = [0.0] * count
        self.http_status = [0] * count
        self.answer = [""] * count


_STATUS = re.compile(rb'"status"\s*:\s*"([^"]*)"')


def _answer_status(body: bytes) -> str:
    found = _STATUS.search(body)
    return found.group(1).decode("ascii", "replace") if found else ""


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.current = -1
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport  # type: ignore[assignment]

    def send(self, index: int) -> None:
        assert self.transport is not None
        self.current = index
        self.transport.write(self.pool.calls[index].request)
        self.pool.results.sent[index] = time.time()

    def data_received(self, data: bytes) -> None:
        if self.current < 0:
            assert self.transport is not None
            self.transport.close()  # an answer nobody asked for
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        length = -1
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        status_line = head[0].split(" ", 2)
        if length < 0 or len(status_line) < 2 or not status_line[1].isdigit():
            # Only content-length framed answers are expected; anything else is an error.
            assert self.transport is not None
            self.transport.close()
            return
        if len(self.buffer) < end + 4 + length:
            return
        now = time.time()
        index, self.current = self.current, -1
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = b""
        results = self.pool.results
        results.done[index] = now
        results.http_status[index] = int(status_line[1])
        results.answer[index] = _answer_status(body)
        self.pool.finished(index, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.current >= 0:
            self.pool.results.answer[self.current] = "connection lost or unreadable answer"
            self.pool.finished(self.current, None)
        self.pool.lost(self)


class Pool:
    def __init__(
        self, calls: list[PreparedCall], host: str, port: int, max_connections: int
    ) -> None:
        self.calls = calls
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.results = Results(len(calls))
        # Round-robin over idle connections (oldest first), as a sender's pool spreads
        # requests; a stack would pin the load on a few connections, so on one worker.
        self.idle: deque[Connection] = deque()
        self.waiting: deque[int] = deque()
        self.open = 0
        self.opened = 0
        self.outstanding = 0
        self.all_done = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    async def preopen(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
            self.open += 1
            self.opened += 1
            self.idle.append(conn)

    def submit(self, index: int) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.popleft().send(index)
        elif self.open < self.max_connections:
            self.open += 1
            task = asyncio.get_running_loop().create_task(self._connect_and_send(index))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.waiting.append(index)

    async def _connect_and_send(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError as exc:
            self.open -= 1
            self.results.answer[index] = f"connect failed: {exc.strerror}"
            self.finished(index, None)
            return
        self.opened += 1
        conn.send(index)

    def finished(self, index: int, conn: Connection | None) -> None:
        self.outstanding -= 1
        if conn is not None:
            if self.waiting:
                conn.send(self.waiting.popleft())
            else:
                self.idle.append(conn)
        if self.outstanding == 0:
            self.all_done.set()

    def lost(self, conn: Connection) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)


async def generate(
    calls: list[PreparedCall],
    *,
    host: str,
    port: int,
    rate: float,
    max_connections: int,
    preopen: int,
    drain_s: float,
) -> dict[str, object]:
    pool = Pool(calls, host, port, max_connections)
    await pool.preopen(preopen)
    interval = 1.0 / rate
    mono0 = time.monotonic() + 0.05
    wall0 = time.time() + (mono0 - time.monotonic())
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    index = 0
    total = len(calls)
    while index < total:
        now = time.monotonic()
        while index < total and mono0 + index * interval <= now:
            pool.submit(index)
            index += 1
        if index < total:
            delay = mono0 + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    if pool.outstanding:
        pool.all_done.clear()
    else:
        pool.all_done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(pool.all_done.wait(), drain_s)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    loop_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    results = pool.results
    for i in range(total):
        if results.done[i] == 0.0 and not results.answer[i]:
            results.answer[i] = "timeout"
    return {
        "wall0": wall0,
        "interval": interval,
        "cpu_s": loop_cpu,
        "connections_opened": pool.opened,
        "calls": [
            [
                calls[i].call_id,
                calls[i].kind,
                wall0 + i * interval,
                results.sent[i],
                results.done[i],
                results.http_status[i],
                results.answer[i],
            ]
            for i in range(total)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="webhooks per second")
    parser.add_argument("--duration", type=float, required=True, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--connections", type=int, default=512, help="pool limit")
    parser.add_argument("--preopen", type=int, default=32)
    # OpenAI gives up on a webhook after a few seconds: a later answer counts as none.
    parser.add_argument("--drain", type=float, default=5.0, help="wait for answers after")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    host = args.host
    if host not in ("127.0.0.1", "localhost"):
        parser.error("the load generator only targets loopback")
    warm = int(args.rate * args.warmup)
    total = warm + int(args.rate * args.duration)
    prep_start = time.time()
    # Signed with the second each request is due in (plus the preparation time).
    timestamps = [int(prep_start + i / args.rate) for i in range(total)]
    calls = prepare_calls(
        total, secret=args.secret, host=f"{host}:{args.port}", timestamps=timestamps, seed=args.seed
    )
    prep_s = time.time() - prep_start
    result = asyncio.run(
        generate(
            calls,
            host=host,
            port=args.port,
            rate=args.rate,
            max_connections=args.connections,
            preopen=args.preopen,
            drain_s=args.drain,
        )
    )
    result.update(
        {"rate": args.rate, "duration": args.duration, "warmup_count": warm, "prep_s": prep_s}
    )
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
