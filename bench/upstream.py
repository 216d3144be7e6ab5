"""A cheap loopback stand-in for OpenAI's call endpoints that records arrival times.

Raw asyncio HTTP/1.1 with keep-alive: every `POST /v1/realtime/calls/{call_id}/{verb}`
is answered `200` with an empty body (as accept does) and recorded as
`(call_id, verb, wall-clock arrival)`. `GET /__records` returns the records as JSON
lines and forgets them. No validation: its cost must stay far below the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ncontent-type: application/json\r\n\r\n"
_PREFIX = "/v1/realtime/calls/"


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, float]] = []

    def dump(self) -> bytes:
        lines = [json.dumps({"call_id": c, "verb": v, "at": t}) for c, v, t in self.records]
        self.records = []
        return ("\n".join(lines) + "\n").encode() if lines else b""


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are parsed from a byte buffer."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = b""
        self.started_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.buffer:
            # The first byte of a request: its arrival time.
            self.started_at = time.time()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self.handle(head.split("\r\n", 1)[0], self.started_at)
            if self.buffer:
                self.started_at = time.time()

    def handle(self, request_line: str, arrived: float) -> None:
        assert self.transport is not None
        method, _, rest = request_line.partition(" ")
        path = rest.rpartition(" ")[0]
        if method == "GET" and path == "/__records":
            body = self.recorder.dump()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return
        if path.startswith(_PREFIX):
            call_id, _, verb = path[len(_PREFIX) :].partition("/")
            self.recorder.records.append((call_id, verb, arrived))
        self.transport.write(_OK)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    server = await loop.create_server(lambda: UpstreamProtocol(recorder), host, port, backlog=2048)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    with contextlib.suppress(Exception):
        await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
