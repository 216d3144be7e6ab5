"""The floor: the least an ASGI app on sip-router's server stack can do per webhook.

It reads the body, takes `data.call_id` out of it and forwards the raw body to the fake
upstream's accept endpoint with the service's `httpx.AsyncClient` (app/upstream_transport.py);
no signature check, no rules, no store, no logging. It runs under uvicorn with the settings
`sip-router serve` uses, so the service's latency can be read as a ratio.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import httpx
import uvicorn

from app.upstream_transport import UpstreamTransport, upstream_http_client

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FloorApp:
    def __init__(
        self,
        upstream: str,
        max_connections: int = 200,
        keepalive: int = 50,
        client: str = "httpx",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.client = client
        self.session: Any = None
        self.limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=keepalive
        )
        self.http: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        call_id = json.loads(body)["data"]["call_id"]
        url = f"{self.upstream}/realtime/calls/{call_id}/accept"
        headers = {"Authorization": "Bearer sk-bench", "content-type": "application/json"}
        if self.client in ("httpx", "httpcore", "lean"):
            assert self.http is not None
            response = await self.http.post(url, content=body, headers=headers)
            ok = response.is_success
        elif self.client == "aiohttp":
            async with self.session.post(url, data=body, headers=headers) as reply:
                await reply.read()
                ok = 200 <= reply.status < 300
        else:  # "none": the server stack alone, no upstream request
            ok = True
        answer = json.dumps(
            {"status": "processed" if ok else "failed", "call_id": call_id}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.client == "lean":
                    from bench.lean_transport import LeanTransport

                    self.http = httpx.AsyncClient(
                        transport=LeanTransport(self.limits.max_keepalive_connections or 50),
                        follow_redirects=False,
                    )
                elif self.client == "httpcore":
                    self.http = httpx.AsyncClient(limits=self.limits, follow_redirects=False)
                else:
                    self.http = upstream_http_client(UpstreamTransport(self.limits))
                if self.client == "aiohttp":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=self.limits.max_connections or 200)
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.http is not None:
                    await self.http.aclose()
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT/v1")
    # The service's pool (app/app_factory.py) unless told otherwise, for experiments.
    parser.add_argument("--max-connections", type=int, default=200)
    parser.add_argument("--keepalive", type=int, default=50)
    parser.add_argument(
        "--client",
        choices=("httpx", "httpcore", "lean", "aiohttp", "none"),
        default="httpx",
        help="upstream client: httpx (the service's: over aiohttp), httpcore (httpx's default"
        " transport), lean (httpx over bench/lean_transport.py), aiohttp (aiohttp's own client),"
        " none (sends nothing)",
    )
    args = parser.parse_args()
    # The same uvicorn settings as `sip-router serve` (app/cli.py cmd_serve).
    uvicorn.run(
        FloorApp(args.upstream, args.max_connections, args.keepalive, args.client),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
