"""The calls sip-router stays with, put together: the part of the composition that the
service's process (app/app_factory.py, calls in its own process) and the calls process
(app/calls_process_main.py) share.

It imports neither the web framework nor the rules engine, so a calls process, which
imports only this and what it drives the calls with, stays small.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator

import httpx

from app.calls.active_calls import ActiveCalls
from app.calls.call_attendant import CallAttendant, CallEndLog
from app.calls.call_ownership import CallOwnership, MemoryCallOwnership, RedisCallOwnership
from app.calls.calls_process_link import CallsConfig
from app.calls.function_requests import FunctionRequester
from app.metrics import Metrics
from app.openai_calls import OpenAICallsClient
from app.outbound_requests import outbound_http_client
from app.store.redis_backend import RedisStore
from app.upstream_transport import upstream_http_client
from app.webhooks_first import WebhooksFirst

# How many young collections make one of the middle generation (CPython's default: 10).
YOUNG_COLLECTIONS_PER_MIDDLE = 50


@contextlib.contextmanager
def tuned_collector() -> Iterator[None]:
    """The garbage collector set for a long-running service, restored on the way out."""
    # What start-up built (modules, the ruleset, the clients) lives as long as the
    # service: out of the collector's full walks, which otherwise pause every call.
    gc.collect()
    gc.freeze()
    # A full collection walks every active call's objects (about 130 each): 100-300 ms
    # with 1,000 calls. It follows every 11th middle-generation collection, so those
    # come after 50 young collections rather than 10: with 1,000 calls (bench/
    # active_calls.py) 1 full collection a minute instead of 6, 39% fewer objects
    # walked in all, the largest young walk 21,000 objects instead of 18,000.
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], YOUNG_COLLECTIONS_PER_MIDDLE, thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def calls_process_attendant(
    config: CallsConfig, call_log: CallEndLog
) -> tuple[CallAttendant, Callable[[], Awaitable[None]]]:
    """The calls process's parts (app/calls_process_main.py): the attendant of its calls,
    and what closes its clients once they are handed over."""
    metrics = Metrics()
    http = upstream_http_client(None)
    actions = OpenAICallsClient(
        http,
        base_url=config.openai_base_url,
        api_key=config.openai_api_key,
        deadline_s=config.action_deadline_s,
        on_response=metrics.upstream_answered,
    )
    outbound = outbound_http_client(None)
    store = RedisStore.from_url(config.redis_url) if config.redis_url else None
    attendant = call_attendant(
        config,
        metrics=metrics,
        actions=actions,
        outbound=outbound,
        call_log=call_log,
        redis_store=store,
    )

    async def close() -> None:
        await http.aclose()
        await outbound.aclose()
        if store is not None:
            await store.aclose()

    return attendant, close


def call_attendant(
    config: CallsConfig,
    *,
    metrics: Metrics,
    actions: OpenAICallsClient,
    outbound: httpx.AsyncClient,
    call_log: CallEndLog,
    redis_store: RedisStore | None,
    webhooks: WebhooksFirst | None = None,
) -> CallAttendant:
    """The attendant of the calls stayed with, their leases in Redis when there is one."""
    ownership: CallOwnership = (
        RedisCallOwnership(redis_store.client, prefix=f"{redis_store.prefix}sideband:")
        if redis_store is not None
        else MemoryCallOwnership()
    )
    return CallAttendant(
        active=ActiveCalls(metrics),
        ownership=ownership,
        actions=actions,
        functions=FunctionRequester(outbound, secret=config.outbound_secret),
        call_log=call_log,
        base_url=config.openai_base_url,
        api_key=config.openai_api_key,
        metrics=metrics,
        keep_transcripts=config.keep_transcripts,
        webhooks=webhooks,
    )
