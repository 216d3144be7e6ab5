"""An experiment: `httpx.AsyncClient` over a minimal HTTP/1.1 keep-alive transport.

It isolates how much of httpx's per-request cost is its connection pool (httpcore)
rather than the client API: HTTP/1.1 only, content-length bodies only, an idle stack
per origin (no scan of every connection per request), no timeouts or error mapping.
Good enough to measure on loopback; not a production transport.
"""

from __future__ import annotations

import asyncio

import httpx

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_idle: int = 50) -> None:
        self.max_idle = max_idle
        self.idle: dict[tuple[str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        origin = (request.url.host, request.url.port or 80)
        body = await request.aread()
        lines = [f"{request.method} {request.url.raw_path.decode()} HTTP/1.1"]
        lines += [f"{name.decode()}: {value.decode()}" for name, value in request.headers.raw]
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        stack = self.idle.setdefault(origin, [])
        reader, writer = stack.pop() if stack else await asyncio.open_connection(*origin)
        writer.write(payload)
        status_line = await reader.readline()
        status = int(status_line.split(b" ", 2)[1])
        headers: list[tuple[bytes, bytes]] = []
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.rstrip(b"\r\n").partition(b":")
            headers.append((name, value.strip()))
            if name.lower() == b"content-length":
                length = int(value)
        content = await reader.readexactly(length) if length else b""
        if len(stack) < self.max_idle:
            stack.append((reader, writer))
        else:
            writer.close()
        return httpx.Response(status, headers=headers, content=content)

    async def aclose(self) -> None:
        for stack in self.idle.values():
            for _, writer in stack:
                writer.close()
        self.idle.clear()
