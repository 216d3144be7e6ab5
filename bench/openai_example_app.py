"""The peer: the receiver a user would write from OpenAI's FastAPI SIP example.

FastAPI; the `openai` SDK's `webhooks.unwrap` verifies the signature and parses the event,
and `realtime.calls.accept` accepts every incoming call through the SDK's default client.
No rules, no store, no logging; the SDK's own retries and timeouts. It answers
`{"status": "processed"}` (the example answers an empty 200) so the load generator counts
it like the others. A benchmark peer only: `openai` is a development dependency.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI, InvalidWebhookSignatureError


def example_app(upstream: str, secret: str) -> FastAPI:
    client = AsyncOpenAI(api_key="sk-bench", base_url=upstream, webhook_secret=secret)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/webhooks/openai")
    async def webhook(request: Request) -> Response:
        try:
            event = client.webhooks.unwrap(await request.body(), request.headers)
        except InvalidWebhookSignatureError:
            return Response("Invalid signature", status_code=400)
        if event.type == "realtime.call.incoming":
            await client.realtime.calls.accept(
                event.data.call_id,
                type="realtime",
                model="gpt-realtime",
                instructions="You are a friendly receptionist.",
            )
        return JSONResponse({"status": "processed", "call_id": event.data.call_id})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT/v1")
    parser.add_argument("--secret", required=True, help="the webhook secret (whsec_...)")
    args = parser.parse_args()
    # The same uvicorn settings as `sip-router serve` (app/cli.py cmd_serve).
    uvicorn.run(
        example_app(args.upstream, args.secret),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
