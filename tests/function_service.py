"""A company's function service on loopback, answering as each test decides."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# (status, headers, body, seconds to wait before answering)
Answer = tuple[int, dict[str, str], bytes, float]


@dataclass
class FunctionService:
    """A loopback HTTP service; `answer` decides the answer to each request's JSON body."""

    answer: Callable[[dict[str, Any]], Answer]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    # Serve further requests on a connection, as most services do (tests: one each).
    keep_alive: bool = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._answer_one(reader, writer):
                if not self.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer the connection's next request; False if the client closed it instead."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return False
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((headers, body))
        status, extra, content, delay = self.answer(json.loads(body))
        await asyncio.sleep(delay)
        connection = "keep-alive" if self.keep_alive else "close"
        response_headers = {"content-length": str(len(content)), "connection": connection, **extra}
        writer.write(
            f"HTTP/1.1 {status} X\r\n".encode()
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in response_headers.items())
            + b"\r\n"
            + content
        )
        await writer.drain()
        return True


@contextlib.asynccontextmanager
async def function_services() -> AsyncIterator[Callable[..., Awaitable[FunctionService]]]:
    """Yields `start(answer)`, which serves a FunctionService on a free loopback port."""
    servers: list[asyncio.Server] = []

    async def start(
        answer: Callable[[dict[str, Any]], Answer], *, keep_alive: bool = False
    ) -> FunctionService:
        service = FunctionService(answer, keep_alive=keep_alive)
        server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        service.url = f"http://127.0.0.1:{port}/functions"
        return service

    try:
        yield start
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def json_answer(body: dict[str, Any], delay: float = 0.0) -> Callable[[dict[str, Any]], Answer]:
    content = json.dumps(body).encode()
    return lambda _request: (200, {"content-type": "application/json"}, content, delay)
